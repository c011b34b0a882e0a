//! Worker events to `kiln.events`, published with confirms on the current
//! session of the [`Link`]: a send returns `Ok` only once the broker has
//! taken responsibility for the event.
//!
//! Progress, heartbeats and `started` are sent once ([`Events::send`]): the
//! next one repeats what they say. A terminal event is sent until the broker
//! confirms it ([`Events::send_until_confirmed`]), across lost sessions, so
//! a render that finished while the broker was away is reported once it is
//! back instead of being thrown away.

use crate::runtime::link::Link;
use anyhow::Context;
use kiln_protocol::backoff::Backoff;
use kiln_protocol::topology::EVENTS_EXCHANGE;
use kiln_protocol::{Event, EventKind, JobMessage};
use lapin::options::BasicPublishOptions;
use lapin::publisher_confirm::Confirmation;
use lapin::BasicProperties;
use std::sync::Arc;
use std::time::Duration;

/// The waits after the broker refused an event: about 0.1 s first,
/// doubling up to about 5 s.
const REFUSED: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(2500));
/// The longest wait for a new session before the event is tried again.
const NEXT_SESSION: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Events {
    link: Link,
    worker: Arc<str>,
}

impl Events {
    pub fn new(link: Link, worker: &str) -> Events {
        Events {
            link,
            worker: worker.into(),
        }
    }

    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Publishes `kind` about `job`'s current attempt on the current
    /// session and waits for the broker's confirm, for at most the link's
    /// timeout. Fails at once while the broker is away.
    pub async fn send(&self, job: &JobMessage, kind: EventKind) -> anyhow::Result<()> {
        let event = Event::about(job, &self.worker, kind);
        self.send_event(&event).await.map_err(|(_, e)| e)
    }

    /// Sends `kind` until the broker confirms it: a failed try waits for
    /// the next session when the broker was lost, and backs off (up to 5 s)
    /// when it refused the event.
    pub async fn send_until_confirmed(&self, job: &JobMessage, kind: EventKind) {
        let event = Event::about(job, &self.worker, kind);
        let mut waits = REFUSED.delays();
        let mut tries = 0u32;
        loop {
            let generation = match self.send_event(&event).await {
                Ok(_) => return,
                Err((generation, e)) => {
                    tries += 1;
                    tracing::warn!(job = %job.job_id, tries, error = format!("{e:#}"), "{} event not confirmed; trying again", event.kind.name());
                    generation
                }
            };
            self.link.count_event_failure();
            let lost = self
                .link
                .current()
                .is_none_or(|s| Some(s.generation) == generation && !s.is_up());
            if lost {
                let next = self.link.next_session(generation);
                let _ = tokio::time::timeout(NEXT_SESSION, next).await;
            } else {
                tokio::time::sleep(waits.next().unwrap_or(Duration::from_secs(5))).await;
            }
        }
    }

    /// One try; on failure, the generation of the session it was made on.
    async fn send_event(&self, event: &Event) -> Result<(), (Option<u64>, anyhow::Error)> {
        let Some(session) = self.link.current() else {
            return Err((None, anyhow::anyhow!("not connected to the broker")));
        };
        if !session.events.status().connected() {
            let why = "the events channel closed".to_string();
            self.link.lost(session.generation, why.clone());
            return Err((Some(session.generation), anyhow::anyhow!(why)));
        }
        let what = format!("the {} event of job {}", event.kind.name(), event.job_id);
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(event.at.timestamp().max(0) as u64);
        let key = event.routing_key();
        publish_confirmed(
            &session.events,
            &key,
            &event.encode(),
            props,
            self.link.timeout(),
            &what,
        )
        .await
        .map_err(|e| (Some(session.generation), e))
    }
}

/// Publishes `body` to `kiln.events` under `key` on `ch` (a channel with
/// confirms) and waits at most `timeout` for the broker to take it;
/// `what` names the message in errors.
pub async fn publish_confirmed(
    ch: &lapin::Channel,
    key: &str,
    body: &[u8],
    props: BasicProperties,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<()> {
    let publish = async {
        let confirm = ch
            .basic_publish(
                EVENTS_EXCHANGE,
                key,
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .with_context(|| format!("publishing {what}"))?
            .await
            .with_context(|| format!("confirming {what}"))?;
        match confirm {
            Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
            Confirmation::Nack(_) => anyhow::bail!("the broker refused {what}"),
        }
    };
    tokio::time::timeout(timeout, publish)
        .await
        .map_err(|_| anyhow::anyhow!("no confirm for {what} within {timeout:?}"))?
}
