//! `kiln-worker run` riding out a lost broker connection in place: the
//! broker closes the worker's connection as a restart does
//! (`CONNECTION_FORCED`, through the management API, in this test's own
//! virtual host so that no other test is touched). The same process
//! reconnects, the renders in flight finish and are reported once, their
//! second deliveries are recognised and acked without rendering again, and
//! cancels are heard on the new connection. And twenty rolling drains
//! while a batch runs fail no job.
//!
//! Needs the local stack and the workspace binaries, as `worker_runtime`.

use anyhow::{ensure, Context, Result};
use kiln_protocol::api::BatchRequest;
use kiln_protocol::keys::{image_key, metadata_key};
use kiln_protocol::{Event, EventKind, FailureKind};
use kiln_tests::e2e::{held, list_keys, test_job, Broker, Worker, WorkerOpts};
use kiln_tests::scale::{metric, Cluster};
use kiln_tests::{broker_connections, close_broker_connections, fresh_tenant, fresh_vhost, S3};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

fn running(e: &Event, at_least: u32) -> bool {
    matches!(e.kind, EventKind::Progress { step, .. } if step >= at_least)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_replaced_in_place_and_no_render_is_lost_or_repeated() -> Result<()> {
    let amqp_url = fresh_vhost().await?;
    let (tenant, s3) = (fresh_tenant(), S3::from_env());
    let dir = std::env::temp_dir().join(format!("kiln-{tenant}"));
    std::fs::create_dir_all(&dir)?;
    let broker = Broker::connect(&amqp_url).await?;
    let mut events = broker.events().await?;
    let opts = WorkerOpts {
        slots: 2,
        ..WorkerOpts::new("w-reconnect", &amqp_url, &dir)
    };
    let mut w = Worker::start(&opts).await?;
    let pid = w.pid();
    let conns = broker_connections(&amqp_url, "kiln-worker w-reconnect").await?;
    ensure!(conns.len() == 1, "{conns:?}");

    // Three jobs of about 2 s on two slots: two render when the broker
    // drops the connection, the third waits in the queue.
    let jobs: Vec<_> = (0..3)
        .map(|i| {
            test_job(
                &tenant,
                &format!("rides out a broker restart {i}"),
                held(40, 50),
            )
        })
        .collect();
    for j in &jobs {
        broker.publish_job(j).await?;
    }
    let first = events
        .wait(LONG, "a job running", |e| running(e, 2))
        .await?;
    events
        .wait(LONG, "a second job running", |e| {
            e.job_id != first.job_id && running(e, 2)
        })
        .await?;
    close_broker_connections(&conns).await?;

    for j in &jobs {
        let done = events.wait(LONG, "a terminal event", |e| {
            e.job_id == j.job_id && e.kind.is_terminal()
        });
        let done = done.await?;
        ensure!(done.kind.name() == "succeeded", "{done:?}");
    }
    events.settle(Duration::from_secs(1)).await?;
    for j in &jobs {
        let seen = events.of(j.job_id);
        let count = |name: &str| seen.iter().filter(|e| e.kind.name() == name).count();
        ensure!(
            count("started") == 1 && count("succeeded") == 1,
            "rendered and reported once: {seen:?}"
        );
        let prefix = format!("{tenant}/{}/{}/", j.batch_id, j.job_id);
        let keys = list_keys(&s3, &prefix).await?;
        ensure!(
            keys == [
                image_key(&tenant, j.batch_id, j.job_id, 0),
                metadata_key(&tenant, j.batch_id, j.job_id)
            ],
            "{keys:?}"
        );
    }
    w.ensure_running()?;
    ensure!(w.pid() == pid, "the same process");
    let log = w.log_text();
    ensure!(
        log.contains("reconnected to the broker"),
        "{}",
        w.log_tail(30)
    );

    let text = reqwest::get(format!("{}/metrics", w.metrics_addr()?))
        .await?
        .text()
        .await?;
    let value = |name: &str| metric(&text, name, &[]).with_context(|| format!("{name} in\n{text}"));
    ensure!(value("kiln_worker_broker_reconnects_total")? >= 1.0);
    ensure!(value("kiln_worker_broker_connected")? == 1.0);
    // The two renders in flight were delivered again once the connection
    // was back; both second deliveries were recognised, not rendered.
    ensure!(
        value("kiln_worker_redeliveries_recognised_total")? == 2.0,
        "{text}"
    );

    // Cancels reach the worker over the new connection.
    let c = test_job(&tenant, "cancelled after the reconnect", held(400, 50));
    broker.publish_job(&c).await?;
    events
        .wait(LONG, "the job running", |e| {
            e.job_id == c.job_id && running(e, 2)
        })
        .await?;
    broker.cancel(vec![c.job_id]).await?;
    let end = events
        .wait(LONG, "the cancelled job's end", |e| {
            e.job_id == c.job_id && e.kind.is_terminal()
        })
        .await?;
    ensure!(
        matches!(
            end.kind,
            EventKind::Failed {
                kind: FailureKind::Cancelled,
                ..
            }
        ),
        "{end:?}"
    );
    let workers: BTreeSet<&str> = events.seen.iter().map(|e| e.worker.as_str()).collect();
    ensure!(workers.len() == 1, "{workers:?}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Twenty rolling drains while a batch runs, as a rollout or an autoscaler
/// that keeps replacing workers would: each step starts a worker and sends
/// SIGTERM to the oldest, whose drain timeout (1 s) is shorter than some of
/// its renders, so their deliveries go back to the broker. With
/// `max_attempts` 3, no job fails, and every job's objects are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_rolling_drains_while_a_batch_runs_fail_no_job() -> Result<()> {
    const JOBS: usize = 160;
    const DRAINS: usize = 20;
    let mut c = Cluster::start(&[("KILN_MAX_ATTEMPTS", "3")]).await?;
    let mut live = std::collections::VecDeque::new();
    for _ in 0..2 {
        live.push_back(c.start_worker("test-pattern", 2, 1)?);
    }
    let request = BatchRequest {
        engine: "test-pattern".into(),
        prompts: Some((0..JOBS).map(|i| format!("rolling drains {i}")).collect()),
        params: Some(held(10, 100)),
        ..Default::default()
    };
    let batch = c.api.submit(&request).await?;
    let started = Instant::now();
    for _ in 0..DRAINS {
        live.push_back(c.start_worker("test-pattern", 2, 1)?);
        tokio::time::sleep(Duration::from_millis(800)).await;
        let mut old = live.pop_front().expect("two workers live");
        // SIGTERM before the worker listens for it would kill, not drain.
        old.wait_until_ready().await?;
        old.terminate()?;
        let status = old.wait(Duration::from_secs(30)).await?;
        ensure!(status.success(), "a drained worker exits 0: {status}");
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    let counts = loop {
        let b = c.api.batch(batch.id).await?;
        ensure!(
            b.counts.failed == 0 && b.counts.cancelled == 0,
            "{:?}",
            b.counts
        );
        if b.counts.succeeded == JOBS as u64 {
            break b.counts;
        }
        ensure!(Instant::now() < deadline, "{:?}", b.counts);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let jobs = c.api.jobs(batch.id).await?;
    let retried = jobs.iter().filter(|j| j.attempt > 1).count();
    println!(
        "rolling drains: {JOBS} jobs, {DRAINS} drains, {} succeeded, {retried} on a later attempt, in {:.1} s",
        counts.succeeded,
        started.elapsed().as_secs_f64()
    );
    let keys = c.object_keys(batch.id).await?;
    ensure!(keys.len() == 2 * JOBS, "{} objects", keys.len());
    for mut w in live {
        w.ensure_running()?;
        w.terminate()?;
        w.wait(Duration::from_secs(30)).await?;
    }
    c.remove_logs();
    Ok(())
}
