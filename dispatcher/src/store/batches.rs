//! Batches and the bulk insert of their jobs.

use super::Tx;
use chrono::{DateTime, Utc};
use uuid::Uuid;

pub struct NewBatch<'a> {
    pub id: Uuid,
    pub tenant: &'a str,
    pub name: Option<&'a str>,
    pub engine: &'a str,
    pub priority: i16,
    pub metadata: serde_json::Value,
    pub retry_of: Option<Uuid>,
    pub webhook: Option<&'a NewWebhook>,
    pub idempotency_key: Option<&'a str>,
    pub request_hash: &'a [u8],
    pub max_attempts: i32,
}

/// A batch's webhook: where deliveries go, the key that signs them, and
/// the events (`job.finished`, `batch.finished`) they are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWebhook {
    pub url: String,
    pub secret: String,
    pub events: Vec<String>,
}

/// Jobs of one batch, column by column, in batch order.
#[derive(Default)]
pub struct NewJobs {
    pub ids: Vec<Uuid>,
    pub prompts: Vec<String>,
    /// Resolved parameters as JSON text.
    pub params: Vec<String>,
}

/// Rows bound per statement; keeps each statement's arrays a few MB.
const CHUNK: usize = 20_000;

/// Inserts the batch, its jobs and one outbox row per job. Returns false
/// when the tenant already has a batch with this idempotency key.
pub async fn insert(tx: &mut Tx<'_>, b: &NewBatch<'_>, jobs: &NewJobs) -> sqlx::Result<bool> {
    let inserted = sqlx::query(include_str!("sql/insert_batch.sql"))
        .bind(b.id)
        .bind(b.tenant)
        .bind(b.name)
        .bind(b.engine)
        .bind(b.priority)
        .bind(&b.metadata)
        .bind(b.retry_of)
        .bind(jobs.ids.len() as i32)
        .bind(b.idempotency_key)
        .bind(b.request_hash)
        .bind(b.webhook.map(|w| &w.url))
        .bind(b.webhook.map(|w| &w.secret))
        .bind(b.webhook.map(|w| &w.events))
        .execute(&mut **tx)
        .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    let mut offset = 0usize;
    while offset < jobs.ids.len() {
        let end = (offset + CHUNK).min(jobs.ids.len());
        sqlx::query(include_str!("sql/insert_jobs.sql"))
            .bind(b.id)
            .bind(b.tenant)
            .bind(b.engine)
            .bind(b.priority)
            .bind(b.max_attempts)
            .bind(offset as i32)
            .bind(&jobs.ids[offset..end])
            .bind(&jobs.prompts[offset..end])
            .bind(&jobs.params[offset..end])
            .execute(&mut **tx)
            .await?;
        offset = end;
    }
    sqlx::query(include_str!("sql/insert_batch_outbox.sql"))
        .bind(b.id)
        .execute(&mut **tx)
        .await?;
    Ok(true)
}

/// The batch a tenant stored under an idempotency key, with its request hash.
pub async fn by_idempotency_key(
    tx: &mut Tx<'_>,
    tenant: &str,
    key: &str,
) -> sqlx::Result<Option<(Uuid, Vec<u8>)>> {
    sqlx::query_as(include_str!("sql/batch_by_idempotency_key.sql"))
        .bind(tenant)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await
}

/// Whether the batch exists (without holding it: a submit that refers to it
/// uses [`hold`]).
pub async fn exists(tx: &mut Tx<'_>, tenant: &str, id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar(include_str!("sql/batch_exists.sql"))
        .bind(id)
        .bind(tenant)
        .fetch_one(&mut **tx)
        .await
}

/// Whether the batch exists, holding it (against the pruner) until the
/// transaction ends: for a submit that refers to it.
pub async fn hold(tx: &mut Tx<'_>, tenant: &str, id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar(include_str!("sql/hold_batch.sql"))
        .bind(id)
        .bind(tenant)
        .fetch_one(&mut **tx)
        .await
}

/// A batch with its job counts.
#[derive(Debug, sqlx::FromRow)]
pub struct BatchRow {
    pub id: Uuid,
    pub name: Option<String>,
    pub engine: kiln_protocol::Engine,
    pub priority: i16,
    pub metadata: sqlx::types::Json<std::collections::BTreeMap<String, String>>,
    pub retry_of: Option<Uuid>,
    pub total: i32,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub queued: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub last_finished: Option<DateTime<Utc>>,
    pub webhook_url: Option<String>,
    pub webhook_events: Option<Vec<String>>,
}

pub async fn get(tx: &mut Tx<'_>, tenant: &str, id: Uuid) -> sqlx::Result<Option<BatchRow>> {
    sqlx::query_as(include_str!("sql/get_batch.sql"))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await
}

/// Newest first; `before` is the last id of the previous page.
pub async fn list(
    tx: &mut Tx<'_>,
    tenant: &str,
    before: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<BatchRow>> {
    sqlx::query_as(include_str!("sql/list_batches.sql"))
        .bind(tenant)
        .bind(before)
        .bind(limit)
        .fetch_all(&mut **tx)
        .await
}

/// Cancels every unfinished job of a batch; returns the cancelled ids and
/// the number of jobs that had already finished.
pub async fn cancel(tx: &mut Tx<'_>, id: Uuid) -> sqlx::Result<(Vec<Uuid>, i64)> {
    sqlx::query(include_str!("sql/mark_batch_cancelled.sql"))
        .bind(id)
        .execute(&mut **tx)
        .await?;
    // Outbox rows first, then the jobs: the relay locks in the same order
    // (its outbox rows, then their jobs), so the two never deadlock.
    sqlx::query(include_str!("sql/delete_batch_outbox.sql"))
        .bind(id)
        .execute(&mut **tx)
        .await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(include_str!("sql/cancel_batch_jobs.sql"))
        .bind(id)
        .fetch_all(&mut **tx)
        .await?;
    let terminal: i64 = sqlx::query_scalar(include_str!("sql/count_batch_finished.sql"))
        .bind(id)
        .fetch_one(&mut **tx)
        .await?;
    let finished = terminal - ids.len() as i64;
    Ok((ids, finished))
}
