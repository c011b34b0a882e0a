//! The worker's reports about itself ([`WorkerReport`], routing key
//! `worker.report` on `kiln.events`), which the dispatcher keeps in its
//! worker registry (`GET /v1/workers`, `kiln workers`): one when the worker
//! is ready, one every report interval, one when it starts to drain and one
//! as it exits.
//!
//! A report is sent once, on a channel of its own: a lost one is followed
//! by the next, and a broker that refuses one (a worker user without the
//! `worker.*` topic permission) closes only that channel, never the events
//! channel the jobs' events travel on.

use crate::runtime::config::host_name;
use crate::runtime::drain::Drain;
use crate::runtime::events::publish_confirmed;
use crate::runtime::link::Link;
use anyhow::Context;
use kiln_protocol::{Engine, WorkerPhase, WorkerReport, PROTOCOL_VERSION};
use lapin::options::ConfirmSelectOptions;
use lapin::{BasicProperties, Channel};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// What a worker says of itself that does not change while it runs.
pub struct Identity {
    pub worker: String,
    pub engines: Vec<Engine>,
    pub devices: Vec<String>,
    pub slots: u32,
    pub capacity: u32,
}

pub struct Reporter {
    link: Link,
    drain: Drain,
    base: WorkerReport,
    interval: Duration,
    /// The reports' channel and the session it was opened on.
    channel: Mutex<Option<(u64, Channel)>>,
    /// Reports made so far (each report's `seq`).
    made: AtomicU64,
    /// Whether the last report failed (only the first failure in a row is
    /// a warning).
    failing: AtomicBool,
}

impl Reporter {
    pub fn new(link: Link, drain: Drain, who: Identity, interval: Duration) -> Arc<Reporter> {
        let now = chrono::Utc::now();
        let base = WorkerReport {
            v: PROTOCOL_VERSION,
            worker: who.worker,
            host: host_name().unwrap_or_else(|| "unknown".into()),
            version: env!("CARGO_PKG_VERSION").to_string(),
            engines: who.engines.iter().map(|e| e.as_str().to_string()).collect(),
            devices: who.devices,
            slots: who.slots,
            capacity: who.capacity,
            jobs_in_hand: 0,
            phase: WorkerPhase::Ready,
            started_at: now,
            seq: 0,
            at: now,
            interval_ms: interval.as_millis() as u64,
        };
        Arc::new(Reporter {
            link,
            drain,
            base,
            interval,
            channel: Mutex::new(None),
            made: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        })
    }

    /// Reports now and every interval, and at once when a drain starts,
    /// until the task is aborted.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut told_draining = false;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = me.drain.stopped(), if !told_draining => told_draining = true,
                }
                let phase = if me.drain.is_draining() {
                    WorkerPhase::Draining
                } else {
                    WorkerPhase::Ready
                };
                me.send(phase).await;
            }
        })
    }

    /// Sends one report; a failure is logged, not returned.
    pub async fn send(&self, phase: WorkerPhase) {
        let mut report = self.base.clone();
        report.phase = phase;
        report.jobs_in_hand = self.drain.in_flight() as u32;
        report.seq = self.made.fetch_add(1, Ordering::Relaxed) + 1;
        report.at = chrono::Utc::now();
        match self.try_send(&report).await {
            Ok(()) => {
                self.failing.store(false, Ordering::Relaxed);
                tracing::debug!(phase = phase.as_str(), "worker report sent");
            }
            Err(e) => {
                *self.channel.lock().await = None;
                let error = format!("{e:#}");
                if self.failing.swap(true, Ordering::Relaxed) {
                    tracing::debug!(phase = phase.as_str(), error, "worker report not sent");
                } else {
                    tracing::warn!(phase = phase.as_str(), error, "worker report not sent; the next ones follow (further failures are logged at debug level)");
                }
            }
        }
    }

    async fn try_send(&self, report: &WorkerReport) -> anyhow::Result<()> {
        let session = self.link.current().context("not connected to the broker")?;
        let mut held = self.channel.lock().await;
        let ch = match &*held {
            Some((generation, ch))
                if *generation == session.generation && ch.status().connected() =>
            {
                ch.clone()
            }
            _ => {
                let ch = session.conn.create_channel().await?;
                ch.confirm_select(ConfirmSelectOptions::default()).await?;
                *held = Some((session.generation, ch.clone()));
                ch
            }
        };
        drop(held);
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_timestamp(report.at.timestamp().max(0) as u64);
        let key = WorkerReport::ROUTING_KEY;
        let timeout = self.link.timeout();
        publish_confirmed(
            &ch,
            key,
            &report.encode(),
            props,
            timeout,
            "the worker report",
        )
        .await
    }
}
