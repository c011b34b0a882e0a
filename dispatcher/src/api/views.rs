//! JSON shapes of batches and jobs as the API answers them.

use crate::error::ApiError;
use crate::store::batches::BatchRow;
use crate::store::jobs::{JobRow, ResultRow};
use chrono::{DateTime, Utc};
use kiln_protocol::Priority;
use serde::Serialize;
use std::collections::HashMap;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Serialize, ToSchema)]
pub struct Counts {
    pub queued: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
}

/// A batch. `state` is `queued` (nothing started), `running`, or, once
/// every job is finished, `succeeded` (all succeeded), `cancelled` (the
/// batch was cancelled) or `failed` (some job failed).
#[derive(Debug, Serialize, ToSchema)]
pub struct Batch {
    pub id: Uuid,
    pub name: Option<String>,
    pub engine: String,
    pub priority: Priority,
    pub state: String,
    pub total: i64,
    pub counts: Counts,
    /// Finished jobs over total, 0..1.
    pub progress: f64,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub retry_of: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A batch's state from its counts.
pub fn batch_state(c: &Counts, cancelled: bool) -> &'static str {
    let unfinished = c.queued + c.running;
    if unfinished > 0 {
        if c.running == 0 && c.succeeded + c.failed + c.cancelled == 0 {
            "queued"
        } else {
            "running"
        }
    } else if cancelled {
        "cancelled"
    } else if c.failed > 0 {
        "failed"
    } else if c.cancelled > 0 && c.succeeded == 0 {
        "cancelled"
    } else {
        "succeeded"
    }
}

impl From<BatchRow> for Batch {
    fn from(r: BatchRow) -> Batch {
        let counts = Counts {
            queued: r.queued,
            running: r.running,
            succeeded: r.succeeded,
            failed: r.failed,
            cancelled: r.cancelled,
        };
        let total = r.total as i64;
        let finished = counts.succeeded + counts.failed + counts.cancelled;
        let state = batch_state(&counts, r.cancelled_at.is_some()).to_string();
        let done = counts.queued + counts.running == 0;
        Batch {
            id: r.id,
            name: r.name,
            engine: r.engine,
            priority: Priority::from_rank(r.priority),
            state,
            total,
            progress: if total == 0 {
                1.0
            } else {
                finished as f64 / total as f64
            },
            counts,
            metadata: r.metadata,
            retry_of: r.retry_of,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: if done {
                r.last_finished.or(r.cancelled_at)
            } else {
                None
            },
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Progress {
    pub step: i32,
    pub total: i32,
}

/// One kept image; `url` is a presigned GET that expires.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobResult {
    pub rank: i32,
    pub score: Option<f32>,
    pub seed: i64,
    pub width: i32,
    pub height: i32,
    pub key: String,
    pub url: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Job {
    pub id: Uuid,
    pub batch_id: Uuid,
    pub engine: String,
    pub prompt: String,
    /// Resolved parameters: defaults and seed filled in.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    pub state: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub progress: Option<Progress>,
    pub error: Option<String>,
    pub worker: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub results: Vec<JobResult>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchPage {
    pub items: Vec<Batch>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub items: Vec<Job>,
    pub next_cursor: Option<String>,
}

/// Builds job views, presigning every result URL.
pub async fn jobs_with_results(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    ttl: std::time::Duration,
    rows: Vec<JobRow>,
    results: Vec<ResultRow>,
) -> Result<Vec<Job>, ApiError> {
    let mut by_job: HashMap<Uuid, Vec<ResultRow>> = HashMap::new();
    for r in results {
        by_job.entry(r.job_id).or_default().push(r);
    }
    let presign = aws_sdk_s3::presigning::PresigningConfig::expires_in(ttl)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("presign TTL: {e}")))?;
    let mut out = Vec::with_capacity(rows.len());
    for j in rows {
        let mut results = Vec::new();
        for r in by_job.remove(&j.id).unwrap_or_default() {
            let url = match s3
                .get_object()
                .bucket(bucket)
                .key(&r.key)
                .presigned(presign.clone())
                .await
            {
                Ok(p) => Some(p.uri().to_string()),
                Err(e) => {
                    tracing::warn!(job_id = %j.id, error = %e, "could not presign a result URL");
                    None
                }
            };
            results.push(JobResult {
                rank: r.rank,
                score: r.score,
                seed: r.seed,
                width: r.width,
                height: r.height,
                key: r.key,
                url,
            });
        }
        out.push(Job {
            id: j.id,
            batch_id: j.batch_id,
            engine: j.engine,
            prompt: j.prompt,
            params: j.params,
            state: j.state,
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            progress: match (j.progress_step, j.progress_total) {
                (Some(step), Some(total)) => Some(Progress { step, total }),
                _ => None,
            },
            error: j.error,
            worker: j.worker,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            results,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(q: i64, r: i64, s: i64, f: i64, x: i64) -> Counts {
        Counts {
            queued: q,
            running: r,
            succeeded: s,
            failed: f,
            cancelled: x,
        }
    }

    #[test]
    fn batch_states_follow_the_counts() {
        assert_eq!(batch_state(&c(3, 0, 0, 0, 0), false), "queued");
        assert_eq!(batch_state(&c(2, 1, 0, 0, 0), false), "running");
        assert_eq!(batch_state(&c(2, 0, 1, 0, 0), false), "running");
        assert_eq!(batch_state(&c(0, 0, 3, 0, 0), false), "succeeded");
        assert_eq!(batch_state(&c(0, 0, 2, 1, 0), false), "failed");
        assert_eq!(batch_state(&c(0, 0, 2, 0, 1), true), "cancelled");
        assert_eq!(batch_state(&c(0, 0, 0, 0, 3), false), "cancelled");
    }
}
