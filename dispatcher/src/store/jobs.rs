//! Jobs: reads for the API and the guarded transitions that worker events,
//! the reaper, the dead-letter consumer and cancellation apply.
//!
//! Every transition names the attempt it is about and the states it may
//! leave, so a stale, duplicate or out-of-order event matches no row and
//! changes nothing; terminal states match no transition at all.

use super::Tx;
use crate::retry::{Decision, RetryPolicy};
use chrono::{DateTime, Utc};
use kiln_protocol::JobState;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, sqlx::FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub batch_id: Uuid,
    pub seq: i32,
    pub engine: kiln_protocol::Engine,
    pub prompt: String,
    /// The resolved parameters (every field of the job's engine set).
    pub params: sqlx::types::Json<kiln_protocol::ParamsDto>,
    pub state: JobState,
    pub attempt: i32,
    pub max_attempts: i32,
    pub progress_step: Option<i32>,
    pub progress_total: Option<i32>,
    pub error: Option<String>,
    pub worker: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct ResultRow {
    pub job_id: Uuid,
    pub rank: i32,
    pub score: Option<f32>,
    pub seed: i64,
    pub width: i32,
    pub height: i32,
    pub key: String,
}

pub async fn get(tx: &mut Tx<'_>, tenant: &str, id: Uuid) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as(include_str!("sql/get_job.sql"))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await
}

/// Jobs of a batch in batch order after position `after`.
pub async fn list(
    tx: &mut Tx<'_>,
    batch: Uuid,
    state: Option<JobState>,
    after: i32,
    limit: i64,
) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(include_str!("sql/list_jobs.sql"))
        .bind(batch)
        .bind(state)
        .bind(after)
        .bind(limit)
        .fetch_all(&mut **tx)
        .await
}

/// The jobs `ids` of `tenant`, in no order.
pub async fn by_ids(tx: &mut Tx<'_>, tenant: &str, ids: &[Uuid]) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(include_str!("sql/jobs_by_ids.sql"))
        .bind(ids)
        .bind(tenant)
        .fetch_all(&mut **tx)
        .await
}

/// `(job, step, total)` of the running jobs of `batch` that reported
/// progress.
pub async fn running_progress(
    db: &sqlx::PgPool,
    batch: Uuid,
) -> sqlx::Result<Vec<(Uuid, i32, i32)>> {
    sqlx::query_as(include_str!("sql/running_progress.sql"))
        .bind(batch)
        .fetch_all(db)
        .await
}

pub async fn results(tx: &mut Tx<'_>, jobs: &[Uuid]) -> sqlx::Result<Vec<ResultRow>> {
    sqlx::query_as(include_str!("sql/job_results.sql"))
        .bind(jobs)
        .fetch_all(&mut **tx)
        .await
}

/// Cancels one unfinished job of a tenant. `None`: no such job;
/// `Some(true)`: cancelled now; `Some(false)`: it had already finished.
pub async fn cancel(tx: &mut Tx<'_>, tenant: &str, id: Uuid) -> sqlx::Result<Option<bool>> {
    // Outbox rows first, then the job: the relay locks in the same order
    // (its outbox rows, then their jobs), so the two never deadlock.
    sqlx::query(include_str!("sql/delete_job_outbox.sql"))
        .bind(id)
        .bind(tenant)
        .execute(&mut **tx)
        .await?;
    let done = sqlx::query(include_str!("sql/cancel_job.sql"))
        .bind(id)
        .bind(tenant)
        .execute(&mut **tx)
        .await?;
    if done.rows_affected() == 1 {
        return Ok(Some(true));
    }
    let exists: bool = sqlx::query_scalar(include_str!("sql/job_exists.sql"))
        .bind(id)
        .bind(tenant)
        .fetch_one(&mut **tx)
        .await?;
    Ok(exists.then_some(false))
}

/// Ends the attempt in a terminal state (`failed` or `cancelled`).
pub async fn finish(
    tx: &mut Tx<'_>,
    id: Uuid,
    attempt: i32,
    state: JobState,
    reason: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query(include_str!("sql/finish_job.sql"))
        .bind(id)
        .bind(attempt)
        .bind(state)
        .bind(reason)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// What [`retry_or_fail`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryOutcome {
    Retried {
        next: u32,
        delay: Duration,
    },
    Failed,
    /// The same attempt is published again (with fresh URLs).
    Reissued,
    /// The attempt was stale or the job already finished.
    Unchanged,
}

/// A retryable failure of `attempt`: back to queued with `attempt + 1`
/// after the policy's backoff (a new outbox row with `not_before`), or
/// failed when no attempts are left.
pub async fn retry_or_fail(
    tx: &mut Tx<'_>,
    id: Uuid,
    attempt: i32,
    reason: &str,
    policy: impl Fn(u32) -> RetryPolicy,
) -> sqlx::Result<RetryOutcome> {
    let row: Option<(i32, i32, JobState)> =
        sqlx::query_as(include_str!("sql/lock_job_attempt.sql"))
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((current, max_attempts, state)) = row else {
        return Ok(RetryOutcome::Unchanged);
    };
    if current != attempt || state.is_terminal() {
        return Ok(RetryOutcome::Unchanged);
    }
    match policy(max_attempts.max(1) as u32).decide_random(attempt.max(1) as u32) {
        Decision::GiveUp => {
            let reason =
                format!("{reason} (attempt {attempt} of {max_attempts}; no attempts left)");
            finish(tx, id, attempt, JobState::Failed, &reason).await?;
            Ok(RetryOutcome::Failed)
        }
        Decision::Retry { next, delay } => {
            sqlx::query(include_str!("sql/requeue_job.sql"))
                .bind(id)
                .bind(next as i32)
                .bind(format!("attempt {attempt}: {reason}"))
                .execute(&mut **tx)
                .await?;
            sqlx::query(include_str!("sql/insert_retry_outbox.sql"))
                .bind(id)
                .bind(delay.as_secs_f64())
                .execute(&mut **tx)
                .await?;
            Ok(RetryOutcome::Retried { next, delay })
        }
    }
}

/// The bucket refused the presigned URLs of a publish of `attempt` (they
/// expired, or were signed with a key rotated since), as an event that
/// presented `token_hash` (the publish's; `None` for a tokenless one)
/// reports: the same attempt goes back to queued and is published again
/// with a fresh token and fresh URLs, spending none of the job's attempts,
/// up to `limit` times. The refused publish's token is revoked, so that a
/// copy of its message (a redelivery, a rescuer's republish) can no longer
/// report anything, nor send the attempt back again. Past `limit`, it is a
/// retryable failure ([`retry_or_fail`]): URLs that expire before every
/// render can finish (a TTL shorter than the engine's time limit) end the
/// job after its attempts, with a reason.
pub async fn reissue_or_retry(
    tx: &mut Tx<'_>,
    id: Uuid,
    attempt: i32,
    token_hash: Option<&[u8]>,
    reason: &str,
    limit: u32,
    policy: impl Fn(u32) -> RetryPolicy,
) -> sqlx::Result<RetryOutcome> {
    let reissued = sqlx::query(include_str!("sql/reissue_job.sql"))
        .bind(id)
        .bind(attempt)
        .bind(format!("attempt {attempt}: {reason}"))
        .bind(limit as i32)
        .execute(&mut **tx)
        .await?;
    if reissued.rows_affected() == 1 {
        if let Some(hash) = token_hash {
            sqlx::query(include_str!("sql/revoke_attempt_token.sql"))
                .bind(id)
                .bind(attempt)
                .bind(hash)
                .execute(&mut **tx)
                .await?;
        }
        sqlx::query(include_str!("sql/insert_retry_outbox.sql"))
            .bind(id)
            .bind(0.0f64)
            .execute(&mut **tx)
            .await?;
        return Ok(RetryOutcome::Reissued);
    }
    let reason = format!("{reason} (published again with fresh URLs {limit} times)");
    retry_or_fail(tx, id, attempt, &reason, policy).await
}

/// Running jobs whose lease lapsed (locked; other reapers skip them).
pub async fn lapsed(tx: &mut Tx<'_>, limit: i64) -> sqlx::Result<Vec<(Uuid, i32, Option<String>)>> {
    sqlx::query_as(include_str!("sql/lapsed_jobs.sql"))
        .bind(limit)
        .fetch_all(&mut **tx)
        .await
}

/// The state and attempt of a job, for deciding what an ignored event means.
pub async fn state_of(tx: &mut Tx<'_>, id: Uuid) -> sqlx::Result<Option<(JobState, i32, Uuid)>> {
    sqlx::query_as(include_str!("sql/job_state.sql"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
}

/// `(engine, state, count)` over every job, for `/metrics`, from the
/// counts the triggers keep (no scan of the jobs).
pub async fn counts(
    db: &sqlx::PgPool,
) -> sqlx::Result<Vec<(kiln_protocol::Engine, JobState, i64)>> {
    sqlx::query_as(include_str!("sql/job_counts.sql"))
        .fetch_all(db)
        .await
}

/// Folds the count deltas the triggers appended into one row per key (jobs
/// per engine and state, the outbox, jobs in the broker, batches, tenants'
/// active jobs), so what `/metrics`, the relay, batch views and quotas sum
/// stays a few rows.
pub async fn fold_counts(db: &sqlx::PgPool) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    for fold in [
        include_str!("sql/fold_job_counts.sql"),
        include_str!("sql/fold_outbox_counts.sql"),
        include_str!("sql/fold_broker_counts.sql"),
        include_str!("sql/fold_batch_counts.sql"),
        include_str!("sql/fold_tenant_active.sql"),
    ] {
        sqlx::query(fold).execute(&mut *tx).await?;
    }
    tx.commit().await
}
