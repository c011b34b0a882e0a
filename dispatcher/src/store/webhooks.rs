//! Webhook deliveries (see the `webhooks` migration): stored by a trigger
//! in the transaction that finishes a job, claimed for a while by a sender,
//! and marked after each attempt.

use super::Tx;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// Takes the `batch.finished` lock (see the webhooks migration) of the
/// batches of `jobs` that tell of it, in batch order, until the
/// transaction ends. A writer that may finish jobs of several batches in
/// one transaction, in more than one statement, calls it first (after
/// locking the jobs), so that the statements' trigger finds every lock
/// held and no two writers wait on each other in a cycle.
pub async fn lock_finishing_batches(tx: &mut Tx<'_>, jobs: &[Uuid]) -> sqlx::Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    sqlx::query(include_str!("sql/lock_finishing_batches.sql"))
        .bind(jobs)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A delivery as a batch's list shows it.
#[derive(Debug, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: i64,
    pub event: String,
    pub job_id: Option<Uuid>,
    pub state: String,
    pub attempts: i32,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub next_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A delivery claimed to be sent: what to post, where, signed with what.
#[derive(Debug, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    pub event: String,
    pub body: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub url: String,
    pub secret: String,
}

/// Claims up to `limit` due deliveries for `lease` (another sender skips
/// them meanwhile), oldest due first; the claim is committed at once.
pub async fn claim(db: &PgPool, limit: i64, lease: Duration) -> sqlx::Result<Vec<Claimed>> {
    sqlx::query_as(include_str!("sql/claim_webhook_deliveries.sql"))
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(db)
        .await
}

/// The receiver acknowledged delivery `id` with `status`.
pub async fn delivered(db: &PgPool, id: i64, status: u16) -> sqlx::Result<()> {
    sqlx::query(include_str!("sql/webhook_delivered.sql"))
        .bind(id)
        .bind(i32::from(status))
        .execute(db)
        .await?;
    Ok(())
}

/// An attempt at `id` failed (`status`: the receiver's answer, if any):
/// it is tried again after `wait`, unless that is past `retry_for` from
/// its creation, when it is given up. Answers whether it was given up.
pub async fn attempt_failed(
    db: &PgPool,
    id: i64,
    status: Option<u16>,
    error: &str,
    wait: Duration,
    retry_for: Duration,
) -> sqlx::Result<bool> {
    let state: Option<String> = sqlx::query_scalar(include_str!("sql/webhook_attempt_failed.sql"))
        .bind(id)
        .bind(status.map(i32::from))
        .bind(error)
        .bind(wait.as_secs_f64())
        .bind(retry_for.as_secs_f64())
        .fetch_optional(db)
        .await?;
    Ok(state.as_deref() == Some("failed"))
}

/// Claimed deliveries not tried (their receiver just failed): due again
/// after `wait`, their attempts unchanged.
pub async fn defer(db: &PgPool, ids: &[i64], wait: Duration) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(include_str!("sql/defer_webhook_deliveries.sql"))
        .bind(ids)
        .bind(wait.as_secs_f64())
        .execute(db)
        .await?;
    Ok(())
}

/// Up to `limit` deliveries of `batch` after `after` (an id), oldest first.
pub async fn list(
    db: &PgPool,
    batch: Uuid,
    after: i64,
    limit: i64,
) -> sqlx::Result<Vec<DeliveryRow>> {
    sqlx::query_as(include_str!("sql/list_webhook_deliveries.sql"))
        .bind(batch)
        .bind(after)
        .bind(limit)
        .fetch_all(db)
        .await
}
