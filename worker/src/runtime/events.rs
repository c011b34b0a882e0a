//! Worker events to `kiln.events`, published with confirms: a send returns
//! only once the broker has taken responsibility for the event.

use anyhow::Context;
use kiln_protocol::topology::EVENTS_EXCHANGE;
use kiln_protocol::{Event, EventKind, JobMessage};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::{BasicProperties, Channel, Connection};
use std::sync::Arc;

#[derive(Clone)]
pub struct Events {
    channel: Channel,
    worker: Arc<str>,
}

impl Events {
    pub async fn open(conn: &Connection, worker: &str) -> anyhow::Result<Events> {
        let channel = conn
            .create_channel()
            .await
            .context("opening the events channel")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        Ok(Events {
            channel,
            worker: worker.into(),
        })
    }

    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Publishes `kind` about `job`'s current attempt and waits for the
    /// broker's confirm.
    pub async fn send(&self, job: &JobMessage, kind: EventKind) -> anyhow::Result<()> {
        let event = Event::new(job.job_id, job.attempt, &self.worker, kind);
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(event.at.timestamp().max(0) as u64);
        let confirm = self
            .channel
            .basic_publish(
                EVENTS_EXCHANGE,
                &event.routing_key(),
                BasicPublishOptions::default(),
                &event.encode(),
                props,
            )
            .await
            .with_context(|| {
                format!(
                    "publishing the {} event of job {}",
                    event.kind.name(),
                    job.job_id
                )
            })?
            .await
            .with_context(|| {
                format!(
                    "confirming the {} event of job {}",
                    event.kind.name(),
                    job.job_id
                )
            })?;
        match confirm {
            Confirmation::Ack(_) | Confirmation::NotRequested => Ok(()),
            Confirmation::Nack(_) => anyhow::bail!(
                "the broker refused the {} event of job {}",
                event.kind.name(),
                job.job_id
            ),
        }
    }
}
