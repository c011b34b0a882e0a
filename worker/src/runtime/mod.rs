//! `kiln-worker run`: the worker's data plane.
//!
//! - [`config`]: flags and environment.
//! - [`drain`]: how the worker stops (signals, drain requests, a lost
//!   broker), waits for its running jobs, and what it leaves at the deadline.
//! - [`consumers`]: one consumer per engine queue, a task per delivery.
//! - [`worker`]: what every delivery handler shares; the job time limits.
//! - [`job`]: one delivery from decode to ack, reject or requeue.
//! - [`attempt`]: one job on a slot (events, init image, render, upload).
//! - [`verdict`]: how a job ended → its terminal event, or a requeue.
//! - [`slots`]: render threads, one per slot, each owning its engines.
//! - [`init_image`]: a job's init image, fetched from the bucket.
//! - [`events`]: worker events with publisher confirms.
//! - [`storage`]: the results bucket, with retries.
//! - [`output`]: PNG encoding with text chunks, `metadata.json`.
//! - [`control`]: cancels and drain requests from `kiln.control`.
//! - [`metrics`]: `/healthz` and `/metrics`.
//! - [`local`]: `kiln-worker render`, one job without broker or bucket.

pub mod attempt;
pub mod config;
pub mod consumers;
pub mod control;
pub mod drain;
pub mod events;
pub mod init_image;
pub mod job;
pub mod local;
pub mod metrics;
pub mod output;
pub mod slots;
pub mod storage;
pub mod verdict;
pub mod worker;

use anyhow::Context;
use config::RunArgs;
use consumers::Consumers;
use drain::Drain;
use kiln_protocol::topology;
use lapin::{Connection, ConnectionProperties};
use metrics::Metrics;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::Semaphore;
use worker::{JobSettings, Worker};

/// Runs the worker until it is drained (Ok) or loses the broker (Err); see
/// [`drain`] for how it stops.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let device = crate::parse_device(&args.device)?;
    let worker = args.worker_name();
    let engines = args.engine_set();
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
    let conn = connect(&args.amqp_url, &metrics).await?;
    let events = events::Events::open(&conn, &worker).await?;

    let drain = Drain::new(args.drain_timeout);
    let cancels = Arc::new(control::Cancels::default());
    {
        let drain = drain.clone();
        control::listen(&conn, worker.clone(), cancels.clone(), move || {
            drain.request()
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
        settings: JobSettings::new(&args, &engines),
        shutdown: drain.shutdown(),
    });
    let consumers = Consumers::start(&conn, &engines, args.slots, &w, &drain).await?;
    drain.listen_for_signals();

    let names: Vec<_> = engines.iter().map(|e| topology::job_queue(*e)).collect();
    println!(
        "kiln-worker {worker}: ready on {} with {} slot(s), consuming {}",
        device_name(device),
        args.slots,
        names.join(", ")
    );

    if let Err(lost) = drain.stopped().await {
        metrics.connected.store(false, Ordering::Relaxed);
        return Err(lost);
    }
    metrics.draining.store(true, Ordering::Relaxed);
    consumers.cancel().await;
    drain.wait_for_jobs().await;
    let _ = conn.close(200, "worker drained").await;
    println!("kiln-worker {worker}: drained");
    Ok(())
}

/// Connects to the broker, declares the topology, and keeps `metrics`'
/// connected flag current.
async fn connect(amqp_url: &str, metrics: &Arc<Metrics>) -> anyhow::Result<Connection> {
    let conn = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .with_context(|| {
            format!(
                "connecting to RabbitMQ at {}",
                kiln_protocol::logging::redact(amqp_url)
            )
        })?;
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
    Ok(conn)
}

fn device_name(d: tch::Device) -> String {
    match d {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(k) => format!("cuda:{k}"),
        other => format!("{other:?}"),
    }
}
