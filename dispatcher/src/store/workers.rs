//! The worker registry: each worker's latest report.

use chrono::{DateTime, Utc};
use kiln_protocol::WorkerReport;
use sqlx::PgPool;
use std::time::Duration;

/// A worker as the registry holds it.
#[derive(Debug, sqlx::FromRow)]
pub struct WorkerRow {
    pub id: String,
    pub host: String,
    pub version: String,
    pub engines: Vec<String>,
    pub devices: Vec<String>,
    pub slots: i32,
    pub capacity: i32,
    pub jobs_in_hand: i32,
    /// `ready`, `draining` or `stopped`, as the worker last said.
    pub phase: String,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Not heard for three of its report intervals (lost, unless it said
    /// it stopped).
    pub silent: bool,
}

/// Keeps `reports` (one per worker at most), unless the registry holds a
/// later report of the same process, in one statement; deletes workers not
/// heard for `forget`.
pub async fn apply(db: &PgPool, reports: &[WorkerReport], forget: Duration) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query(include_str!("sql/upsert_workers.sql"))
        .bind(sqlx::types::Json(reports))
        .execute(&mut *tx)
        .await?;
    sqlx::query(include_str!("sql/forget_workers.sql"))
        .bind(forget.as_secs_f64())
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Every worker heard from within `forget`, by id.
pub async fn list(db: &PgPool, forget: Duration) -> sqlx::Result<Vec<WorkerRow>> {
    sqlx::query_as(include_str!("sql/list_workers.sql"))
        .bind(None::<String>)
        .bind(forget.as_secs_f64())
        .fetch_all(db)
        .await
}

/// One worker, if it was heard from within `forget`.
pub async fn get(db: &PgPool, id: &str, forget: Duration) -> sqlx::Result<Option<WorkerRow>> {
    sqlx::query_as(include_str!("sql/list_workers.sql"))
        .bind(id)
        .bind(forget.as_secs_f64())
        .fetch_optional(db)
        .await
}
