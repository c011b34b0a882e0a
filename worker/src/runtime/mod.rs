//! `kiln-worker run`: the worker's data plane.
//!
//! - [`config`]: flags and environment.
//! - [`drain`]: how the worker stops (signals, drain requests), waits for
//!   its running jobs, and what it leaves at the deadline.
//! - [`consumers`]: one consumer per engine queue, a task per delivery.
//! - [`worker`]: what every delivery handler shares; the job time limits.
//! - [`job`]: one delivery from decode to ack, reject or requeue.
//! - [`attempt`]: one job on a slot (events, init image, render, upload).
//! - [`verdict`]: how a job ended → its terminal event, or a requeue.
//! - [`scheduler`]: jobs waiting for a render thread, handed out in batches.
//! - [`slots`]: per device, one set of models shared by its render threads.
//! - [`init_image`]: a job's init image, fetched from the bucket.
//! - [`link`]: the broker connection, replaced in place when it is lost.
//! - [`recent`]: attempts running or just finished here, so a second
//!   delivery of one is recognised.
//! - [`events`]: worker events with publisher confirms.
//! - [`report`]: the worker's reports about itself to the dispatcher's
//!   worker registry.
//! - [`storage`]: the bucket, through each job's presigned URLs, with
//!   retries.
//! - [`output`]: PNG encoding with text chunks, `metadata.json`.
//! - [`control`]: cancels and drain requests from `kiln.control`.
//! - [`metrics`]: `/livez`, `/readyz` and `/metrics`.
//! - [`gpu_memory`]: GPU memory on `/metrics`, from NVML.
//! - [`local`]: `kiln-worker render`, one job without broker or bucket.

pub mod attempt;
pub mod config;
pub mod consumers;
pub mod control;
pub mod drain;
pub mod events;
pub mod gpu_memory;
pub mod init_image;
pub mod job;
pub mod link;
pub mod local;
pub mod metrics;
pub mod output;
pub mod recent;
pub mod report;
pub mod scheduler;
pub mod slots;
pub mod storage;
pub mod verdict;
pub mod worker;

use anyhow::Context;
use config::RunArgs;
use consumers::Consumers;
use drain::Drain;
use kiln_protocol::topology;
use link::{Link, Session, StartFuture, Starter};
use metrics::Metrics;
use std::sync::Arc;
use tokio::sync::{Mutex, Semaphore};
use worker::{JobSettings, Worker};

/// Runs the worker until it is drained; see [`drain`] for how it stops and
/// [`link`] for how it rides out a lost broker.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let devices = crate::parse_devices(&args.device)?;
    let on_cuda = devices.iter().any(|d| d.is_cuda());
    if on_cuda {
        // The shapes of a batch repeat: let cuDNN pick its fastest kernels once.
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let batching = args.batching(on_cuda);
    let worker = args.worker_name();
    let engines = args.engine_set();
    let metrics = Arc::new(Metrics::new(
        worker.clone(),
        args.slots,
        devices.clone(),
        engines.clone(),
    ));
    let bound = metrics::serve(args.metrics_bind, metrics.clone()).await?;
    println!("kiln-worker {worker}: metrics on http://{bound}");

    let slots = {
        let (engines, models, devices) = (engines.clone(), args.models.clone(), devices.clone());
        let (n, dtype, batching) = (args.slots, args.dtype, batching.clone());
        tokio::task::spawn_blocking(move || {
            slots::Slots::start(n, &engines, models, &devices, dtype, batching)
        })
        .await
        .context("loading the engines")??
    };
    metrics.set_model_bytes(slots.memory());
    // Jobs in hand: every slot of every device with a full batch.
    let in_hand: Vec<(kiln_protocol::Engine, u32)> = engines
        .iter()
        .map(|e| {
            (
                *e,
                args.slots * devices.len() as u32 * batching.max_batch(*e) as u32,
            )
        })
        .collect();
    let permits = in_hand.iter().map(|(_, n)| *n).max().unwrap_or(args.slots);
    let link = Link::new(
        &args.amqp_url,
        &worker,
        &engines,
        args.broker_timeout,
        metrics.clone(),
    );
    let drain = Drain::new(args.drain_timeout);
    let w = Arc::new(Worker {
        events: events::Events::new(link.clone(), &worker),
        storage: storage::Storage::new(args.s3_attempts),
        slots,
        permits: Arc::new(Semaphore::new(permits as usize)),
        cancels: Arc::new(control::Cancels::default()),
        recent: Arc::new(recent::Recent::default()),
        metrics: metrics.clone(),
        settings: JobSettings::new(&args, &engines),
        shutdown: drain.shutdown(),
    });
    let consumers = Arc::new(Mutex::new(None));
    link.start(starter(&w, &in_hand, &drain, &link, &consumers))
        .await?;
    drain.listen_for_signals();

    let names: Vec<_> = engines.iter().map(|e| topology::job_queue(*e)).collect();
    let devices: Vec<_> = devices.iter().map(|d| slots::device_label(*d)).collect();
    let identity = report::Identity {
        worker: worker.clone(),
        engines: engines.clone(),
        devices: devices.clone(),
        slots: args.slots,
        // Each engine's consumer holds its own share.
        capacity: in_hand.iter().map(|(_, n)| *n).sum(),
    };
    let reporter =
        report::Reporter::new(link.clone(), drain.clone(), identity, args.report_interval);
    let reports = reporter.spawn();
    println!(
        "kiln-worker {worker}: ready on {} with {} slot(s) per device, consuming {}",
        devices.join(", "),
        args.slots,
        names.join(", ")
    );

    drain.stopped().await;
    metrics.draining.set(1);
    if let Some(c) = consumers.lock().await.take() {
        c.cancel().await;
    }
    drain.wait_for_jobs().await;
    reports.abort();
    // Finished, so that no periodic report can follow the last one.
    let _ = reports.await;
    reporter.send(kiln_protocol::WorkerPhase::Stopped).await;
    link.close("worker drained").await;
    println!("kiln-worker {worker}: drained");
    Ok(())
}

/// What each session of the link starts: the control listener, and the job
/// consumers unless the worker drains (kept in `consumers`, which the drain
/// cancels). A listener or consumer that ends reports its session lost.
fn starter(
    w: &Arc<Worker>,
    engines: &[(kiln_protocol::Engine, u32)],
    drain: &Drain,
    link: &Link,
    consumers: &Arc<Mutex<Option<Consumers>>>,
) -> Starter {
    let (w, engines, drain, link, consumers) = (
        w.clone(),
        engines.to_vec(),
        drain.clone(),
        link.clone(),
        consumers.clone(),
    );
    Arc::new(move |session: Arc<Session>| -> StartFuture {
        let (w, engines, drain, link, consumers) = (
            w.clone(),
            engines.clone(),
            drain.clone(),
            link.clone(),
            consumers.clone(),
        );
        Box::pin(async move {
            let generation = session.generation;
            let on_drain = {
                let drain = drain.clone();
                move || drain.request()
            };
            let on_end = {
                let link = link.clone();
                move || link.lost(generation, "the control queue closed".into())
            };
            let worker = w.events.worker().to_string();
            control::listen(&session.conn, worker, w.cancels.clone(), on_drain, on_end).await?;
            // Checked and stored under the lock the drain takes to cancel
            // them: consumers started here are either cancelled by the drain
            // or not started at all.
            let mut held = consumers.lock().await;
            if !drain.is_draining() {
                let c = Consumers::start(&session, &engines, &w, &drain, &link).await?;
                *held = Some(c);
            }
            Ok(())
        })
    })
}
