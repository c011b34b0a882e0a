//! Tenants' quotas and what they use of them.

use super::Tx;
use sqlx::PgPool;
use uuid::Uuid;

/// A tenant's own quotas; `None` takes the dispatcher's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Quotas {
    pub max_active_jobs: Option<i64>,
    pub submits_per_minute: Option<i32>,
}

/// What a tenant uses of its quotas.
#[derive(Debug, sqlx::FromRow)]
pub struct Usage {
    /// Queued and running jobs.
    pub active: i64,
    /// Batches submitted since the bound.
    pub recent: i64,
    /// The oldest of those.
    pub oldest_recent: Option<Uuid>,
}

/// Locks the tenant's quotas until the transaction ends (concurrent submits
/// of one tenant check in turn) and reads them; `None` for no such tenant.
pub async fn lock_quotas(tx: &mut Tx<'_>, tenant: &str) -> sqlx::Result<Option<Quotas>> {
    sqlx::query(include_str!("sql/lock_tenant.sql"))
        .bind(tenant)
        .execute(&mut **tx)
        .await?;
    sqlx::query_as(include_str!("sql/tenant_quotas.sql"))
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await
}

/// The tenant's active jobs (from the counts the triggers keep) and its
/// batches with an id from `since` (a UUIDv7 bound) on.
pub async fn usage(tx: &mut Tx<'_>, tenant: &str, since: Uuid) -> sqlx::Result<Usage> {
    sqlx::query_as(include_str!("sql/tenant_usage.sql"))
        .bind(tenant)
        .bind(since)
        .fetch_one(&mut **tx)
        .await
}

/// Sets a tenant's quotas; `None` when there is no such tenant.
pub async fn set_quotas(db: &PgPool, tenant: &str, q: Quotas) -> sqlx::Result<Option<Quotas>> {
    sqlx::query_as(include_str!("sql/set_tenant_quotas.sql"))
        .bind(tenant)
        .bind(q.max_active_jobs)
        .bind(q.submits_per_minute)
        .fetch_optional(db)
        .await
}

/// A tenant's own quotas; `None` when there is no such tenant.
pub async fn quotas(db: &PgPool, tenant: &str) -> sqlx::Result<Option<Quotas>> {
    sqlx::query_as(include_str!("sql/tenant_quotas.sql"))
        .bind(tenant)
        .fetch_optional(db)
        .await
}
