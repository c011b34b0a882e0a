//! Scaling out on one machine: workers are added while a batch runs and
//! some are stopped with SIGTERM, as an autoscaler or a rollout would; every
//! job still ends `succeeded` exactly once with its objects in the bucket.
//! And the backlog figure that the autoscaler reads (`kiln_backlog`) rises
//! on submit and falls as jobs finish, while the broker's queue holds only
//! the relay's window.
//!
//! Needs the local stack (`deploy/local/stack up`) and the workspace
//! binaries (`cargo build --workspace --bins`).

use anyhow::{ensure, Result};
use kiln_protocol::api::{BatchRequest, Counts};
use kiln_protocol::keys::{image_key, metadata_key};
use kiln_protocol::topology::job_queue;
use kiln_protocol::{Engine, JobState, ParamsDto};
use kiln_tests::scale::{metric, Cluster, Process};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Both tests measure rates or watch a gauge on a small shared machine: one
/// at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ENGINE: &str = "test-pattern";
const JOBS: u64 = 2000;
/// Each job holds its worker slot for STEPS × STEP_DELAY_MS, as a GPU render
/// would, so the job rate is bounded by the number of workers rather than by
/// this machine's CPUs.
const STEPS: u32 = 2;
const STEP_DELAY_MS: u32 = 50;
const SLOTS: u32 = 1;
const DRAIN_TIMEOUT_S: u32 = 30;
/// Jobs the dispatcher keeps in the broker per engine; the rest wait in
/// PostgreSQL.
const RELAY_WINDOW: &str = "200";

/// The batch's succeeded count at an instant.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    done: u64,
}

/// Jobs that succeeded from one mark to the next.
fn jobs_between(from: Mark, to: Mark) -> f64 {
    to.done as f64 - from.done as f64
}

fn rate(from: Mark, to: Mark) -> f64 {
    jobs_between(from, to) / to.at.duration_since(from.at).as_secs_f64()
}

fn phase(name: &str, from: Mark, to: Mark) -> f64 {
    let r = rate(from, to);
    println!(
        "{name}: {} jobs in {:.1} s = {r:.1} jobs/s",
        jobs_between(from, to),
        to.at.duration_since(from.at).as_secs_f64()
    );
    r
}

/// Polls the batch until `target` jobs succeeded. Fails at once if a job
/// failed or a process that should be running has exited.
async fn wait_for(
    c: &mut Cluster,
    live: &mut [&mut Process],
    batch: Uuid,
    target: u64,
    limit: Duration,
) -> Result<Mark> {
    let deadline = Instant::now() + limit;
    loop {
        c.dispatcher.ensure_running()?;
        for w in live.iter_mut() {
            w.ensure_running()?;
        }
        let b = c.api.batch(batch).await?;
        let now = Instant::now();
        ensure!(
            b.counts.failed == 0 && b.counts.cancelled == 0,
            "jobs ended other than succeeded: {:?}",
            b.counts
        );
        let done = b.counts.succeeded;
        if done >= target {
            return Ok(Mark { at: now, done });
        }
        ensure!(
            now < deadline,
            "{done} of {target} jobs succeeded after {limit:?}: {:?}",
            b.counts
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn batch_request(name: &str, jobs: u64, step_delay_ms: u32) -> BatchRequest {
    let prompts: Vec<String> = (0..jobs).map(|i| format!("{name} prompt {i}")).collect();
    BatchRequest {
        engine: ENGINE.into(),
        name: Some(name.into()),
        params: Some(ParamsDto {
            width: Some(64),
            height: Some(64),
            steps: Some(STEPS),
            step_delay_ms: Some(step_delay_ms),
            ..Default::default()
        }),
        prompts: Some(prompts),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_and_in_while_a_batch_runs_keeps_every_job_exactly_once() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(&[("KILN_RELAY_WINDOW", RELAY_WINDOW)]).await?;
    println!("logs in {}", c.dir.display());

    ensure!(
        c.api.backlog(ENGINE).await? == 0.0,
        "a fresh database has a backlog"
    );
    let batch = c
        .api
        .submit(&batch_request("scale-out", JOBS, STEP_DELAY_MS))
        .await?;
    let id = batch.id;
    ensure!(batch.total == JOBS, "batch total: {batch:?}");
    let backlog = c.api.backlog(ENGINE).await?;
    ensure!(
        backlog == JOBS as f64,
        "kiln_backlog after submitting {JOBS} jobs is {backlog}"
    );

    // Phase 1: one worker. Measure from the 20th job on, past its start-up.
    let mut w1 = c.start_worker(ENGINE, SLOTS, DRAIN_TIMEOUT_S)?;
    let m0 = wait_for(&mut c, &mut [&mut w1], id, 20, Duration::from_secs(120)).await?;
    let m1 = wait_for(&mut c, &mut [&mut w1], id, 220, Duration::from_secs(120)).await?;
    let backlog = c.api.backlog(ENGINE).await?;
    ensure!(
        backlog <= JOBS as f64 - m1.done as f64 && backlog > 0.0,
        "kiln_backlog is {backlog} with {} of {JOBS} jobs done",
        m1.done
    );

    // Phase 2: three more workers. The first 80 jobs after they start cover
    // their start-up; the rate is measured after that.
    let mut w2 = c.start_worker(ENGINE, SLOTS, DRAIN_TIMEOUT_S)?;
    let mut w3 = c.start_worker(ENGINE, SLOTS, DRAIN_TIMEOUT_S)?;
    let mut w4 = c.start_worker(ENGINE, SLOTS, DRAIN_TIMEOUT_S)?;
    let limit = Duration::from_secs(120);
    let m2 = wait_for(
        &mut c,
        &mut [&mut w1, &mut w2, &mut w3, &mut w4],
        id,
        m1.done + 80,
        limit,
    )
    .await?;
    let m3 = wait_for(
        &mut c,
        &mut [&mut w1, &mut w2, &mut w3, &mut w4],
        id,
        1300,
        limit,
    )
    .await?;

    // Phase 3: two workers get SIGTERM mid-run; each drains and exits 0.
    w3.terminate()?;
    w4.terminate()?;
    let drain = Duration::from_secs(DRAIN_TIMEOUT_S as u64 + 15);
    let s3 = w3.wait(drain).await?;
    let s4 = w4.wait(drain).await?;
    ensure!(
        s3.success() && s4.success(),
        "drained workers exited with {s3} and {s4}"
    );
    let m4 = Mark {
        at: Instant::now(),
        done: c.api.batch(id).await?.counts.succeeded,
    };
    let m5 = wait_for(
        &mut c,
        &mut [&mut w1, &mut w2],
        id,
        JOBS,
        Duration::from_secs(240),
    )
    .await?;

    println!(
        "scale-out: {JOBS} {ENGINE} jobs of {STEPS} × {STEP_DELAY_MS} ms, {SLOTS} slot per worker, relay window {RELAY_WINDOW}"
    );
    let r1 = phase("phase 1, 1 worker", m0, m1);
    let r2 = phase("phase 2, 4 workers", m2, m3);
    let r3 = phase("phase 3, 2 workers (2 stopped with SIGTERM)", m4, m5);
    ensure!(
        r2 > 1.5 * r1,
        "the job rate did not rise with 4 workers: {r1:.1} → {r2:.1} jobs/s"
    );
    ensure!(r3 > 0.0, "no job finished after two workers stopped");

    // Every job ends succeeded exactly once.
    let b = c.api.batch(id).await?;
    ensure!(b.state == JobState::Succeeded, "batch: {b:?}");
    ensure!(
        b.counts
            == Counts {
                queued: 0,
                running: 0,
                succeeded: JOBS,
                failed: 0,
                cancelled: 0
            },
        "counts: {:?}",
        b.counts
    );
    let jobs = c.api.jobs(id).await?;
    ensure!(
        jobs.len() as u64 == JOBS,
        "{} jobs listed for a batch of {JOBS}",
        jobs.len()
    );
    let mut expected = HashSet::new();
    let mut ids = HashSet::new();
    let mut by_worker: BTreeMap<String, usize> = BTreeMap::new();
    let mut retried = 0;
    for j in &jobs {
        let job = j.id;
        ensure!(ids.insert(job), "job {job} listed twice");
        ensure!(j.state == JobState::Succeeded, "job {job}: {j:?}");
        let (attempt, max) = (j.attempt, j.max_attempts);
        ensure!(
            (1..=max).contains(&attempt),
            "job {job}: attempt {attempt} of {max}"
        );
        if attempt > 1 {
            retried += 1;
        }
        let results = &j.results;
        ensure!(
            results.len() == 1,
            "job {job} has {} results, expected 1: {j:?}",
            results.len()
        );
        let key = image_key(&c.tenant, id, job, 0);
        ensure!(
            results[0].key == key,
            "job {job}: result key {} is not {key}",
            results[0].key
        );
        expected.insert(key);
        expected.insert(metadata_key(&c.tenant, id, job));
        *by_worker
            .entry(j.worker.as_deref().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    println!("jobs per worker: {by_worker:?}; retried after a lost attempt: {retried}");
    for w in [&w1, &w2, &w3, &w4] {
        ensure!(
            by_worker.get(&w.name).is_some_and(|n| *n > 0),
            "{} rendered no job: {by_worker:?}",
            w.name
        );
    }

    // Succeeded once in the dispatcher's figures, too.
    let text = c.api.metrics().await?;
    let labels = [("engine", ENGINE), ("state", JobState::Succeeded.as_str())];
    ensure!(
        metric(&text, "kiln_jobs", &labels) == Some(JOBS as f64),
        "kiln_jobs{{succeeded}} is {:?}",
        metric(&text, "kiln_jobs", &labels)
    );
    ensure!(
        c.api.backlog(ENGINE).await? == 0.0,
        "backlog left after the batch finished"
    );

    // Exactly one image and one metadata file per job: none missing, none extra.
    let keys = c.object_keys(id).await?;
    let found: HashSet<String> = keys.iter().cloned().collect();
    ensure!(found.len() == keys.len(), "the bucket listed a key twice");
    let missing: Vec<_> = expected.difference(&found).take(5).collect();
    let extra: Vec<_> = found.difference(&expected).take(5).collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "{} objects for {} expected; missing e.g. {missing:?}; unexpected e.g. {extra:?}",
        found.len(),
        expected.len()
    );
    println!(
        "{} objects in the bucket, one image and one metadata file per job",
        found.len()
    );

    // The remaining workers drain an idle queue and exit 0.
    for w in [&mut w1, &mut w2] {
        w.terminate()?;
        let s = w.wait(drain).await?;
        ensure!(s.success(), "{} exited with {s}", w.name);
    }
    c.remove_logs();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_metric_rises_on_submit_and_falls_as_jobs_finish() -> Result<()> {
    let _serial = SERIAL.lock().await;
    const N: u64 = 300;
    const WINDOW: u32 = 50;
    let mut c = Cluster::start(&[("KILN_RELAY_WINDOW", &WINDOW.to_string())]).await?;
    println!("logs in {}", c.dir.display());

    ensure!(
        c.api.backlog(ENGINE).await? == 0.0,
        "a fresh database has a backlog"
    );
    let batch = c.api.submit(&batch_request("backlog", N, 20)).await?;
    let id = batch.id;
    let backlog = c.api.backlog(ENGINE).await?;
    ensure!(
        backlog == N as f64,
        "kiln_backlog is {backlog} right after submitting {N} jobs"
    );

    // With no worker, the broker holds only the relay's window: its queue
    // length under-counts the backlog, which is why autoscaling reads
    // kiln_backlog.
    let queue = job_queue(Engine::TestPattern);
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        c.dispatcher.ensure_running()?;
        match c.queue_depth(&queue).await {
            Ok(n) if n > 0 => break n,
            _ if Instant::now() > deadline => {
                anyhow::bail!("the relay published nothing to {queue} in 30 s")
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    ensure!(
        ready <= WINDOW,
        "{queue} holds {ready} messages, more than the relay window of {WINDOW}"
    );
    println!("before any worker: kiln_backlog {backlog}, {queue} ready messages {ready}");

    let mut worker = c.start_worker(ENGINE, 2, DRAIN_TIMEOUT_S)?;
    let mut samples = vec![backlog];
    let deadline = Instant::now() + Duration::from_secs(120);
    while *samples.last().unwrap() > 0.0 {
        ensure!(
            Instant::now() < deadline,
            "backlog still {:?} after 120 s",
            samples.last()
        );
        worker.ensure_running()?;
        c.dispatcher.ensure_running()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        samples.push(c.api.backlog(ENGINE).await?);
    }
    // Nothing was submitted meanwhile, so the backlog never grows; it falls
    // through intermediate values as jobs finish (queued → running keeps it).
    for pair in samples.windows(2) {
        ensure!(
            pair[1] <= pair[0],
            "kiln_backlog rose from {} to {} with no submit",
            pair[0],
            pair[1]
        );
    }
    let between = samples
        .iter()
        .filter(|v| **v > 0.0 && **v < N as f64)
        .count();
    ensure!(
        between >= 3,
        "kiln_backlog jumped to 0 without falling gradually: {samples:?}"
    );
    println!(
        "kiln_backlog fell from {N} to 0 over {} samples",
        samples.len()
    );
    let b = c.api.batch(id).await?;
    ensure!(
        b.counts.succeeded == N,
        "batch after the backlog reached 0: {b:?}"
    );
    worker.terminate()?;
    let s = worker
        .wait(Duration::from_secs(DRAIN_TIMEOUT_S as u64 + 15))
        .await?;
    ensure!(s.success(), "the worker exited with {s}");
    c.remove_logs();
    Ok(())
}
