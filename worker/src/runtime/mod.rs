//! `kiln-worker run`: the worker's data plane.
//!
//! - [`config`]: flags and environment.
//! - [`slots`]: render threads, one per slot, each owning its engines.
//! - [`job`]: one delivery from decode to ack (events, render, upload).
//! - [`events`]: worker events with publisher confirms.
//! - [`storage`]: the results bucket, with retries.
//! - [`output`]: PNG encoding with text chunks, `metadata.json`.
//! - [`control`]: cancels and drain requests from `kiln.control`.
//! - [`metrics`]: `/healthz` and `/metrics`.
//! - [`local`]: `kiln-worker render`, one job without broker or bucket.
//!
//! Shutdown: SIGTERM, SIGINT or a drain request flips one `watch` flag. The
//! consumers are cancelled (no new deliveries), deliveries still waiting
//! for a slot go back to the broker, and running jobs get `--drain-timeout`
//! to finish and ack. Whatever is still running then stays unacked and is
//! redelivered when the connection closes. The exit status is 0 either way;
//! it is 1 only when the broker connection fails under a running worker.

pub mod config;
pub mod control;
pub mod events;
pub mod job;
pub mod local;
pub mod metrics;
pub mod output;
pub mod slots;
pub mod storage;

use anyhow::Context;
use config::RunArgs;
use futures::StreamExt;
use job::{JobSettings, Worker};
use kiln_protocol::topology;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use metrics::Metrics;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, watch, Semaphore};

const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Runs the worker until it is drained (Ok) or loses the broker (Err).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let device = crate::parse_device(&args.device)?;
    let worker = args.worker_name();
    let mut engines = args.engines.clone();
    engines.sort();
    engines.dedup();
    let metrics = Arc::new(Metrics::new(
        worker.clone(),
        args.slots,
        device,
        engines.clone(),
    ));
    let bound = metrics::serve(args.metrics_bind, metrics.clone()).await?;
    println!("kiln-worker {worker}: metrics on http://{bound}");

    let slots = {
        let (engines, models) = (engines.clone(), args.models.clone());
        let n = args.slots;
        tokio::task::spawn_blocking(move || slots::Slots::start(n, &engines, models, device))
            .await
            .context("loading the engines")??
    };

    let conn = Connection::connect(&args.amqp_url, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to RabbitMQ at {}", redact(&args.amqp_url)))?;
    metrics.connected.store(true, Ordering::Relaxed);
    {
        let m = metrics.clone();
        conn.on_error(move |e| {
            m.connected.store(false, Ordering::Relaxed);
            tracing::error!(error = %e, "broker connection failed");
        });
    }
    let setup = conn.create_channel().await?;
    topology::declare(&setup)
        .await
        .context("declaring the broker topology")?;
    let events = events::Events::open(&conn, &worker).await?;

    let (drain_tx, drain_rx) = watch::channel(false);
    let drain_tx = Arc::new(drain_tx);
    let cancels = Arc::new(control::Cancels::default());
    {
        let d = drain_tx.clone();
        control::listen(&conn, worker.clone(), cancels.clone(), move || {
            d.send_replace(true);
        })
        .await?;
    }

    let w = Arc::new(Worker {
        events,
        storage: storage::Storage::new(&args.s3, args.s3_attempts),
        slots,
        permits: Arc::new(Semaphore::new(args.slots as usize)),
        cancels,
        metrics: metrics.clone(),
        settings: JobSettings {
            time_limits: engines.iter().map(|e| (*e, args.time_limit(*e))).collect(),
            default_time_limit: args.default_time_limit,
            // Timers need a period above zero.
            heartbeat: args.heartbeat_interval.max(MIN_INTERVAL),
            progress: args.progress_interval.max(MIN_INTERVAL),
        },
        drain: drain_rx.clone(),
    });

    // Deliveries being handled; the drain waits for this to reach zero.
    let (inflight_tx, mut inflight_rx) = watch::channel(0usize);
    let inflight_tx = Arc::new(inflight_tx);
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<String>();
    let mut consumers = Vec::new();
    for engine in &engines {
        let engine = *engine;
        let ch = conn.create_channel().await?;
        // Prefetch = slots: the broker never hands this worker more jobs of
        // one engine than it can start at once.
        ch.basic_qos(
            args.slots.min(u16::MAX as u32) as u16,
            BasicQosOptions::default(),
        )
        .await?;
        let queue = topology::job_queue(engine);
        let tag = format!("{worker}/{engine}");
        let mut consumer = ch
            .basic_consume(
                &queue,
                &tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {queue}"))?;
        let (w, inflight, fatal, drain) = (
            w.clone(),
            inflight_tx.clone(),
            fatal_tx.clone(),
            drain_rx.clone(),
        );
        tokio::spawn(async move {
            let why = loop {
                match consumer.next().await {
                    Some(Ok(delivery)) => {
                        inflight.send_modify(|n| *n += 1);
                        let (w, inflight) = (w.clone(), inflight.clone());
                        tokio::spawn(async move {
                            job::handle(w, engine, delivery).await;
                            inflight.send_modify(|n| *n -= 1);
                        });
                    }
                    Some(Err(e)) => break format!("consumer of {engine} failed: {e}"),
                    None => break format!("the broker closed the consumer of {engine}"),
                }
            };
            if !*drain.borrow() {
                let _ = fatal.send(why);
            }
        });
        consumers.push((ch, tag));
    }
    drop(fatal_tx);

    {
        let d = drain_tx.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        return;
                    }
                };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
            }
            d.send_replace(true);
        });
    }

    let names: Vec<_> = engines.iter().map(|e| topology::job_queue(*e)).collect();
    println!(
        "kiln-worker {worker}: ready on {} with {} slot(s), consuming {}",
        device_name(device),
        args.slots,
        names.join(", ")
    );

    let mut drain = drain_rx.clone();
    tokio::select! {
        _ = drain.wait_for(|d| *d) => {}
        Some(why) = fatal_rx.recv() => {
            metrics.connected.store(false, Ordering::Relaxed);
            anyhow::bail!("{why}; running jobs will be redelivered");
        }
    }

    metrics.draining.store(true, Ordering::Relaxed);
    for (ch, tag) in &consumers {
        if let Err(e) = ch.basic_cancel(tag, BasicCancelOptions::default()).await {
            tracing::warn!(error = %e, "cancelling consumer {tag}");
        }
    }
    let running = *inflight_rx.borrow();
    tracing::info!(
        running,
        timeout_s = args.drain_timeout.as_secs_f64(),
        "draining"
    );
    let finished = tokio::time::timeout(args.drain_timeout, inflight_rx.wait_for(|n| *n == 0))
        .await
        .is_ok();
    match finished {
        true => tracing::info!("drained: every job finished"),
        false => {
            let left = *inflight_rx.borrow();
            tracing::warn!(
                left,
                "drain timeout: unfinished jobs stay unacked and will be redelivered"
            );
        }
    }
    let _ = conn.close(200, "worker drained").await;
    println!("kiln-worker {worker}: drained");
    Ok(())
}

fn device_name(d: tch::Device) -> String {
    match d {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(k) => format!("cuda:{k}"),
        other => format!("{other:?}"),
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(super::redact("amqp://host/v"), "amqp://host/v");
    }
}
