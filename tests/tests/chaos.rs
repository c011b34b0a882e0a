//! Chaos: a dispatcher and two workers render a few hundred held
//! test-pattern jobs while, one after another,
//!
//! 1. RabbitMQ stops; meanwhile a second dispatcher stores a batch it cannot
//!    publish and is killed with SIGKILL; RabbitMQ starts again;
//! 2. PostgreSQL restarts;
//! 3. a worker is killed with SIGKILL (a new one takes its place);
//! 4. Garage stops for a few seconds.
//!
//! Every job of both batches ends `succeeded` exactly once with its objects
//! in the bucket, and the dispatcher and the first worker are the processes
//! started at the beginning (the worker rode out the broker restart in
//! place). The services are the test's own (a PostgreSQL cluster, a
//! RabbitMQ node and a Garage server in its folder, on free ports), so
//! restarting them touches no other test.
//!
//! Needs the local stack's server packages and the workspace binaries.

use anyhow::{ensure, Result};
use kiln_protocol::api::{Batch, BatchRequest, Counts};
use kiln_protocol::JobState;
use kiln_tests::e2e::{held, PrivateGarage};
use kiln_tests::scale::{metric, Api, Cluster, Process, Services};
use kiln_tests::services::{PrivatePostgres, PrivateRabbit};
use std::time::{Duration, Instant};

const JOBS: usize = 240;
const LATE_JOBS: usize = 40;
const LIMIT: Duration = Duration::from_secs(240);

fn request(name: &str, jobs: usize) -> BatchRequest {
    BatchRequest {
        engine: "test-pattern".into(),
        name: Some(name.into()),
        prompts: Some((0..jobs).map(|i| format!("{name} {i}")).collect()),
        params: Some(held(8, 50)),
        ..Default::default()
    }
}

/// The batches' summed counts, once the API answers (it answers 503 while
/// PostgreSQL is away).
async fn counts(api: &Api, batches: &[&Batch]) -> Result<Counts> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let mut sum = Counts::default();
        let mut ok = true;
        for b in batches {
            match api.batch(b.id).await {
                Ok(b) => {
                    let c = b.counts;
                    sum.queued += c.queued;
                    sum.running += c.running;
                    sum.succeeded += c.succeeded;
                    sum.failed += c.failed;
                    sum.cancelled += c.cancelled;
                }
                Err(_) => ok = false,
            }
        }
        if ok {
            ensure!(sum.failed == 0 && sum.cancelled == 0, "{sum:?}");
            return Ok(sum);
        }
        ensure!(Instant::now() < deadline, "the API did not answer");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until `more` jobs succeeded beyond what had when called, checking
/// that the processes that must live do.
async fn progress(
    api: &Api,
    batches: &[&Batch],
    more: u64,
    live: &mut [&mut Process],
) -> Result<u64> {
    let from = counts(api, batches).await?.succeeded;
    let deadline = Instant::now() + LIMIT;
    loop {
        for p in live.iter_mut() {
            p.ensure_running()?;
        }
        let c = counts(api, batches).await?;
        if c.succeeded >= from + more || c.queued + c.running == 0 {
            return Ok(c.succeeded);
        }
        ensure!(Instant::now() < deadline, "stuck at {c:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels).unwrap_or(0.0)
}

async fn worker_metrics(w: &Process) -> Result<String> {
    Ok(reqwest::get(format!("{}/metrics", w.metrics_addr()?))
        .await?
        .text()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_succeeds_once_through_broker_database_worker_and_storage_faults() -> Result<()> {
    let t0 = Instant::now();
    let dir = std::env::temp_dir().join(format!("kiln-chaos-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let pg = PrivatePostgres::start(&dir).await?;
    let mut rabbit = PrivateRabbit::start(&dir).await?;
    let mut garage = PrivateGarage::start(&dir).await?;
    let services = Services {
        database_url: pg.url(),
        amqp_url: rabbit.url(),
        s3: garage.s3.clone(),
    };
    let env = [
        ("KILN_RECONNECT_DELAY", "200ms"),
        ("KILN_MAX_ATTEMPTS", "3"),
    ];
    let mut c = Cluster::start_on(services, &env).await?;
    let (mut doomed, doomed_api) = c.start_dispatcher("doomed-dispatcher", &env).await?;
    let mut w1 = c.start_worker("test-pattern", 2, 30)?;
    let mut w2 = c.start_worker("test-pattern", 2, 30)?;
    let w1_pid = w1.pid();
    let setup = t0.elapsed();

    let first = c.api.submit(&request("chaos", JOBS)).await?;
    progress(&c.api, &[&first], 20, &mut [&mut w1, &mut w2]).await?;

    // 1. The broker stops. A dispatcher stores a batch it cannot publish
    //    and dies; the broker comes back.
    rabbit.pause().await?;
    let late = doomed_api
        .submit(&request(
            "stored, never published by its dispatcher",
            LATE_JOBS,
        ))
        .await?;
    doomed.kill9().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbit.resume().await?;
    let both = [&first, &late];
    progress(
        &c.api,
        &both,
        20,
        &mut [&mut w1, &mut w2, &mut c.dispatcher],
    )
    .await?;

    // 2. PostgreSQL restarts.
    pg.pause().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.resume().await?;
    progress(
        &c.api,
        &both,
        20,
        &mut [&mut w1, &mut w2, &mut c.dispatcher],
    )
    .await?;

    // 3. A worker dies mid-job; another takes its place.
    w2.kill9().await?;
    let mut w3 = c.start_worker("test-pattern", 2, 30)?;
    progress(
        &c.api,
        &both,
        20,
        &mut [&mut w1, &mut w3, &mut c.dispatcher],
    )
    .await?;

    // 4. The bucket is away for a few seconds.
    garage.pause()?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    garage.resume().await?;

    let total = (JOBS + LATE_JOBS) as u64;
    progress(
        &c.api,
        &both,
        total,
        &mut [&mut w1, &mut w3, &mut c.dispatcher],
    )
    .await?;
    let end = counts(&c.api, &both).await?;
    ensure!(end.succeeded == total, "{end:?}");
    ensure!(w1.pid() == w1_pid, "the first worker is the same process");
    ensure!(
        w1.log_text().contains("reconnected to the broker"),
        "{}",
        w1.log_tail(30)
    );

    let mut retried = 0;
    let mut objects = 0;
    for b in both {
        let jobs = c.api.jobs(b.id).await?;
        ensure!(jobs.iter().all(|j| j.state == JobState::Succeeded));
        retried += jobs.iter().filter(|j| j.attempt > 1).count();
        objects += c.object_keys(b.id).await?.len();
    }
    ensure!(
        objects == 2 * total as usize,
        "{objects} objects for {total} jobs"
    );

    let (m1, m3) = (worker_metrics(&w1).await?, worker_metrics(&w3).await?);
    let reported = |m: &str| sample(m, "kiln_worker_jobs_total", &[("outcome", "succeeded")]);
    let recognised = sample(&m1, "kiln_worker_redeliveries_recognised_total", &[])
        + sample(&m3, "kiln_worker_redeliveries_recognised_total", &[]);
    let dispatcher = c.api.metrics().await?;
    println!(
        "chaos: {total} jobs succeeded once each in {:.1} s (setup {:.1} s); {retried} on a later attempt; \
         reported succeeded by the surviving workers {} + {}, the killed worker's not counted; \
         first worker reconnects {}; second deliveries recognised {recognised}; \
         dispatcher: events ignored {}, stale attempts told to stop {}, rescued {}",
        t0.elapsed().as_secs_f64(),
        setup.as_secs_f64(),
        reported(&m1),
        reported(&m3),
        sample(&m1, "kiln_worker_broker_reconnects_total", &[]),
        sample(&dispatcher, "kiln_events_ignored_total", &[]),
        sample(&dispatcher, "kiln_stale_attempts_total", &[]),
        sample(&dispatcher, "kiln_jobs_rescued_total", &[]),
    );
    c.remove_logs();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
