//! The dead-letter consumer. A job delivery that a worker rejected as
//! poison ends `failed` with the reason. One that reached the broker's
//! delivery limit (or expired) was handed out again and again without
//! finishing: drains, worker restarts, broker outages and crashes all return
//! a delivery, and none of them is the job's fault, so the job is retried
//! with a new attempt (a new message, whose count starts afresh) and fails
//! only when its attempts are spent. Anything that is not a job message is
//! logged, counted and dropped.

use crate::broker;
use crate::metrics::inc;
use crate::state::AppState;
use crate::store;
use crate::store::jobs::RetryOutcome;
use futures::StreamExt;
use kiln_protocol::topology::DEAD_QUEUE;
use kiln_protocol::{JobMessage, JobState};
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::types::{AMQPValue, FieldTable};
use tokio_util::sync::CancellationToken;

pub async fn run(state: AppState, stop: CancellationToken) {
    let url = state.settings.connections.amqp_url.clone();
    let delay = state.settings.reconnect_delay;
    broker::consume_forever("dead-letter consumer", delay, stop, || {
        consume(&state, &url)
    })
    .await
}

/// Why the broker dead-lettered a message (`x-first-death-reason`, else
/// the first `x-death` entry).
pub fn death_reason(headers: Option<&FieldTable>) -> String {
    let Some(h) = headers else {
        return "unknown".into();
    };
    let text = |v: &AMQPValue| match v {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    };
    if let Some(r) = h.inner().get("x-first-death-reason").and_then(text) {
        return r;
    }
    if let Some(AMQPValue::FieldArray(deaths)) = h.inner().get("x-death") {
        for d in deaths.as_slice() {
            if let AMQPValue::FieldTable(t) = d {
                if let Some(r) = t.inner().get("reason").and_then(text) {
                    return r;
                }
            }
        }
    }
    "unknown".into()
}

/// Whether a dead letter for `reason` is retried as a new attempt (rather
/// than failing the job at once).
fn retried(reason: &str) -> bool {
    matches!(reason, "delivery_limit" | "expired")
}

fn describe(reason: &str) -> String {
    match reason {
        "delivery_limit" => "dead-lettered: the broker's delivery limit was reached (it was handed out again and again without finishing: drains, worker restarts, broker outages or crashes)".into(),
        "rejected" => "dead-lettered: a worker rejected the delivery as unprocessable".into(),
        "expired" => "dead-lettered: the message expired in the queue".into(),
        other => format!("dead-lettered: {other}"),
    }
}

async fn consume(state: &AppState, url: &str) -> anyhow::Result<()> {
    let conn = broker::connect(
        url,
        "kiln-dispatcher dead letters",
        state.settings.broker_timeout,
    )
    .await?;
    let (_ch, mut consumer) =
        broker::consumer(&conn, DEAD_QUEUE, 64, state.settings.broker_timeout).await?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        match handle(state, &delivery).await {
            Ok(()) => delivery.ack(BasicAckOptions::default()).await?,
            Err(e) => {
                tracing::error!(
                    error = format!("{e:#}"),
                    "could not record a dead letter; requeueing it"
                );
                broker::hand_back(&delivery, state.settings.reconnect_delay).await?;
            }
        }
    }
    anyhow::bail!("the dead-letter consumer was cancelled by the broker")
}

async fn handle(state: &AppState, delivery: &Delivery) -> anyhow::Result<()> {
    let reason = death_reason(delivery.properties.headers().as_ref());
    let msg = match JobMessage::decode(&delivery.data) {
        Ok(m) => m,
        Err(e) => {
            inc(&state.metrics.dead_letters_undecodable);
            tracing::warn!(error = %e, %reason, bytes = delivery.data.len(), "dropping an undecodable dead letter");
            return Ok(());
        }
    };
    inc(&state.metrics.dead_letters);
    let mut tx = state.db.begin().await?;
    let (id, attempt, why) = (msg.job_id, msg.attempt as i32, describe(&reason));
    let changed = if retried(&reason) {
        let outcome =
            store::jobs::retry_or_fail(&mut tx, id, attempt, &why, |m| state.retry_policy(m))
                .await?;
        outcome != RetryOutcome::Unchanged
    } else {
        store::jobs::finish(&mut tx, id, attempt, JobState::Failed, &why).await?
    };
    tx.commit().await?;
    tracing::warn!(job_id = %msg.job_id, batch_id = %msg.batch_id, attempt = msg.attempt, %reason, changed, "dead-lettered job");
    if changed {
        state.relay_wake.notify_one();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, ShortString};

    #[test]
    fn reasons_come_from_the_headers() {
        assert_eq!(death_reason(None), "unknown");
        let mut h = FieldTable::default();
        h.insert(
            ShortString::from("x-first-death-reason"),
            AMQPValue::LongString("delivery_limit".into()),
        );
        assert_eq!(death_reason(Some(&h)), "delivery_limit");
        let mut entry = FieldTable::default();
        entry.insert(
            ShortString::from("reason"),
            AMQPValue::LongString("rejected".into()),
        );
        let mut h = FieldTable::default();
        h.insert(
            ShortString::from("x-death"),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(entry)])),
        );
        assert_eq!(death_reason(Some(&h)), "rejected");
        assert!(describe("delivery_limit").contains("delivery limit"));
        assert!(retried("delivery_limit") && retried("expired"));
        assert!(!retried("rejected") && !retried("unknown"));
    }
}
