//! Kiln end to end: batches submitted through the dispatcher's API, jobs
//! rendered by real `kiln-worker` processes, results checked in the bucket,
//! with the faults of the worker issue: a worker killed with SIGKILL
//! mid-job, a cancel of a running job, storage stopped during uploads, a
//! SIGTERM drain, and poison messages on the job queue.
//!
//! Needs the local stack (`deploy/local/stack up`) and the workspace
//! binaries (`cargo build --workspace --bins`).

use anyhow::{bail, ensure, Context, Result};
use kiln_protocol::api::{Batch, BatchRequest, Job};
use kiln_protocol::keys::{image_key, metadata_key};
use kiln_protocol::{Engine, JobState, ParamsDto};
use kiln_tests::e2e::{get_object, get_png, list_keys, Broker, PrivateGarage, Worker, WorkerOpts};
use kiln_tests::scale::{metric, Cluster};
use kiln_tests::S3;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(90);

fn worker(c: &Cluster, name: &str) -> WorkerOpts {
    WorkerOpts::new(name, &c.amqp_url, &c.dir)
}

fn batch(name: &str, prompts: &[String], params: ParamsDto) -> BatchRequest {
    BatchRequest {
        engine: "test-pattern".into(),
        name: Some(name.into()),
        params: Some(params),
        prompts: Some(prompts.to_vec()),
        ..Default::default()
    }
}

/// Test-pattern parameters: a `width`×`height` image of `steps` steps of
/// `step_delay_ms` each.
fn pattern(width: u32, height: u32, steps: u32, step_delay_ms: u32) -> ParamsDto {
    ParamsDto {
        width: Some(width),
        height: Some(height),
        steps: Some(steps),
        step_delay_ms: Some(step_delay_ms),
        ..Default::default()
    }
}

/// Submits a batch of one test-pattern job; returns the batch and job ids.
async fn submit_one(
    c: &Cluster,
    name: &str,
    prompt: &str,
    params: ParamsDto,
) -> Result<(Uuid, Uuid)> {
    let created = c
        .api
        .submit(&batch(name, &[prompt.to_string()], params))
        .await?;
    let jobs = c.api.jobs(created.id).await?;
    let job = jobs.first().context("a batch of one job lists none")?;
    Ok((created.id, job.id))
}

/// Polls the batch until every job ended; fails at once on a failure.
async fn wait_done(c: &mut Cluster, id: Uuid, workers: &mut [&mut Worker]) -> Result<Batch> {
    let deadline = Instant::now() + LONG;
    loop {
        c.dispatcher.ensure_running()?;
        for w in workers.iter_mut() {
            w.ensure_running()?;
        }
        let b = c.api.batch(id).await?;
        let counts = &b.counts;
        ensure!(
            counts.failed == 0 && counts.cancelled == 0,
            "counts: {counts:?}"
        );
        if counts.succeeded == b.total {
            return Ok(b);
        }
        ensure!(
            Instant::now() < deadline,
            "batch not done within {LONG:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls one job until `pred` holds.
async fn wait_job(c: &Cluster, id: Uuid, what: &str, pred: impl Fn(&Job) -> bool) -> Result<Job> {
    let deadline = Instant::now() + LONG;
    loop {
        let j = c.api.job(id).await?;
        if pred(&j) {
            return Ok(j);
        }
        ensure!(Instant::now() < deadline, "job {id} never {what}: {j:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The job has reported at least `step` steps of progress.
fn past_step(j: &Job, step: u32) -> bool {
    j.progress.is_some_and(|p| p.step >= step)
}

/// Checks every object of a succeeded job: its PNGs (size, text chunks) and
/// metadata.json, and that nothing else is under the job's prefix.
async fn check_objects(s3: &S3, tenant: &str, job: &Job) -> Result<()> {
    let (batch, id) = (job.batch_id, job.id);
    let results = &job.results;
    ensure!(
        !results.is_empty(),
        "job {id} succeeded without images: {job:?}"
    );
    let mut want = vec![metadata_key(tenant, batch, id)];
    for r in results {
        let key = image_key(tenant, batch, id, r.rank);
        ensure!(r.key == key, "{r:?}");
        let png = get_png(s3, &key).await?;
        ensure!(
            (Some(png.width), Some(png.height)) == (job.params.width, job.params.height),
            "{key}: {}×{}",
            png.width,
            png.height
        );
        ensure!(png.text["prompt"] == job.prompt, "{:?}", png.text);
        ensure!(
            png.text["seed"].parse::<u64>().ok() == Some(r.seed),
            "{:?} vs {r:?}",
            png.text
        );
        ensure!(png.text["engine"] == "test-pattern");
        let params: ParamsDto = serde_json::from_str(&png.text["params"])?;
        ensure!(params.width == job.params.width, "{params:?}");
        ensure!(png.text.contains_key("score"));
        want.push(key);
    }
    want.sort();
    let have = list_keys(s3, &format!("{tenant}/{batch}/{id}/")).await?;
    ensure!(
        have == want,
        "objects of job {id}: {have:?}, expected {want:?}"
    );
    let meta: Value =
        serde_json::from_slice(&get_object(s3, &metadata_key(tenant, batch, id)).await?)?;
    ensure!(
        meta["job_id"] == id.to_string()
            && meta["results"].as_array().map(Vec::len) == Some(results.len()),
        "{meta}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_rendered_by_two_workers_ends_succeeded_with_every_object() -> Result<()> {
    let mut c = Cluster::start(&[]).await?;
    let s3 = c.s3.clone();
    let mut a = Worker::start(&worker(&c, "w-one")).await?;
    let mut b = Worker::start(&worker(&c, "w-two")).await?;
    let prompts: Vec<String> = (0..24)
        .map(|i| format!("fox number {i} | snow:0.5"))
        .collect();
    let params = ParamsDto {
        candidates: Some(3),
        keep: Some(2),
        ..pattern(48, 32, 2, 25)
    };
    let created = c
        .api
        .submit(&batch("two workers", &prompts, params))
        .await?;
    let id = created.id;
    wait_done(&mut c, id, &mut [&mut a, &mut b]).await?;

    let jobs = c.api.jobs(id).await?;
    ensure!(jobs.len() == 24);
    let mut by = BTreeSet::new();
    for j in &jobs {
        ensure!(
            j.state == JobState::Succeeded && j.results.len() == 2,
            "{j:?}"
        );
        by.insert(j.worker.clone().unwrap_or_default());
        check_objects(&s3, &c.tenant, j).await?;
    }
    ensure!(
        by == BTreeSet::from(["w-one".to_string(), "w-two".to_string()]),
        "rendered by {by:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_leaves_it_to_succeed_exactly_once() -> Result<()> {
    let mut c = Cluster::start(&[]).await?;
    let s3 = c.s3.clone();
    let mut a = Worker::start(&worker(&c, "w-victim-or-not-a")).await?;
    let mut b = Worker::start(&worker(&c, "w-victim-or-not-b")).await?;
    let params = pattern(32, 32, 40, 50);
    let (id, job_id) = submit_one(&c, "kill -9", "crash test", params).await?;
    let running = wait_job(&c, job_id, "ran", |j| {
        j.state == JobState::Running && past_step(j, 2)
    })
    .await?;
    let who = running.worker.context("worker")?;
    let (victim, survivor) = if who == a.name {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    victim.kill9().await?;

    let b_ = wait_done(&mut c, id, &mut [survivor]).await?;
    ensure!(
        b_.counts.succeeded == 1 && b_.counts.failed == 0,
        "{:?}",
        b_.counts
    );
    // Let any late or duplicate event arrive before judging "exactly once".
    tokio::time::sleep(Duration::from_secs(2)).await;
    let j = c.api.job(job_id).await?;
    ensure!(
        j.state == JobState::Succeeded && j.worker.as_deref() == Some(survivor.name.as_str()),
        "{j:?}"
    );
    ensure!(j.results.len() == 1, "{j:?}");
    check_objects(&s3, &c.tenant, &j).await?;
    let b_ = c.api.batch(id).await?;
    ensure!(b_.counts.succeeded == 1 && b_.total == 1, "{b_:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_stops_it_within_a_few_steps() -> Result<()> {
    let c = Cluster::start(&[]).await?;
    let s3 = c.s3.clone();
    let mut w = Worker::start(&worker(&c, "w-cancel")).await?;
    // 400 steps of 25 ms: 10 s if nobody stops it.
    let params = pattern(32, 32, 400, 25);
    let (id, job_id) = submit_one(&c, "cancel", "stop me", params).await?;
    let running = wait_job(&c, job_id, "ran", |j| past_step(j, 3)).await?;
    let step_before = running.progress.map_or(0, |p| p.step);

    let t0 = Instant::now();
    let r = c.api.cancel_job(job_id).await?;
    ensure!(r.cancelled, "{r:?}");
    let metrics = format!("{}/metrics", w.metrics_addr()?);
    let stopped = loop {
        let text = reqwest::get(&metrics).await?.text().await?;
        let cancelled =
            metric(&text, "kiln_worker_jobs_total", &[("outcome", "cancelled")]).unwrap_or(0.0);
        if cancelled >= 1.0 && metric(&text, "kiln_worker_slots_busy", &[]) == Some(0.0) {
            break t0.elapsed();
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "the worker did not stop the job:\n{}",
            w.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let log = w.log_text();
    let step: u32 = log
        .split("cancelled at step ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .context("no 'cancelled at step' in the worker log")?
        .parse()?;
    println!("cancel: running at step {step_before}, stopped at step {step} after {stopped:?}");
    ensure!(
        stopped < Duration::from_secs(3),
        "stopping took {stopped:?}"
    );
    // 25 ms steps: a few steps pass between reading the progress and the cancel.
    ensure!(
        step < step_before + 60 && step < 400,
        "stopped at step {step} (was at {step_before})"
    );
    let j = c.api.job(job_id).await?;
    ensure!(j.state == JobState::Cancelled, "{j:?}");
    ensure!(list_keys(&s3, &format!("{}/{id}/{job_id}/", c.tenant))
        .await?
        .is_empty());
    w.ensure_running()?;
    Ok(())
}

/// The ids of the jobs whose uploads the worker logged as failed and retried.
fn upload_retried(log: &str, jobs: &[Job]) -> BTreeSet<Uuid> {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("upload failed; retrying"))
        .collect();
    jobs.iter()
        .map(|j| j.id)
        .filter(|id| {
            let id = id.to_string();
            lines.iter().any(|l| l.contains(&id))
        })
        .collect()
}

/// Storage stops while jobs are uploading: the worker's own upload retries
/// carry them through the outage, so each job succeeds on its first attempt
/// (the dispatcher's retry, on here, is never needed) with its image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_stopped_during_uploads_is_ridden_out_by_the_workers_upload_retries() -> Result<()>
{
    let dir = std::env::temp_dir().join(format!("kiln-garage-{}", Uuid::new_v4().simple()));
    let mut garage = PrivateGarage::start(&dir).await?;
    let s3 = garage.s3.clone();
    let mut c = Cluster::start(&[
        ("KILN_S3_ENDPOINT", s3.endpoint.as_str()),
        ("KILN_RETRY_BASE", "1s"),
    ])
    .await?;
    let mut o = worker(&c, "w-outage");
    o.slots = 2;
    // Backoffs of at least 0.25, 0.5, 1, 2, 4, 4, 4 s: an upload keeps
    // trying for 15 s or more, longer than the outage below.
    o.args.extend(["--s3-attempts".into(), "8".into()]);
    let mut w = Worker::start(&o).await?;

    let prompts: Vec<String> = (0..8).map(|i| format!("outage {i}")).collect();
    let params = pattern(32, 32, 5, 100);
    let created = c.api.submit(&batch("outage", &prompts, params)).await?;
    let id = created.id;
    let deadline = Instant::now() + LONG;
    while c.api.batch(id).await?.counts.running < 1 {
        ensure!(Instant::now() < deadline, "nothing started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    garage.pause()?;
    let jobs = c.api.jobs(id).await?;
    while upload_retried(&w.log_text(), &jobs).is_empty() {
        ensure!(
            Instant::now() < deadline,
            "no upload retried:\n{}",
            w.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Mid-outage: the jobs caught uploading are still running their first
    // attempt on the worker; none was failed or handed back.
    let during = c.api.batch(id).await?;
    let caught = upload_retried(&w.log_text(), &jobs);
    for j in c.api.jobs(id).await? {
        if caught.contains(&j.id) {
            ensure!(
                j.state == JobState::Running && j.attempt == 1,
                "a job retrying its upload left its first attempt: {j:?}"
            );
        }
    }
    ensure!(
        during.counts.failed == 0 && during.counts.running >= 1,
        "during the outage: {:?}",
        during.counts
    );
    garage.resume().await?;
    let done = wait_done(&mut c, id, &mut [&mut w]).await?;
    println!(
        "during the outage: {:?}; after: {:?}",
        during.counts, done.counts
    );
    let jobs = c.api.jobs(id).await?;
    ensure!(jobs.len() == prompts.len(), "{jobs:?}");
    let retried = upload_retried(&w.log_text(), &jobs);
    ensure!(
        !retried.is_empty() && caught.is_subset(&retried),
        "retried uploads: {retried:?}, caught: {caught:?}"
    );
    for j in &jobs {
        ensure!(
            j.state == JobState::Succeeded && j.attempt == 1,
            "every job succeeds on its first attempt: {j:?}"
        );
        ensure!(
            j.results.len() == 1 && j.results.iter().all(|r| r.key.ends_with(".png")),
            "a job without its image: {j:?}"
        );
        // Every image and metadata.json is in the bucket, and nothing else.
        check_objects(&s3, &c.tenant, j).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_running_job_and_exits_0() -> Result<()> {
    let mut c = Cluster::start(&[]).await?;
    let s3 = c.s3.clone();
    let mut w = Worker::start(&worker(&c, "w-drain")).await?;
    let params = pattern(32, 32, 30, 50);
    let (id, job_id) = submit_one(&c, "drain", "finish first", params).await?;
    wait_job(&c, job_id, "ran", |j| past_step(j, 2)).await?;
    w.terminate()?;
    let status = w.wait(Duration::from_secs(30)).await?;
    ensure!(
        status.success(),
        "exit status {status}:\n{}",
        w.log_tail(20)
    );
    let j = wait_job(&c, job_id, "succeeded", |j| {
        j.state != JobState::Running && j.state != JobState::Queued
    })
    .await?;
    ensure!(
        j.state == JobState::Succeeded && j.worker.as_deref() == Some("w-drain"),
        "{j:?}"
    );
    check_objects(&s3, &c.tenant, &j).await?;
    let _ = wait_done(&mut c, id, &mut []).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_reported_while_the_worker_keeps_running(
) -> Result<()> {
    let mut c = Cluster::start(&[]).await?;
    let mut w = Worker::start(&worker(&c, "w-poison")).await?;
    let broker = Broker::connect(&c.amqp_url).await?;
    let v2 = json!({"v": 2, "job_id": Uuid::new_v4(), "note": "a message from a newer dispatcher"});
    broker
        .publish_raw(Engine::TestPattern, b"\x00\x01 not json")
        .await?;
    broker
        .publish_raw(Engine::TestPattern, &serde_json::to_vec(&v2)?)
        .await?;

    let deadline = Instant::now() + LONG;
    loop {
        let text = c.api.metrics().await?;
        let n = metric(&text, "kiln_dead_letters_undecodable_total", &[]).unwrap_or(0.0);
        if n >= 2.0 {
            ensure!(n == 2.0, "{n} undecodable dead letters");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the dispatcher never saw the dead letters"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wm = reqwest::get(format!("{}/metrics", w.metrics_addr()?))
        .await?
        .text()
        .await?;
    ensure!(
        metric(&wm, "kiln_worker_jobs_total", &[("outcome", "rejected")]) == Some(2.0),
        "{wm}"
    );

    let params = ParamsDto {
        width: Some(16),
        height: Some(16),
        ..Default::default()
    };
    let created = c
        .api
        .submit(&batch("after poison", &["still here".to_string()], params))
        .await?;
    wait_done(&mut c, created.id, &mut [&mut w]).await?;
    if w.try_exited()?.is_some() {
        bail!("the worker stopped");
    }
    Ok(())
}
