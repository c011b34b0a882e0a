//! The worker-event consumer: applies `kiln.events.dispatcher` to
//! PostgreSQL as guarded transitions and acks events only after their
//! transaction committed.
//!
//! Events are applied in sets: whatever deliveries are already buffered
//! (up to the prefetch, `KILN_EVENT_PREFETCH`) are applied in order in one
//! transaction, committed once and acked with one `multiple` ack, so a
//! busy fleet costs one commit per set instead of one per event. A set that
//! fails is applied again one event at a time, so one event PostgreSQL
//! refuses is handed back alone and never holds the others.

use crate::broker;
use crate::metrics::inc;
use crate::state::AppState;
use crate::store;
use crate::store::jobs::RetryOutcome;
use futures::{FutureExt, StreamExt};
use kiln_protocol::topology::EVENTS_QUEUE;
use kiln_protocol::{Event, EventKind, FailureKind, JobState};
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use tokio_util::sync::CancellationToken;

pub async fn run(state: AppState, stop: CancellationToken) {
    let url = state.settings.connections.amqp_url.clone();
    let delay = state.settings.reconnect_delay;
    broker::consume_forever("event consumer", delay, stop, || async {
        let ended = consume(&state, &url).await;
        state.event_path.down();
        ended
    })
    .await
}

async fn consume(state: &AppState, url: &str) -> anyhow::Result<()> {
    let conn =
        broker::connect(url, "kiln-dispatcher events", state.settings.broker_timeout).await?;
    let (_ch, mut consumer) = broker::consumer(
        &conn,
        EVENTS_QUEUE,
        state.settings.event_prefetch,
        state.settings.broker_timeout,
    )
    .await?;
    tracing::info!("event consumer connected");
    state.event_path.up();
    while let Some(first) = consumer.next().await {
        let mut set = vec![first?];
        // Only what is already buffered: a lone event never waits.
        while let Some(Some(next)) = consumer.next().now_or_never() {
            set.push(next?);
        }
        apply_set(state, set).await?;
    }
    anyhow::bail!("the event consumer was cancelled by the broker")
}

/// Applies `set` (deliveries in order) in one transaction and acks them
/// with one `multiple` ack; when that fails, one event at a time.
async fn apply_set(state: &AppState, set: Vec<Delivery>) -> anyhow::Result<()> {
    let events: Vec<Option<Event>> = set
        .iter()
        .map(|d| match Event::decode(&d.data) {
            Ok(e) => Some(e),
            Err(e) => {
                inc(&state.metrics.events_undecodable);
                tracing::warn!(error = %e, "dropping an undecodable worker event");
                None
            }
        })
        .collect();
    match apply_all(state, &events).await {
        Ok(applied) => {
            inc(&state.metrics.event_sets);
            // Committed: what follows happens whether or not the ack does
            // (a redelivery is then a duplicate, ignored).
            for (event, a) in applied {
                after(state, event, a);
            }
            let last = set.last().expect("a set holds one delivery at least");
            last.acker.ack(BasicAckOptions { multiple: true }).await?;
            Ok(())
        }
        Err(e) => {
            if set.len() > 1 {
                tracing::warn!(
                    events = set.len(),
                    error = format!("{e:#}"),
                    "a set of worker events failed; applying them one at a time"
                );
            }
            for (delivery, event) in set.iter().zip(&events) {
                apply_one(state, delivery, event.as_ref()).await?;
            }
            Ok(())
        }
    }
}

/// Applies the decoded `events` in one transaction, in job id order (each
/// job's own events keep their order), so that two sets, or a set and
/// another writer, lock the same jobs in the same order.
async fn apply_all<'e>(
    state: &AppState,
    events: &'e [Option<Event>],
) -> anyhow::Result<Vec<(&'e Event, Applied)>> {
    let mut ordered: Vec<&Event> = events.iter().flatten().collect();
    ordered.sort_by_key(|e| e.job_id);
    let mut tx = state.db.begin().await?;
    let mut applied = Vec::with_capacity(ordered.len());
    for event in ordered {
        applied.push((event, apply_in(&mut tx, state, event).await?));
    }
    tx.commit().await?;
    Ok(applied)
}

/// Applies one delivery on its own: acked once applied (or when it is no
/// event), handed back when PostgreSQL refuses it.
async fn apply_one(
    state: &AppState,
    delivery: &Delivery,
    event: Option<&Event>,
) -> anyhow::Result<()> {
    let Some(event) = event else {
        delivery.ack(BasicAckOptions::default()).await?;
        return Ok(());
    };
    match apply(state, event).await {
        Ok(_) => {
            delivery.ack(BasicAckOptions::default()).await?;
            Ok(())
        }
        Err(e) => {
            // PostgreSQL trouble: hand the event back and slow down.
            // Only an unreachable database holds the reaper back; an
            // event that fails on its own must not stop every lease.
            if crate::error::database_unreachable_in(&e) {
                state.event_path.down();
            }
            tracing::error!(job_id = %event.job_id, error = format!("{e:#}"), "could not apply a worker event; requeueing it");
            broker::hand_back(delivery, state.settings.reconnect_delay).await?;
            Ok(())
        }
    }
}

/// What the worker behind an ignored `started`, progress or heartbeat must
/// hear.
enum Tell {
    Nothing,
    /// The job was cancelled meanwhile: the worker missed the broadcast.
    Cancel,
    /// The job has moved past this attempt (retried after its lease lapsed)
    /// or has ended (a run twice after a lost ack): it must stop before it
    /// uploads over the objects of the attempt that counts.
    StopAttempt,
}

impl Tell {
    /// Broadcasts what the worker behind `event` must hear, if anything.
    fn send(self, state: &AppState, event: &Event) {
        let (id, attempt, worker) = (event.job_id, event.attempt, &event.worker);
        match self {
            Tell::Nothing => {}
            Tell::Cancel => {
                tracing::info!(job_id = %id, %worker, "repeating the cancel for a job a worker still runs");
                state.control.cancel_soon(vec![id]);
            }
            Tell::StopAttempt => {
                inc(&state.metrics.stale_attempts);
                tracing::info!(job_id = %id, attempt, %worker, "telling a worker to stop a stale attempt");
                state.control.stop_attempt_soon(id, attempt);
            }
        }
    }
}

async fn what_to_tell(tx: &mut store::Tx<'_>, id: uuid::Uuid, attempt: i32) -> sqlx::Result<Tell> {
    Ok(match store::jobs::state_of(tx, id).await? {
        Some((JobState::Cancelled, _, _)) => Tell::Cancel,
        Some((now, current, _)) if now.is_terminal() || attempt < current => Tell::StopAttempt,
        _ => Tell::Nothing,
    })
}

/// What applying one event did, for [`after`].
struct Applied {
    changed: bool,
    tell: Tell,
    /// The job's batch, when the event changed the job.
    batch: Option<uuid::Uuid>,
}

/// Applies one event in its own transaction; answers whether it changed
/// the job.
pub async fn apply(state: &AppState, event: &Event) -> anyhow::Result<bool> {
    let mut tx = state.db.begin().await?;
    let applied = apply_in(&mut tx, state, event).await?;
    tx.commit().await?;
    let changed = applied.changed;
    after(state, event, applied);
    Ok(changed)
}

/// Applies one event inside `tx`.
async fn apply_in(
    tx: &mut store::Tx<'_>,
    state: &AppState,
    event: &Event,
) -> anyhow::Result<Applied> {
    let id = event.job_id;
    let attempt = event.attempt as i32;
    let lease = state.settings.lease;
    let changed = match &event.kind {
        EventKind::Started | EventKind::Heartbeat | EventKind::Progress { .. } => {
            let progress = match &event.kind {
                EventKind::Progress { step, total } => Some((*step as i32, *total as i32)),
                _ => None,
            };
            let touch = store::jobs::Touch {
                id,
                attempt,
                worker: &event.worker,
                at: event.at,
                lease,
                progress,
                started: matches!(event.kind, EventKind::Started),
            };
            store::jobs::touch(tx, &touch).await?
        }
        EventKind::Succeeded { results } => {
            let Some((_, _, batch)) = store::jobs::state_of(tx, id).await? else {
                tracing::warn!(job_id = %id, "event for an unknown job");
                return Ok(Applied {
                    changed: false,
                    tell: Tell::Nothing,
                    batch: None,
                });
            };
            let tenant = store::jobs::tenant_of(tx, id).await?;
            // A worker may only name objects under this job's own prefix.
            let prefix = kiln_protocol::keys::job_prefix(&tenant, batch, id);
            if let Some(bad) = results
                .iter()
                .find(|r| !r.key.starts_with(&prefix) || r.key.contains(".."))
            {
                let reason = format!(
                    "worker {} reported a result outside the job's prefix: {}",
                    event.worker, bad.key
                );
                tracing::error!(job_id = %id, batch_id = %batch, %reason);
                store::jobs::finish(tx, id, attempt, JobState::Failed, &reason).await?
            } else {
                store::jobs::succeed(tx, id, attempt, &event.worker, results).await?
            }
        }
        EventKind::Failed { kind, reason } => match kind {
            FailureKind::Permanent => {
                store::jobs::finish(tx, id, attempt, JobState::Failed, reason).await?
            }
            FailureKind::Cancelled => {
                store::jobs::finish(tx, id, attempt, JobState::Cancelled, reason).await?
            }
            FailureKind::Retryable => {
                let outcome =
                    store::jobs::retry_or_fail(tx, id, attempt, reason, |m| state.retry_policy(m))
                        .await?;
                if let RetryOutcome::Retried { next, delay } = outcome {
                    tracing::info!(job_id = %id, attempt = next, delay_ms = delay.as_millis() as u64, %reason, "job retried");
                }
                outcome != RetryOutcome::Unchanged
            }
        },
    };
    let running_event = matches!(
        event.kind,
        EventKind::Started | EventKind::Progress { .. } | EventKind::Heartbeat
    );
    let tell = if !changed && running_event {
        what_to_tell(tx, id, attempt).await?
    } else {
        Tell::Nothing
    };
    let batch = if changed {
        store::jobs::state_of(tx, id).await?.map(|(_, _, b)| b)
    } else {
        None
    };
    Ok(Applied {
        changed,
        tell,
        batch,
    })
}

/// What follows an applied event once its transaction committed: metrics,
/// the log line, what its worker must hear, and the relay's wake-up.
fn after(state: &AppState, event: &Event, applied: Applied) {
    state.event_path.up();
    let Applied {
        changed,
        tell,
        batch,
    } = applied;
    inc(if changed {
        &state.metrics.events_applied
    } else {
        &state.metrics.events_ignored
    });
    let lag = (chrono::Utc::now() - event.at)
        .num_microseconds()
        .unwrap_or(0);
    state.metrics.event_lag.observe(lag as f64 / 1e6);
    let (id, attempt) = (event.job_id, event.attempt);
    if let (true, Some(batch)) = (event.kind.is_terminal(), batch) {
        tracing::info!(job_id = %id, batch_id = %batch, attempt, event = event.kind.name(), worker = %event.worker, "job event applied");
    } else {
        tracing::debug!(job_id = %id, attempt, event = event.kind.name(), changed, "event");
    }
    tell.send(state, event);
    if changed && (matches!(&event.kind, EventKind::Started) || event.kind.is_terminal()) {
        // A slot in the relay's window is free.
        state.relay_wake.notify_one();
    }
}
