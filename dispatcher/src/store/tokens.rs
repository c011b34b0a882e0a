//! Tenants and their API tokens (stored only as SHA-256 hashes).

use super::Tx;
use sqlx::PgPool;
use uuid::Uuid;

/// Creates the tenant unless it exists.
pub async fn insert_tenant(tx: &mut Tx<'_>, tenant: &str) -> sqlx::Result<()> {
    sqlx::query(include_str!("sql/insert_tenant.sql"))
        .bind(tenant)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn insert_token(
    tx: &mut Tx<'_>,
    id: Uuid,
    tenant: &str,
    token_hash: &[u8],
    operator: bool,
) -> sqlx::Result<()> {
    sqlx::query(include_str!("sql/insert_token.sql"))
        .bind(id)
        .bind(tenant)
        .bind(token_hash)
        .bind(operator)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Revokes the active token with this hash; answers whether there was one.
pub async fn revoke(db: &PgPool, token_hash: &[u8]) -> sqlx::Result<bool> {
    let done = sqlx::query(include_str!("sql/revoke_token.sql"))
        .bind(token_hash)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Revokes every active token of a tenant; answers how many there were.
pub async fn revoke_tenant(db: &PgPool, tenant: &str) -> sqlx::Result<u64> {
    let done = sqlx::query(include_str!("sql/revoke_tenant_tokens.sql"))
        .bind(tenant)
        .execute(db)
        .await?;
    Ok(done.rows_affected())
}

/// The tenant of an active token, and whether it is an operator's.
pub async fn tenant_of(db: &PgPool, token_hash: &[u8]) -> sqlx::Result<Option<(String, bool)>> {
    sqlx::query_as(include_str!("sql/token_tenant.sql"))
        .bind(token_hash)
        .fetch_optional(db)
        .await
}
