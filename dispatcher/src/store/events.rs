//! Worker events applied in sets: each statement takes every event of one
//! kind at once (at most one per job), with the same guards a single event
//! has, so a stale attempt, a duplicate or an event out of order matches no
//! row and changes nothing.

use super::Tx;
use chrono::{DateTime, Utc};
use kiln_protocol::{JobState, ResultImage};
use std::time::Duration;
use uuid::Uuid;

/// Locks `ids` in id order until the transaction ends.
pub async fn lock_jobs(tx: &mut Tx<'_>, ids: &[Uuid]) -> sqlx::Result<()> {
    sqlx::query(include_str!("sql/lock_jobs.sql"))
        .bind(ids)
        .fetch_all(&mut **tx)
        .await?;
    Ok(())
}

/// A sign of life from the worker running an attempt: `started`,
/// `progress` or `heartbeat`.
pub struct Touch<'a> {
    pub id: Uuid,
    pub attempt: i32,
    pub worker: &'a str,
    pub at: DateTime<Utc>,
    /// `(step, total)` of a progress event.
    pub progress: Option<(i32, i32)>,
    /// A `started` event.
    pub started: bool,
}

/// Applies `touches` (at most one per job), each extending the job's
/// lease by `lease`; answers `(job, batch)` of the jobs it changed.
pub async fn touch(
    tx: &mut Tx<'_>,
    touches: &[Touch<'_>],
    lease: Duration,
) -> sqlx::Result<Vec<(Uuid, Uuid)>> {
    if touches.is_empty() {
        return Ok(Vec::new());
    }
    let column = |f: fn(&Touch) -> Option<i32>| touches.iter().map(f).collect::<Vec<_>>();
    sqlx::query_as(include_str!("sql/touch_jobs.sql"))
        .bind(touches.iter().map(|t| t.id).collect::<Vec<_>>())
        .bind(touches.iter().map(|t| t.attempt).collect::<Vec<_>>())
        .bind(touches.iter().map(|t| t.worker).collect::<Vec<_>>())
        .bind(touches.iter().map(|t| t.at).collect::<Vec<_>>())
        .bind(column(|t| t.progress.map(|p| p.0)))
        .bind(column(|t| t.progress.map(|p| p.1)))
        .bind(touches.iter().map(|t| t.started).collect::<Vec<_>>())
        .bind(lease.as_secs_f64())
        .fetch_all(&mut **tx)
        .await
}

/// A `succeeded` event.
pub struct Success<'a> {
    pub id: Uuid,
    pub attempt: i32,
    pub worker: &'a str,
    pub results: &'a [ResultImage],
}

/// What [`succeed`] did to one job.
#[derive(Debug, sqlx::FromRow)]
pub struct Succeeded {
    pub id: Uuid,
    pub batch_id: Uuid,
    /// Set when the job failed instead: its results named a key outside
    /// the job's prefix.
    pub error: Option<String>,
}

/// Applies `successes` (at most one per job): the first `succeeded` of
/// the current attempt wins and its results are kept, unless they name an
/// object outside the job's own prefix, which fails the job.
pub async fn succeed(tx: &mut Tx<'_>, successes: &[Success<'_>]) -> sqlx::Result<Vec<Succeeded>> {
    if successes.is_empty() {
        return Ok(Vec::new());
    }
    let all: Vec<(Uuid, &ResultImage)> = successes
        .iter()
        .flat_map(|s| s.results.iter().map(move |r| (s.id, r)))
        .collect();
    sqlx::query_as(include_str!("sql/succeed_jobs.sql"))
        .bind(successes.iter().map(|s| s.id).collect::<Vec<_>>())
        .bind(successes.iter().map(|s| s.attempt).collect::<Vec<_>>())
        .bind(successes.iter().map(|s| s.worker).collect::<Vec<_>>())
        .bind(all.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .bind(all.iter().map(|(_, r)| r.rank as i32).collect::<Vec<_>>())
        .bind(all.iter().map(|(_, r)| r.score).collect::<Vec<_>>())
        .bind(all.iter().map(|(_, r)| r.seed as i64).collect::<Vec<_>>())
        .bind(all.iter().map(|(_, r)| r.width as i32).collect::<Vec<_>>())
        .bind(all.iter().map(|(_, r)| r.height as i32).collect::<Vec<_>>())
        .bind(all.iter().map(|(_, r)| r.key.as_str()).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await
}

/// A failure that ends the job (permanent, or cancelled by its worker).
pub struct Finish<'a> {
    pub id: Uuid,
    pub attempt: i32,
    pub state: JobState,
    pub reason: &'a str,
}

/// Applies `finishes` (at most one per job); answers `(job, batch)` of the
/// jobs it changed.
pub async fn finish(tx: &mut Tx<'_>, finishes: &[Finish<'_>]) -> sqlx::Result<Vec<(Uuid, Uuid)>> {
    if finishes.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(include_str!("sql/finish_jobs.sql"))
        .bind(finishes.iter().map(|f| f.id).collect::<Vec<_>>())
        .bind(finishes.iter().map(|f| f.attempt).collect::<Vec<_>>())
        .bind(
            finishes
                .iter()
                .map(|f| f.state.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(finishes.iter().map(|f| f.reason).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await
}

/// The tokens issued for one attempt of a job.
#[derive(Debug, sqlx::FromRow)]
pub struct Issued {
    pub job_id: Uuid,
    pub attempt: i32,
    /// SHA-256 of each token issued with a publish of the attempt.
    pub hashes: Vec<Vec<u8>>,
    /// The attempt is the job's published one.
    pub published: bool,
}

/// What was issued for each of `attempts` (job, attempt) of a job that
/// exists, by job and attempt.
pub async fn issued_tokens(
    tx: &mut Tx<'_>,
    attempts: &[(Uuid, i32)],
) -> sqlx::Result<std::collections::HashMap<(Uuid, i32), Issued>> {
    if attempts.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<Issued> = sqlx::query_as(include_str!("sql/attempt_tokens.sql"))
        .bind(attempts.iter().map(|a| a.0).collect::<Vec<_>>())
        .bind(attempts.iter().map(|a| a.1).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
    Ok(rows
        .into_iter()
        .map(|i| ((i.job_id, i.attempt), i))
        .collect())
}

/// The state and current attempt of each of `ids` that exists.
pub async fn states(tx: &mut Tx<'_>, ids: &[Uuid]) -> sqlx::Result<Vec<(Uuid, JobState, i32)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(include_str!("sql/job_states.sql"))
        .bind(ids)
        .fetch_all(&mut **tx)
        .await
}
