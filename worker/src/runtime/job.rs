//! One delivery, from decoding to ack.
//!
//! The order is what makes delivery at-least-once and execution idempotent:
//! `started` → render on a slot thread (progress and heartbeats meanwhile)
//! → upload to deterministic keys → terminal event, confirmed by the broker
//! → ack. A crash anywhere before the ack leaves the delivery unacked, so
//! the broker hands it to another worker, which overwrites the same keys.

use crate::engine::{RenderError, RenderInputs};
use crate::runtime::control::Cancels;
use crate::runtime::events::Events;
use crate::runtime::metrics::{Metrics, Outcome};
use crate::runtime::output::{EncodedImage, Metadata};
use crate::runtime::slots::{RenderJob, RenderOutcome, Slots, StopFlag, StopReason, STOP_GRACE};
use crate::runtime::storage::{Storage, StorageError};
use kiln_protocol::{
    keys, Engine as EngineKind, EventKind, FailureKind, JobMessage, JobSpec, ResultImage,
};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};

/// Timing knobs of a job.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub time_limits: HashMap<EngineKind, Duration>,
    pub default_time_limit: Duration,
    pub heartbeat: Duration,
    pub progress: Duration,
}

impl JobSettings {
    fn time_limit(&self, e: EngineKind) -> Duration {
        self.time_limits
            .get(&e)
            .copied()
            .unwrap_or(self.default_time_limit)
    }
}

/// What every delivery handler shares.
pub struct Worker {
    pub events: Events,
    pub storage: Storage,
    pub slots: Slots,
    pub permits: Arc<Semaphore>,
    pub cancels: Arc<Cancels>,
    pub metrics: Arc<Metrics>,
    pub settings: JobSettings,
    /// Becomes true when the worker drains.
    pub drain: watch::Receiver<bool>,
}

/// Handles one delivery from the queue of `queue_engine` to its ack, reject
/// or requeue.
pub async fn handle(w: Arc<Worker>, queue_engine: EngineKind, delivery: Delivery) {
    let received = Instant::now();
    let engine_label = queue_engine.as_str();
    let msg = match JobMessage::decode(&delivery.data) {
        Ok(m) if m.engine == queue_engine => m,
        Ok(m) => {
            let why = format!(
                "job {} is for engine {} but came from the {queue_engine} queue",
                m.job_id, m.engine
            );
            return reject(&w, &delivery, engine_label, &why).await;
        }
        Err(e) => return reject(&w, &delivery, engine_label, &e.to_string()).await,
    };

    if w.cancels.is_cancelled(msg.job_id) {
        tracing::info!(job = %msg.job_id, "dropping a job that was cancelled before it started");
        let kind = EventKind::Failed {
            kind: FailureKind::Cancelled,
            reason: "cancelled before it started".into(),
        };
        return finish(&w, &delivery, &msg, kind, Outcome::Dropped).await;
    }

    // Wait for a free slot, unless the worker starts draining first.
    let mut drain = w.drain.clone();
    let permit = tokio::select! {
        biased;
        _ = drain.wait_for(|d| *d) => None,
        p = w.permits.clone().acquire_owned() => Some(p.expect("the slot semaphore is never closed")),
    };
    let Some(permit) = permit else {
        tracing::info!(job = %msg.job_id, "draining: handing a waiting job back to the broker");
        requeue(&w, &delivery, engine_label).await;
        return;
    };
    let waited = match delivery.properties.timestamp() {
        Some(ts) => (chrono::Utc::now().timestamp() as f64 - *ts as f64)
            .max(received.elapsed().as_secs_f64()),
        None => received.elapsed().as_secs_f64(),
    };
    w.metrics.queue_wait(queue_engine, waited.max(0.0));

    let (kind, outcome) = run(&w, &msg, permit).await;
    finish(&w, &delivery, &msg, kind, outcome).await;
}

/// Publishes the terminal event and acks once the broker confirmed it.
async fn finish(
    w: &Worker,
    delivery: &Delivery,
    msg: &JobMessage,
    kind: EventKind,
    outcome: Outcome,
) {
    let label = msg.engine.as_str();
    let summary = match &kind {
        EventKind::Failed { kind, reason } => format!("failed ({kind:?}): {reason}"),
        k => k.name().to_string(),
    };
    match w.events.send(msg, kind).await {
        Ok(()) => match delivery.acker.ack(BasicAckOptions::default()).await {
            Ok(()) => {
                tracing::info!(job = %msg.job_id, attempt = msg.attempt, "job {summary}");
                w.metrics.job(label, outcome);
            }
            Err(e) => {
                tracing::error!(job = %msg.job_id, error = %e, "ack failed; the job will be redelivered")
            }
        },
        Err(e) => {
            w.metrics.events_failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(job = %msg.job_id, error = format!("{e:#}"), "terminal event not confirmed; handing the job back");
            requeue(w, delivery, label).await;
        }
    }
}

async fn reject(w: &Worker, delivery: &Delivery, engine: &str, why: &str) {
    tracing::warn!(
        reason = why,
        "dead-lettering a message that is not a job for this worker"
    );
    w.metrics.job(engine, Outcome::Rejected);
    if let Err(e) = delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
    {
        tracing::error!(error = %e, "reject failed");
    }
}

async fn requeue(w: &Worker, delivery: &Delivery, engine: &str) {
    w.metrics.job(engine, Outcome::Requeued);
    let opts = BasicNackOptions {
        requeue: true,
        multiple: false,
    };
    if let Err(e) = delivery.acker.nack(opts).await {
        tracing::warn!(error = %e, "nack failed; the broker redelivers when the channel closes");
    }
}

fn failed(kind: FailureKind, reason: impl Into<String>) -> EventKind {
    EventKind::Failed {
        kind,
        reason: reason.into(),
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Counts a busy slot while alive.
struct Busy<'a>(&'a Metrics);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn run(w: &Worker, msg: &JobMessage, permit: OwnedSemaphorePermit) -> (EventKind, Outcome) {
    w.metrics.busy.fetch_add(1, Ordering::Relaxed);
    let _busy = Busy(&w.metrics);
    if let Err(e) = w.events.send(msg, EventKind::Started).await {
        w.metrics.events_failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(job = %msg.job_id, error = format!("{e:#}"), "started event not confirmed");
    }
    let _heartbeat = {
        let (events, msg, every) = (w.events.clone(), msg.clone(), w.settings.heartbeat);
        AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                if let Err(e) = events.send(&msg, EventKind::Heartbeat).await {
                    tracing::warn!(job = %msg.job_id, error = format!("{e:#}"), "heartbeat not confirmed");
                }
            }
        }))
    };

    let mut inputs = RenderInputs::default();
    if let Some(id) = &msg.params.init_image {
        let key = keys::upload_key(&msg.tenant, id);
        match w.storage.get(&key).await {
            Ok(bytes) => match image::load_from_memory(&bytes) {
                Ok(img) => inputs.init_image = Some(img.to_rgb8()),
                Err(e) => {
                    let why = format!("init image {id} is not a readable image: {e}");
                    return (
                        failed(FailureKind::Permanent, why),
                        Outcome::FailedPermanent,
                    );
                }
            },
            Err(StorageError::NotFound(_)) => {
                let why = format!("init image {id} was not uploaded (no object {key})");
                return (
                    failed(FailureKind::Permanent, why),
                    Outcome::FailedPermanent,
                );
            }
            Err(e) => {
                let why = format!("fetching init image {id}: {e}");
                return (
                    failed(FailureKind::Retryable, why),
                    Outcome::FailedRetryable,
                );
            }
        }
    }

    let spec = JobSpec {
        engine: msg.engine,
        prompt: msg.prompt.clone(),
        params: msg.params.clone(),
    };
    let stop = Arc::new(StopFlag::default());
    let _registration = w.cancels.register(msg.job_id, stop.clone());
    let (progress_tx, mut progress_rx) = watch::channel((0u32, 0u32));
    let (done_tx, mut done_rx) = oneshot::channel();
    let job = RenderJob {
        spec: spec.clone(),
        inputs,
        stop: stop.clone(),
        progress: progress_tx,
        done: done_tx,
        slot: permit,
    };
    if let Err(e) = w.slots.submit(job) {
        return (
            failed(FailureKind::Retryable, format!("{e:#}")),
            Outcome::FailedRetryable,
        );
    }

    let limit = w.settings.time_limit(msg.engine);
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(w.settings.progress);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published = (0, 0);
    let mut gave_up_at: Option<tokio::time::Instant> = None;
    let outcome = loop {
        let grace = async {
            match gave_up_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut done_rx => break r.ok(),
            _ = &mut deadline, if stop.reason().is_none() => stop.stop(StopReason::TimeLimit),
            _ = grace => break None,
            _ = tick.tick() => {
                if stop.reason().is_some() && gave_up_at.is_none() {
                    gave_up_at = Some(tokio::time::Instant::now() + STOP_GRACE);
                }
                let p = *progress_rx.borrow_and_update();
                if p != published && p.1 > 0 {
                    published = p;
                    let kind = EventKind::Progress { step: p.0, total: p.1 };
                    if let Err(e) = w.events.send(msg, kind).await {
                        tracing::warn!(job = %msg.job_id, error = format!("{e:#}"), "progress event not confirmed");
                    }
                }
            }
        }
    };

    match outcome {
        Some(RenderOutcome::Rendered {
            images, seconds, ..
        }) => {
            w.metrics.render_seconds(msg.engine, seconds);
            match upload(w, msg, images, seconds).await {
                Ok(results) => (EventKind::Succeeded { results }, Outcome::Succeeded),
                Err(e) => (
                    failed(
                        FailureKind::Retryable,
                        format!("uploading the results: {e}"),
                    ),
                    Outcome::FailedRetryable,
                ),
            }
        }
        Some(RenderOutcome::Failed {
            error,
            seconds,
            step,
        }) => {
            w.metrics.render_seconds(msg.engine, seconds);
            match (error, stop.reason()) {
                (RenderError::Cancelled, Some(StopReason::TimeLimit)) => (
                    failed(
                        FailureKind::Retryable,
                        format!(
                            "stopped at step {step} by the time limit of {}s for engine {}",
                            limit.as_secs_f64(),
                            msg.engine
                        ),
                    ),
                    Outcome::TimedOut,
                ),
                (RenderError::Cancelled, _) => (
                    failed(FailureKind::Cancelled, format!("cancelled at step {step}")),
                    Outcome::Cancelled,
                ),
                (RenderError::Invalid(why), _) => (
                    failed(FailureKind::Permanent, why),
                    Outcome::FailedPermanent,
                ),
                (RenderError::Failed(e), _) => (
                    failed(FailureKind::Retryable, format!("{e:#}")),
                    Outcome::FailedRetryable,
                ),
            }
        }
        None => {
            let why = match stop.reason() {
                Some(r) => format!(
                    "the render did not stop within {}s of being told to ({r:?}); its slot stays busy until it returns",
                    STOP_GRACE.as_secs()
                ),
                None => "the render thread stopped without an answer".to_string(),
            };
            tracing::error!(job = %msg.job_id, "{why}");
            if stop.reason() == Some(StopReason::Cancelled) {
                (failed(FailureKind::Cancelled, why), Outcome::Cancelled)
            } else {
                (failed(FailureKind::Retryable, why), Outcome::TimedOut)
            }
        }
    }
}

/// Uploads the images, then `metadata.json`.
async fn upload(
    w: &Worker,
    msg: &JobMessage,
    images: Vec<EncodedImage>,
    seconds: f64,
) -> Result<Vec<ResultImage>, StorageError> {
    let mut results = Vec::with_capacity(images.len());
    for img in images {
        let key = keys::image_key(&msg.tenant, msg.batch_id, msg.job_id, img.rank);
        let result = img.result(key.clone());
        w.storage.put(&key, img.png, "image/png").await?;
        results.push(result);
    }
    let meta = Metadata {
        v: kiln_protocol::PROTOCOL_VERSION,
        job_id: msg.job_id,
        batch_id: msg.batch_id,
        tenant: msg.tenant.clone(),
        attempt: msg.attempt,
        worker: w.events.worker().to_string(),
        engine: msg.engine,
        prompt: msg.prompt.text().to_string(),
        params: msg.params.clone(),
        render_seconds: seconds,
        finished_at: chrono::Utc::now(),
        results: results.clone(),
    };
    let body = serde_json::to_vec_pretty(&meta).expect("metadata always serializes");
    let key = keys::metadata_key(&msg.tenant, msg.batch_id, msg.job_id);
    w.storage.put(&key, body, "application/json").await?;
    Ok(results)
}
