//! SQL, one file per table family. Functions take the caller's transaction
//! (or connection), so a caller can make several writes atomic — the batch,
//! its jobs and their outbox rows, or a retry and its outbox row.
//!
//! Every statement is a named file under `sql/`, loaded with
//! `include_str!`; no SQL is assembled at run time, and no module outside
//! this one holds SQL.

pub mod batches;
pub mod events;
pub mod feed;
pub mod jobs;
pub mod outbox;
pub mod retention;
pub mod tenants;
pub mod tokens;
pub mod uploads;
pub mod webhooks;
pub mod workers;

pub type Tx<'a> = sqlx::Transaction<'a, sqlx::Postgres>;

/// Whether PostgreSQL answers a trivial query (for `/readyz`).
pub async fn ping(db: &sqlx::PgPool) -> bool {
    sqlx::query_scalar::<_, i32>(include_str!("sql/ping.sql"))
        .fetch_one(db)
        .await
        .is_ok()
}
