//! Stored rows as the API answers them: [`kiln_protocol::api::Batch`] and
//! [`kiln_protocol::api::Job`] built from the store's rows, result URLs
//! presigned (and reused while they have half their lifetime left).

use crate::metrics::inc;
use crate::state::AppState;
use crate::store::batches::BatchRow;
use crate::store::jobs::{JobRow, ResultRow};
use crate::store::webhooks::DeliveryRow;
use crate::store::workers::WorkerRow;
use kiln_protocol::api::{Batch, Counts, Job, JobResult, Progress, Worker, WorkerState};
use kiln_protocol::api::{DeliveryState, Webhook, WebhookDelivery, WebhookEvent};
use kiln_protocol::{Engine, Priority};
use std::collections::HashMap;
use uuid::Uuid;

/// A count from SQL (never negative) as the API states it.
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A non-negative integer column as the API states it.
pub(super) fn whole(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// A registry row as the API states it: a silent worker is lost unless it
/// said it stopped. An engine this build does not know (a newer worker's)
/// is left out.
pub fn worker(r: WorkerRow) -> Worker {
    let state = match r.phase.as_str() {
        "stopped" => WorkerState::Stopped,
        _ if r.silent => WorkerState::Lost,
        "draining" => WorkerState::Draining,
        _ => WorkerState::Ready,
    };
    Worker {
        id: r.id,
        host: r.host,
        version: r.version,
        engines: r
            .engines
            .iter()
            .filter_map(|e| e.parse::<Engine>().ok())
            .collect(),
        devices: r.devices,
        slots: whole(r.slots),
        capacity: whole(r.capacity),
        jobs_in_hand: whole(r.jobs_in_hand),
        state,
        started_at: r.started_at,
        last_seen: r.last_seen,
    }
}

pub fn batch(r: BatchRow) -> Batch {
    let counts = Counts {
        queued: count(r.queued),
        running: count(r.running),
        succeeded: count(r.succeeded),
        failed: count(r.failed),
        cancelled: count(r.cancelled),
    };
    let total = count(r.total.into());
    let done = counts.queued + counts.running == 0;
    Batch {
        id: r.id,
        name: r.name,
        engine: r.engine,
        priority: Priority::from_rank(r.priority),
        state: counts.batch_state(r.cancelled_at.is_some()),
        total,
        progress: if total == 0 {
            1.0
        } else {
            counts.finished() as f64 / total as f64
        },
        counts,
        metadata: r.metadata.0,
        retry_of: r.retry_of,
        created_at: r.created_at,
        updated_at: r.updated_at,
        finished_at: if done {
            r.last_finished.or(r.cancelled_at)
        } else {
            None
        },
        webhook: r.webhook_url.map(|url| Webhook {
            url,
            events: r
                .webhook_events
                .unwrap_or_default()
                .iter()
                .filter_map(|e| e.parse().ok())
                .collect(),
        }),
    }
}

/// A stored delivery as the API answers it.
pub fn delivery(r: DeliveryRow) -> WebhookDelivery {
    let state = match r.state.as_str() {
        "delivered" => DeliveryState::Delivered,
        "failed" => DeliveryState::Failed,
        _ => DeliveryState::Pending,
    };
    WebhookDelivery {
        id: r.id.to_string(),
        event: r.event.parse().unwrap_or(WebhookEvent::JobFinished),
        job_id: r.job_id,
        state,
        attempts: u32::try_from(r.attempts).unwrap_or(0),
        last_status: r.last_status.and_then(|s| u16::try_from(s).ok()),
        last_error: r.last_error,
        created_at: r.created_at,
        last_attempt_at: r.last_attempt_at,
        next_attempt_at: (state == DeliveryState::Pending).then_some(r.next_at),
        delivered_at: r.delivered_at,
    }
}

/// Builds job views with every result's URL, presigned or reused from
/// `state.presigned` while it has at least half its lifetime left (judged
/// from the URL itself: one signed with temporary credentials lives only
/// as long as they do).
pub async fn jobs_with_results(
    state: &AppState,
    rows: Vec<JobRow>,
    results: Vec<ResultRow>,
) -> Vec<Job> {
    let half = state.settings.connections.s3.presign_ttl / 2;
    let mut by_job: HashMap<Uuid, Vec<ResultRow>> = HashMap::new();
    for r in results {
        by_job.entry(r.job_id).or_default().push(r);
    }
    if let Err(e) = state.result_urls.refresh().await {
        tracing::warn!(error = %e, "could not fetch fresh bucket credentials");
    }
    let now = std::time::SystemTime::now();
    let reuse_until = chrono::DateTime::<chrono::Utc>::from(now + half);
    let keeps = |url: &String| {
        kiln_protocol::message::url_expires_at(url).is_some_and(|at| at > reuse_until)
    };
    let mut out = Vec::with_capacity(rows.len());
    for j in rows {
        let mut results = Vec::new();
        for r in by_job.remove(&j.id).unwrap_or_default() {
            let url = match state.presigned.get(r.key.as_str()).filter(keeps) {
                Some(url) => {
                    inc(&state.metrics.presign_reused);
                    url
                }
                None => {
                    let url = state.result_urls.get(&r.key, now);
                    state.presigned.insert(r.key.clone(), url.clone());
                    url
                }
            };
            results.push(JobResult {
                rank: whole(r.rank),
                score: r.score,
                seed: u64::try_from(r.seed).unwrap_or(0),
                width: whole(r.width),
                height: whole(r.height),
                key: r.key,
                url: Some(url),
            });
        }
        out.push(job(j, results));
    }
    out
}

/// A running job's `step` of `total` as the API states it.
pub(super) fn progress(step: i32, total: i32) -> Progress {
    Progress {
        step: whole(step),
        total: whole(total),
    }
}

fn job(j: JobRow, results: Vec<JobResult>) -> Job {
    Job {
        id: j.id,
        batch_id: j.batch_id,
        engine: j.engine,
        prompt: j.prompt,
        params: j.params.0,
        state: j.state,
        attempt: whole(j.attempt),
        max_attempts: whole(j.max_attempts),
        progress: match (j.progress_step, j.progress_total) {
            (Some(step), Some(total)) => Some(progress(step, total)),
            _ => None,
        },
        error: j.error,
        worker: j.worker,
        created_at: j.created_at,
        started_at: j.started_at,
        finished_at: j.finished_at,
        results,
    }
}
