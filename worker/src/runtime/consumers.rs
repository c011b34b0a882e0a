//! The job consumers: one channel and consumer per engine queue, each
//! delivery handed to [`job::handle`] on its own task and tracked by the
//! [`Drain`]. A consumer that ends while the worker does not drain reports
//! its session lost to the [`Link`], which starts new consumers on a new
//! connection.

use crate::runtime::drain::Drain;
use crate::runtime::job;
use crate::runtime::link::{Link, Session};
use crate::runtime::worker::Worker;
use anyhow::Context;
use futures::StreamExt;
use kiln_protocol::{topology, Engine as EngineKind};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use std::sync::Arc;

/// The running consumers, by channel and consumer tag.
pub struct Consumers(Vec<(Channel, String)>);

impl Consumers {
    /// Consumes the queue of each of `engines` as `{worker}/{engine}` on
    /// `session`, with the prefetch named beside each engine (the jobs its
    /// batches can take). A consumer that ends while `drain` does not drain
    /// reports the session lost to `link`.
    pub async fn start(
        session: &Session,
        engines: &[(EngineKind, u32)],
        w: &Arc<Worker>,
        drain: &Drain,
        link: &Link,
    ) -> anyhow::Result<Consumers> {
        let mut consumers = Vec::new();
        for (engine, prefetch) in engines {
            let ch = session.conn.create_channel().await?;
            // Prefetch = slots × devices × max batch: the broker never hands
            // this worker more jobs of one engine than its batches can take.
            ch.basic_qos(
                (*prefetch).clamp(1, u16::MAX as u32) as u16,
                BasicQosOptions::default(),
            )
            .await?;
            let queue = topology::job_queue(*engine);
            let tag = format!("{}/{engine}", w.events.worker());
            let consumer = ch
                .basic_consume(
                    &queue,
                    &tag,
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("consuming {queue}"))?;
            let on_end = {
                let (drain, link, generation) = (drain.clone(), link.clone(), session.generation);
                move |why: String| {
                    if !drain.is_draining() {
                        link.lost(generation, why);
                    }
                }
            };
            tokio::spawn(consume(consumer, *engine, w.clone(), drain.clone(), on_end));
            consumers.push((ch, tag));
        }
        Ok(Consumers(consumers))
    }

    /// Cancels every consumer: the broker delivers no more jobs.
    pub async fn cancel(&self) {
        for (ch, tag) in &self.0 {
            if let Err(e) = ch.basic_cancel(tag, BasicCancelOptions::default()).await {
                tracing::warn!(error = %e, "cancelling consumer {tag}");
            }
        }
    }
}

/// Hands each delivery of `engine` to its own task until the stream ends,
/// then tells `on_end` why.
async fn consume(
    mut consumer: lapin::Consumer,
    engine: EngineKind,
    w: Arc<Worker>,
    drain: Drain,
    on_end: impl FnOnce(String),
) {
    let why = loop {
        match consumer.next().await {
            Some(Ok(delivery)) => {
                let (w, inflight) = (w.clone(), drain.track());
                tokio::spawn(async move {
                    job::handle(w, engine, delivery).await;
                    drop(inflight);
                });
            }
            Some(Err(e)) => break format!("consumer of {engine} failed: {e}"),
            None => break format!("the broker closed the consumer of {engine}"),
        }
    };
    on_end(why);
}
