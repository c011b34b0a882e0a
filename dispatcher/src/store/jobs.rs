//! Jobs: reads for the API and the guarded transitions that worker events,
//! the reaper, the dead-letter consumer and cancellation apply.
//!
//! Every transition names the attempt it is about and the states it may
//! leave, so a stale, duplicate or out-of-order event matches no row and
//! changes nothing; terminal states match no transition at all.

use super::Tx;
use crate::retry::{Decision, RetryPolicy};
use chrono::{DateTime, Utc};
use kiln_protocol::ResultImage;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, sqlx::FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub batch_id: Uuid,
    pub seq: i32,
    pub engine: String,
    pub prompt: String,
    pub params: serde_json::Value,
    pub state: String,
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

/// A static `SELECT` of [`JobRow`]'s columns followed by `$tail`.
macro_rules! select_jobs {
    ($tail:literal) => {
        concat!(
            "SELECT id, batch_id, seq, engine, prompt, params, state, attempt, max_attempts, ",
            "progress_step, progress_total, error, worker, created_at, started_at, finished_at ",
            "FROM jobs ",
            $tail
        )
    };
}

pub async fn get(tx: &mut Tx<'_>, tenant: &str, id: Uuid) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as(select_jobs!("WHERE id = $1 AND tenant = $2"))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await
}

/// Jobs of a batch in batch order after position `after`.
pub async fn list(
    tx: &mut Tx<'_>,
    batch: Uuid,
    state: Option<&str>,
    after: i32,
    limit: i64,
) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as(select_jobs!(
        "WHERE batch_id = $1 AND ($2::text IS NULL OR state = $2) AND seq > $3 ORDER BY seq LIMIT $4"
    ))
    .bind(batch)
    .bind(state)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
}

pub async fn results(tx: &mut Tx<'_>, jobs: &[Uuid]) -> sqlx::Result<Vec<ResultRow>> {
    sqlx::query_as(
        "SELECT job_id, rank, score, seed, width, height, key FROM results \
         WHERE job_id = ANY($1) ORDER BY job_id, rank",
    )
    .bind(jobs)
    .fetch_all(&mut **tx)
    .await
}

/// Cancels one unfinished job of a tenant. `None`: no such job;
/// `Some(true)`: cancelled now; `Some(false)`: it had already finished.
pub async fn cancel(tx: &mut Tx<'_>, tenant: &str, id: Uuid) -> sqlx::Result<Option<bool>> {
    // Outbox rows first, then the job: the relay locks in the same order
    // (its outbox rows, then their jobs), so the two never deadlock.
    sqlx::query(
        "DELETE FROM outbox o USING jobs j \
         WHERE o.job_id = j.id AND j.id = $1 AND j.tenant = $2 AND j.state IN ('queued', 'running')",
    )
    .bind(id)
    .bind(tenant)
    .execute(&mut **tx)
    .await?;
    let done = sqlx::query(
        "UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now(), \
         lease_expires_at = NULL, error = 'cancelled by request' \
         WHERE id = $1 AND tenant = $2 AND state IN ('queued', 'running')",
    )
    .bind(id)
    .bind(tenant)
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 1 {
        return Ok(Some(true));
    }
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND tenant = $2)")
            .bind(id)
            .bind(tenant)
            .fetch_one(&mut **tx)
            .await?;
    Ok(exists.then_some(false))
}

/// `started`, `progress` and `heartbeat` all prove the attempt is running:
/// each moves a queued job of that attempt to running and extends its
/// lease (`started` only from queued, so a repeated one changes nothing).
/// Progress never moves backwards.
pub async fn touch(tx: &mut Tx<'_>, t: &Touch<'_>) -> sqlx::Result<bool> {
    let (step, total) = t.progress.unzip();
    let done = sqlx::query(include_str!("sql/touch_job.sql"))
        .bind(t.id)
        .bind(t.attempt)
        .bind(t.worker)
        .bind(t.at)
        .bind(t.lease.as_secs_f64())
        .bind(step)
        .bind(total)
        .bind(t.started)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A sign of life from the worker running an attempt.
pub struct Touch<'a> {
    pub id: Uuid,
    pub attempt: i32,
    pub worker: &'a str,
    pub at: DateTime<Utc>,
    pub lease: Duration,
    /// `(step, total)` of a progress event.
    pub progress: Option<(i32, i32)>,
    /// A `started` event.
    pub started: bool,
}

/// The first `succeeded` of the current attempt wins.
pub async fn succeed(
    tx: &mut Tx<'_>,
    id: Uuid,
    attempt: i32,
    worker: &str,
    results: &[ResultImage],
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE jobs SET state = 'succeeded', worker = $3, finished_at = now(), updated_at = now(), \
         started_at = coalesce(started_at, now()), lease_expires_at = NULL, error = NULL, \
         progress_step = coalesce(progress_total, progress_step) \
         WHERE id = $1 AND attempt = $2 AND state IN ('queued', 'running')",
    )
    .bind(id)
    .bind(attempt)
    .bind(worker)
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    let ranks: Vec<i32> = results.iter().map(|r| r.rank as i32).collect();
    let scores: Vec<Option<f32>> = results.iter().map(|r| r.score).collect();
    let seeds: Vec<i64> = results.iter().map(|r| r.seed as i64).collect();
    let widths: Vec<i32> = results.iter().map(|r| r.width as i32).collect();
    let heights: Vec<i32> = results.iter().map(|r| r.height as i32).collect();
    let keys: Vec<&str> = results.iter().map(|r| r.key.as_str()).collect();
    sqlx::query(
        "INSERT INTO results (job_id, rank, score, seed, width, height, key) \
         SELECT $1, u.* FROM UNNEST($2::int[], $3::real[], $4::bigint[], $5::int[], $6::int[], $7::text[]) \
             AS u (rank, score, seed, width, height, key) \
         ON CONFLICT (job_id, rank) DO UPDATE SET score = EXCLUDED.score, seed = EXCLUDED.seed, \
             width = EXCLUDED.width, height = EXCLUDED.height, key = EXCLUDED.key",
    )
    .bind(id)
    .bind(&ranks)
    .bind(&scores)
    .bind(&seeds)
    .bind(&widths)
    .bind(&heights)
    .bind(&keys)
    .execute(&mut **tx)
    .await?;
    Ok(true)
}

/// Ends the attempt in a terminal state (`failed` or `cancelled`).
pub async fn finish(
    tx: &mut Tx<'_>,
    id: Uuid,
    attempt: i32,
    state: &str,
    reason: &str,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE jobs SET state = $3, error = $4, finished_at = now(), updated_at = now(), \
         lease_expires_at = NULL \
         WHERE id = $1 AND attempt = $2 AND state IN ('queued', 'running')",
    )
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
    let row: Option<(i32, i32, String)> =
        sqlx::query_as("SELECT attempt, max_attempts, state FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((current, max_attempts, state)) = row else {
        return Ok(RetryOutcome::Unchanged);
    };
    if current != attempt || !(state == "queued" || state == "running") {
        return Ok(RetryOutcome::Unchanged);
    }
    match policy(max_attempts.max(1) as u32).decide_random(attempt.max(1) as u32) {
        Decision::GiveUp => {
            let reason =
                format!("{reason} (attempt {attempt} of {max_attempts}; no attempts left)");
            finish(tx, id, attempt, "failed", &reason).await?;
            Ok(RetryOutcome::Failed)
        }
        Decision::Retry { next, delay } => {
            sqlx::query(
                "UPDATE jobs SET state = 'queued', attempt = $2, error = $3, worker = NULL, \
                 lease_expires_at = NULL, progress_step = NULL, progress_total = NULL, \
                 updated_at = now() WHERE id = $1",
            )
            .bind(id)
            .bind(next as i32)
            .bind(format!("attempt {attempt}: {reason}"))
            .execute(&mut **tx)
            .await?;
            sqlx::query(
                "INSERT INTO outbox (job_id, attempt, engine, priority, not_before) \
                 SELECT id, attempt, engine, priority, now() + make_interval(secs => $2) \
                 FROM jobs WHERE id = $1",
            )
            .bind(id)
            .bind(delay.as_secs_f64())
            .execute(&mut **tx)
            .await?;
            Ok(RetryOutcome::Retried { next, delay })
        }
    }
}

/// Running jobs whose lease lapsed (locked; other reapers skip them).
pub async fn lapsed(tx: &mut Tx<'_>, limit: i64) -> sqlx::Result<Vec<(Uuid, i32, Option<String>)>> {
    sqlx::query_as(
        "SELECT id, attempt, worker FROM jobs \
         WHERE state = 'running' AND lease_expires_at < now() \
         ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
}

/// The state and attempt of a job, for deciding what an ignored event means.
pub async fn state_of(tx: &mut Tx<'_>, id: Uuid) -> sqlx::Result<Option<(String, i32, Uuid)>> {
    sqlx::query_as("SELECT state, attempt, batch_id FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
}

/// `(engine, state, count)` over every job, for `/metrics`.
pub async fn counts(db: &sqlx::PgPool) -> sqlx::Result<Vec<(String, String, i64)>> {
    sqlx::query_as("SELECT engine, state, count(*) FROM jobs GROUP BY engine, state ORDER BY 1, 2")
        .fetch_all(db)
        .await
}
