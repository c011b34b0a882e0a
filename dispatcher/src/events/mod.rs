//! The worker-event consumer: applies `kiln.events.dispatcher` to
//! PostgreSQL as guarded transitions and acks events only after their
//! transaction committed.
//!
//! Events are applied in sets: whatever deliveries are already buffered
//! (up to the prefetch, `KILN_EVENT_PREFETCH`) are applied in one
//! transaction by a few set-based statements ([`set`]), committed once and
//! acked with one `multiple` ack, so a busy fleet costs a handful of round
//! trips and one commit per set instead of several per event. A set that
//! fails is applied again one event at a time, so one event PostgreSQL
//! refuses is handed back alone and never holds the others.

mod set;

use set::Applied;

use crate::broker;
use crate::metrics::inc;
use crate::state::AppState;
use kiln_protocol::topology::EVENTS_QUEUE;
use kiln_protocol::{Event, EventKind};
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
    while let Some(set) = broker::next_set(&mut consumer).await {
        apply_set(state, set?).await?;
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
    let decoded: Vec<&Event> = events.iter().flatten().collect();
    match set::apply_all(state, &decoded).await {
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
    match set::apply_all(state, &[event]).await {
        Ok(applied) => {
            for (event, a) in applied {
                after(state, event, a);
            }
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

/// What follows an applied event once its transaction committed: metrics,
/// the log line, what its worker must hear, and the relay's wake-up.
fn after(state: &AppState, event: &Event, applied: Applied) {
    state.event_path.up();
    if applied.rejected {
        inc(&state.metrics.events_rejected);
        tracing::warn!(job_id = %event.job_id, attempt = event.attempt, event = event.kind.name(), worker = %event.worker, "ignoring a worker event whose attempt token is wrong or missing");
        return;
    }
    let changed = applied.changed();
    let Applied { tell, batch, .. } = applied;
    inc(if changed {
        &state.metrics.events_applied
    } else {
        &state.metrics.events_ignored
    });
    let lag = (chrono::Utc::now() - event.at)
        .num_microseconds()
        .unwrap_or(0);
    // A worker's clock ahead of this one's counts as no lag.
    state.metrics.event_lag.observe((lag as f64 / 1e6).max(0.0));
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
