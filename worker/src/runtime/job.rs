//! One delivery, from decoding to ack.
//!
//! The order is what makes delivery at-least-once and execution idempotent:
//! `started` → render on a slot thread (progress and heartbeats meanwhile)
//! → upload to deterministic keys → terminal event, confirmed by the broker
//! → ack. A crash anywhere before the ack leaves the delivery unacked, so
//! the broker hands it to another worker, which overwrites the same keys.
//! A lost broker connection does the same without a crash: the render goes
//! on, its terminal event is sent once the broker is back, and the second
//! delivery is recognised here ([`Recent`](crate::runtime::recent::Recent))
//! and acked without rendering again.
//!
//! [`attempt`](crate::runtime::attempt) runs the job on a slot;
//! [`verdict`](crate::runtime::verdict) decides what its ending means; this
//! module carries the decision out on the delivery.

use crate::runtime::attempt;
use crate::runtime::metrics::Outcome;
use crate::runtime::recent::{Claim, Seen};
use crate::runtime::verdict::{verdict, Ending, Verdict};
use crate::runtime::worker::Worker;
use kiln_protocol::{Engine as EngineKind, EventKind, FailureKind, JobMessage};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use std::sync::Arc;
use std::time::Instant;

/// Handles one delivery from the queue of `queue_engine` to its ack, reject
/// or requeue.
pub async fn handle(w: Arc<Worker>, queue_engine: EngineKind, delivery: Delivery) {
    let received = Instant::now();
    let msg = match accept(queue_engine, &delivery.data) {
        Ok(m) => m,
        Err(why) => return reject(&w, &delivery, queue_engine.as_str(), &why).await,
    };
    let claim = match w.recent.claim(msg.job_id, msg.attempt).await {
        Seen::New(claim) => claim,
        Seen::Finished => return recognised(&w, &delivery, &msg).await,
    };

    let ending = if w.cancels.is_cancelled(msg.job_id) {
        tracing::info!(job = %msg.job_id, "dropping a job that was cancelled before it started");
        Ending::CancelledInQueue
    } else {
        match w.shutdown.slot(&w.permits).await {
            None => {
                tracing::info!(job = %msg.job_id, "draining: handing a waiting job back to the broker");
                Ending::DrainedWhileWaiting
            }
            Some(permit) => {
                w.metrics
                    .queue_wait(queue_engine, queue_wait(&delivery, received));
                attempt::run(&w, &msg, permit).await
            }
        }
    };

    match verdict(ending) {
        Verdict::Report { event, outcome } => {
            finish(&w, &delivery, &msg, event, outcome, &claim).await
        }
        Verdict::Requeue => requeue(&w, &delivery, msg.spec.engine().as_str()).await,
    }
}

/// The job in `data`, or why it is not a job for the queue of
/// `queue_engine` (and goes to the dead-letter queue).
fn accept(queue_engine: EngineKind, data: &[u8]) -> Result<JobMessage, String> {
    match JobMessage::decode(data) {
        Ok(m) if m.spec.engine() == queue_engine => Ok(m),
        Ok(m) => Err(format!(
            "job {} is for engine {} but came from the {queue_engine} queue",
            m.job_id,
            m.spec.engine()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Seconds since the message was published (by its timestamp), or at least
/// since it was delivered.
fn queue_wait(delivery: &Delivery, received: Instant) -> f64 {
    let waited = match delivery.properties.timestamp() {
        Some(ts) => (chrono::Utc::now().timestamp() as f64 - *ts as f64)
            .max(received.elapsed().as_secs_f64()),
        None => received.elapsed().as_secs_f64(),
    };
    waited.max(0.0)
}

/// Publishes the terminal event (waiting for the broker while it is away),
/// marks the attempt finished here (unless it is to come again with fresh
/// URLs), and acks.
async fn finish(
    w: &Worker,
    delivery: &Delivery,
    msg: &JobMessage,
    kind: EventKind,
    outcome: Outcome,
    claim: &Claim,
) {
    let label = msg.spec.engine().as_str();
    let summary = match &kind {
        EventKind::Failed { kind, reason } => format!("failed ({kind:?}): {reason}"),
        k => k.name().to_string(),
    };
    // Refused URLs: the dispatcher publishes this same attempt again, with
    // fresh ones, and that delivery must render here too.
    let again = matches!(
        kind,
        EventKind::Failed {
            kind: FailureKind::Expired,
            ..
        }
    );
    w.events.send_until_confirmed(msg, kind).await;
    if !again {
        claim.finished();
    }
    tracing::info!(job = %msg.job_id, attempt = msg.attempt, "job {summary}");
    w.metrics.job(label, outcome);
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        tracing::warn!(job = %msg.job_id, error = %e, "ack failed (the channel was lost); the broker delivers the job again and this worker recognises it");
    }
}

/// Acks a second delivery of an attempt this worker has reported already.
async fn recognised(w: &Worker, delivery: &Delivery, msg: &JobMessage) {
    w.metrics.redeliveries.inc();
    tracing::info!(job = %msg.job_id, attempt = msg.attempt, "a second delivery of an attempt this worker reported already; acking it without rendering");
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        tracing::warn!(job = %msg.job_id, error = %e, "ack failed; recognised again on the next delivery");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_job_message_is_rejected_with_the_decode_error() {
        for garbage in [
            &b"this is not json"[..],
            br#"{"v":1,"job_id":"not-a-uuid"}"#,
        ] {
            let why = accept(EngineKind::TestPattern, garbage).unwrap_err();
            assert!(!why.is_empty());
        }
    }
}
