//! Tenants' own quotas, for `kiln-dispatcher tenant` (the API enforces
//! them in `api::batches::quota`).

pub use crate::store::tenants::Quotas;
use sqlx::PgPool;

/// A tenant's own quotas; `None` for no such tenant.
pub async fn get(db: &PgPool, tenant: &str) -> anyhow::Result<Option<Quotas>> {
    Ok(crate::store::tenants::quotas(db, tenant).await?)
}

/// Sets a tenant's own quotas (`None` fields take the default); answers
/// them as stored, or `None` for no such tenant.
pub async fn set(db: &PgPool, tenant: &str, q: Quotas) -> anyhow::Result<Option<Quotas>> {
    Ok(crate::store::tenants::set_quotas(db, tenant, q).await?)
}
