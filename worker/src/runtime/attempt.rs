//! One attempt at a job that holds a slot: the `started` event, heartbeats,
//! the init image, the render on a slot thread (progress, time limit, stop
//! grace) and the upload to deterministic keys. It ends in an [`Ending`]
//! for [`verdict`](crate::runtime::verdict::verdict) to judge.

use crate::engine::{RenderError, RenderInputs};
use crate::runtime::init_image;
use crate::runtime::metrics::Metrics;
use crate::runtime::output::{EncodedImage, Metadata};
use crate::runtime::slots::{Answer, RenderJob, RenderOutcome, StopFlag, StopReason, STOP_GRACE};
use crate::runtime::storage::StorageError;
use crate::runtime::verdict::{no_answer_reason, Ending};
use crate::runtime::worker::Worker;
use kiln_protocol::{keys, EventKind, JobMessage, ResultImage};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit};

/// Runs `msg` on the slot `permit` stands for, up to the upload.
///
/// The `started` event is published at once, and its confirm is awaited
/// only before the attempt ends (so before its terminal event): the render
/// does not wait for the broker's round trip.
pub async fn run(w: &Worker, msg: &JobMessage, permit: OwnedSemaphorePermit) -> Ending {
    // Without usable URLs the render would be for nothing: the dispatcher
    // publishes the attempt again with fresh ones. Nothing is reported
    // started, so the job stays queued meanwhile.
    if let Some(why) = unusable_urls(msg) {
        return Ending::NeedsUrls(why);
    }
    w.metrics.busy.inc();
    let _busy = Busy(&w.metrics);
    let (sent, ending) = tokio::join!(
        w.events.send(msg, EventKind::Started),
        render_and_upload(w, msg, permit)
    );
    if let Err(e) = sent {
        w.metrics.events_failed.inc();
        tracing::warn!(job = %msg.job_id, error = format!("{e:#}"), "started event not confirmed");
    }
    ending
}

/// Why `msg`'s URLs cannot serve its attempt: it has none (published by
/// an older dispatcher), or they expired while it waited.
fn unusable_urls(msg: &JobMessage) -> Option<String> {
    match msg.urls.as_ref().map(|u| u.expires_at()) {
        None => Some("the job message carries no URLs".into()),
        Some(Some(at)) if at <= chrono::Utc::now() => Some(format!(
            "its URLs expired at {at} while it waited, before it started"
        )),
        Some(_) => None,
    }
}

/// The attempt after its `started`: heartbeats, the init image, the render
/// and the upload.
async fn render_and_upload(w: &Worker, msg: &JobMessage, permit: OwnedSemaphorePermit) -> Ending {
    let _heartbeat = heartbeat(w, msg);

    let mut inputs = RenderInputs::default();
    if let Some(id) = msg.spec.params().init_image() {
        let url = msg.urls.as_ref().and_then(|u| u.init_image.as_deref());
        match init_image::fetch(&w.storage, url, &msg.tenant, id).await {
            Ok(img) => inputs.init_image = Some(img),
            Err(e) => return Ending::InitImage(e),
        }
    }

    let stop = Arc::new(StopFlag::default());
    let _registration = w.cancels.register(msg.job_id, msg.attempt, stop.clone());
    let (progress_tx, progress_rx) = watch::channel((0u32, 0u32));
    let (done_tx, done_rx) = oneshot::channel();
    let (taken_tx, taken_rx) = oneshot::channel();
    let job = RenderJob {
        spec: msg.spec.clone(),
        inputs,
        stop: stop.clone(),
        progress: progress_tx,
        taken: Some(taken_tx),
        done: Answer::new(done_tx),
        slot: permit,
    };
    if let Err(e) = w.slots.submit(job) {
        return Ending::NotSubmitted(e);
    }

    let limit = w.settings.time_limit(msg.spec.engine());
    let render = Render {
        stop: &stop,
        limit,
        taken: taken_rx,
        done: done_rx,
        progress: progress_rx,
    };
    match await_render(w, msg, render).await {
        Some(RenderOutcome::Rendered {
            images,
            seconds,
            batch,
            ..
        }) => {
            w.metrics.render_seconds(msg.spec.engine(), seconds);
            w.metrics.batch_size(msg.spec.engine(), batch);
            // A cancel or a stale-attempt stop that came during ranking and
            // encoding: the objects belong to the attempt that counts.
            if stop.reason() == Some(StopReason::Cancelled) {
                return Ending::StoppedBeforeUpload;
            }
            Ending::Uploaded(upload(w, msg, images, seconds).await)
        }
        Some(RenderOutcome::Failed {
            error,
            seconds,
            step,
        }) => {
            w.metrics.render_seconds(msg.spec.engine(), seconds);
            Ending::RenderFailed {
                error,
                step,
                stop: stop.reason(),
                limit,
                engine: msg.spec.engine(),
            }
        }
        Some(RenderOutcome::Panicked {
            message, seconds, ..
        }) => {
            w.metrics.render_seconds(msg.spec.engine(), seconds);
            Ending::Panicked { message }
        }
        None => {
            let stop = stop.reason();
            tracing::error!(job = %msg.job_id, "{}", no_answer_reason(stop));
            Ending::NoAnswer { stop }
        }
    }
}

/// A submitted render, as its attempt waits for it.
struct Render<'a> {
    stop: &'a StopFlag,
    limit: Duration,
    taken: oneshot::Receiver<()>,
    done: oneshot::Receiver<RenderOutcome>,
    progress: watch::Receiver<(u32, u32)>,
}

/// Waits for the render thread's answer, publishing progress at most once
/// per progress interval. The time `limit` runs from the moment a render
/// thread takes the job (not while it waits for its batch); at the limit
/// `stop` is raised; once `stop` is raised (time limit or cancel), waits
/// [`STOP_GRACE`] more at most. A job stopped before a thread took it is
/// answered cancelled at once (the thread drops it unrendered). `None`: no
/// answer.
async fn await_render(w: &Worker, msg: &JobMessage, r: Render<'_>) -> Option<RenderOutcome> {
    let Render {
        stop,
        limit,
        mut taken,
        mut done,
        mut progress,
    } = r;
    let mut taken_at: Option<tokio::time::Instant> = None;
    let mut waiting = true;
    let mut tick = tokio::time::interval(w.settings.progress);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published = (0, 0);
    let mut gave_up_at: Option<tokio::time::Instant> = None;
    loop {
        let deadline = until(taken_at.map(|t| t + limit));
        let grace = until(gave_up_at);
        tokio::select! {
            r = &mut done => break r.ok(),
            t = &mut taken, if waiting => {
                waiting = false;
                if t.is_ok() {
                    taken_at = Some(tokio::time::Instant::now());
                }
            }
            _ = deadline, if stop.reason().is_none() => stop.stop(StopReason::TimeLimit),
            _ = grace => break None,
            _ = tick.tick() => {
                if stop.reason().is_some() && waiting {
                    break Some(RenderOutcome::Failed {
                        error: RenderError::Cancelled,
                        seconds: 0.0,
                        step: 0,
                    });
                }
                if stop.reason().is_some() && gave_up_at.is_none() {
                    gave_up_at = Some(tokio::time::Instant::now() + STOP_GRACE);
                }
                let p = *progress.borrow_and_update();
                if p != published && p.1 > 0 {
                    published = p;
                    let kind = EventKind::Progress { step: p.0, total: p.1 };
                    if let Err(e) = w.events.send(msg, kind).await {
                        tracing::warn!(job = %msg.job_id, error = format!("{e:#}"), "progress event not confirmed");
                    }
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is none.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Publishes a heartbeat every heartbeat interval until dropped.
fn heartbeat(w: &Worker, msg: &JobMessage) -> AbortOnDrop {
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
}

/// Uploads the images, then `metadata.json`, each through the presigned
/// PUT URL the job message carries for it.
async fn upload(
    w: &Worker,
    msg: &JobMessage,
    images: Vec<EncodedImage>,
    seconds: f64,
) -> Result<Vec<ResultImage>, StorageError> {
    let urls = msg.urls.as_ref();
    let mut results = Vec::with_capacity(images.len());
    for img in images {
        let key = keys::image_key(&msg.tenant, msg.batch_id, msg.job_id, img.rank);
        let url = urls.and_then(|u| u.images.get(img.rank as usize));
        let url = url.ok_or_else(|| StorageError::no_url(&key))?;
        let result = img.result(key.clone());
        w.storage
            .put(url, &key, img.png, keys::IMAGE_CONTENT_TYPE)
            .await?;
        results.push(result);
    }
    let meta = Metadata::new(msg, w.events.worker(), seconds, results.clone());
    let body = serde_json::to_vec_pretty(&meta).expect("metadata always serializes");
    let key = keys::metadata_key(&msg.tenant, msg.batch_id, msg.job_id);
    let url = urls.map(|u| u.metadata.as_str());
    let url = url.ok_or_else(|| StorageError::no_url(&key))?;
    w.storage
        .put(url, &key, body, keys::METADATA_CONTENT_TYPE)
        .await?;
    Ok(results)
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
        self.0.busy.dec();
    }
}
