//! Kiln end to end: batches submitted through the dispatcher's API, jobs
//! rendered by real `kiln-worker` processes, results checked in the bucket,
//! with the faults of the worker issue: a worker killed with SIGKILL
//! mid-job, a cancel of a running job, storage stopped during uploads, a
//! SIGTERM drain, and poison messages on the job queue.
//!
//! Needs the local stack (`deploy/local/stack up`) and the workspace
//! binaries (`cargo build --workspace --bins`).

use anyhow::{bail, ensure, Context, Result};
use kiln_protocol::keys::{image_key, metadata_key};
use kiln_protocol::Engine;
use kiln_tests::e2e::{get_object, get_png, list_keys, Broker, PrivateGarage, Worker, WorkerOpts};
use kiln_tests::scale::{metric, Cluster};
use kiln_tests::S3;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(90);

fn worker(c: &Cluster, name: &str, s3: &S3) -> WorkerOpts {
    WorkerOpts::new(name, &c.amqp_url, s3, &c.dir)
}

fn batch(name: &str, prompts: &[String], params: Value) -> Value {
    json!({"engine": "test-pattern", "name": name, "params": params, "prompts": prompts})
}

/// Submits a batch of one test-pattern job; returns the batch and job ids.
async fn submit_one(
    c: &Cluster,
    name: &str,
    prompt: &str,
    params: Value,
) -> Result<(String, String)> {
    let created = c
        .api
        .submit(&batch(name, &[prompt.to_string()], params))
        .await?;
    let id = created["id"].as_str().context("batch id")?.to_string();
    let job_id = c.api.jobs(&id).await?[0]["id"]
        .as_str()
        .context("job id")?
        .to_string();
    Ok((id, job_id))
}

/// Polls the batch until every job ended; fails at once on a failure.
async fn wait_done(c: &mut Cluster, id: &str, workers: &mut [&mut Worker]) -> Result<Value> {
    let deadline = Instant::now() + LONG;
    loop {
        c.dispatcher.ensure_running()?;
        for w in workers.iter_mut() {
            w.ensure_running()?;
        }
        let b = c.api.batch(id).await?;
        let counts = &b["counts"];
        ensure!(
            counts["failed"] == 0 && counts["cancelled"] == 0,
            "counts: {counts}"
        );
        if counts["succeeded"] == b["total"] {
            return Ok(b);
        }
        ensure!(
            Instant::now() < deadline,
            "batch not done within {LONG:?}: {counts}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls one job until `pred` holds.
async fn wait_job(
    c: &Cluster,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + LONG;
    loop {
        let j = c.api.json_get(&format!("/v1/jobs/{id}")).await?;
        if pred(&j) {
            return Ok(j);
        }
        ensure!(Instant::now() < deadline, "job {id} never {what}: {j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

trait ApiExt {
    async fn json_get(&self, path: &str) -> Result<Value>;
    async fn json_post(&self, path: &str) -> Result<Value>;
}

impl ApiExt for kiln_tests::scale::Api {
    async fn json_get(&self, path: &str) -> Result<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let (status, body) = (r.status(), r.text().await?);
        ensure!(status.is_success(), "GET {path}: {status}: {body}");
        Ok(serde_json::from_str(&body)?)
    }
    async fn json_post(&self, path: &str) -> Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let (status, body) = (r.status(), r.text().await?);
        ensure!(status.is_success(), "POST {path}: {status}: {body}");
        Ok(serde_json::from_str(&body)?)
    }
}

/// Checks every object of a succeeded job: its PNGs (size, text chunks) and
/// metadata.json, and that nothing else is under the job's prefix.
async fn check_objects(s3: &S3, tenant: &str, job: &Value) -> Result<()> {
    let batch = Uuid::parse_str(job["batch_id"].as_str().context("batch_id")?)?;
    let id = Uuid::parse_str(job["id"].as_str().context("id")?)?;
    let results = job["results"].as_array().context("results")?;
    let mut want = vec![metadata_key(tenant, batch, id)];
    for r in results {
        let rank = r["rank"].as_u64().context("rank")? as u32;
        let key = image_key(tenant, batch, id, rank);
        ensure!(r["key"] == key.as_str(), "{r}");
        let png = get_png(s3, &key).await?;
        ensure!(
            (png.width as u64, png.height as u64)
                == (
                    job["params"]["width"].as_u64().unwrap_or(0),
                    job["params"]["height"].as_u64().unwrap_or(0)
                ),
            "{key}: {}×{}",
            png.width,
            png.height
        );
        ensure!(
            png.text["prompt"] == job["prompt"].as_str().unwrap_or(""),
            "{:?}",
            png.text
        );
        ensure!(
            png.text["seed"].parse::<u64>().ok() == r["seed"].as_u64(),
            "{:?} vs {r}",
            png.text
        );
        ensure!(png.text["engine"] == "test-pattern");
        let params: Value = serde_json::from_str(&png.text["params"])?;
        ensure!(params["width"] == job["params"]["width"], "{params}");
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
    let mut a = Worker::start(&worker(&c, "w-one", &s3)).await?;
    let mut b = Worker::start(&worker(&c, "w-two", &s3)).await?;
    let prompts: Vec<String> = (0..24)
        .map(|i| format!("fox number {i} | snow:0.5"))
        .collect();
    let params = json!({"width": 48, "height": 32, "steps": 2, "step_delay_ms": 25, "candidates": 3, "keep": 2});
    let created = c
        .api
        .submit(&batch("two workers", &prompts, params))
        .await?;
    let id = created["id"].as_str().context("batch id")?.to_string();
    wait_done(&mut c, &id, &mut [&mut a, &mut b]).await?;

    let jobs = c.api.jobs(&id).await?;
    ensure!(jobs.len() == 24);
    let mut by = BTreeSet::new();
    for j in &jobs {
        ensure!(
            j["state"] == "succeeded" && j["results"].as_array().map(Vec::len) == Some(2),
            "{j}"
        );
        by.insert(j["worker"].as_str().unwrap_or("").to_string());
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
    let mut a = Worker::start(&worker(&c, "w-victim-or-not-a", &s3)).await?;
    let mut b = Worker::start(&worker(&c, "w-victim-or-not-b", &s3)).await?;
    let params = json!({"width": 32, "height": 32, "steps": 40, "step_delay_ms": 50});
    let (id, job_id) = submit_one(&c, "kill -9", "crash test", params).await?;
    let running = wait_job(&c, &job_id, "ran", |j| {
        j["state"] == "running" && j["progress"]["step"].as_i64() >= Some(2)
    })
    .await?;
    let who = running["worker"].as_str().context("worker")?.to_string();
    let (victim, survivor) = if who == a.name {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    victim.kill9().await?;

    let b_ = wait_done(&mut c, &id, &mut [survivor]).await?;
    ensure!(
        b_["counts"]["succeeded"] == 1 && b_["counts"]["failed"] == 0,
        "{}",
        b_["counts"]
    );
    // Let any late or duplicate event arrive before judging "exactly once".
    tokio::time::sleep(Duration::from_secs(2)).await;
    let j = c.api.json_get(&format!("/v1/jobs/{job_id}")).await?;
    ensure!(
        j["state"] == "succeeded" && j["worker"] == survivor.name.as_str(),
        "{j}"
    );
    ensure!(j["results"].as_array().map(Vec::len) == Some(1), "{j}");
    check_objects(&s3, &c.tenant, &j).await?;
    let b_ = c.api.batch(&id).await?;
    ensure!(b_["counts"]["succeeded"] == 1 && b_["total"] == 1, "{b_}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_stops_it_within_a_few_steps() -> Result<()> {
    let c = Cluster::start(&[]).await?;
    let s3 = c.s3.clone();
    let mut w = Worker::start(&worker(&c, "w-cancel", &s3)).await?;
    // 400 steps of 25 ms: 10 s if nobody stops it.
    let params = json!({"width": 32, "height": 32, "steps": 400, "step_delay_ms": 25});
    let (id, job_id) = submit_one(&c, "cancel", "stop me", params).await?;
    let running = wait_job(&c, &job_id, "ran", |j| {
        j["progress"]["step"].as_i64() >= Some(3)
    })
    .await?;
    let step_before = running["progress"]["step"].as_i64().unwrap_or(0);

    let t0 = Instant::now();
    let r = c
        .api
        .json_post(&format!("/v1/jobs/{job_id}/cancel"))
        .await?;
    ensure!(r["cancelled"] == true, "{r}");
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
    let step: i64 = log
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
    let j = c.api.json_get(&format!("/v1/jobs/{job_id}")).await?;
    ensure!(j["state"] == "cancelled", "{j}");
    let batch_id = Uuid::parse_str(&id)?;
    ensure!(
        list_keys(&s3, &format!("{}/{batch_id}/{job_id}/", c.tenant))
            .await?
            .is_empty()
    );
    w.ensure_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_stopped_during_uploads_then_started_ends_every_job_succeeded() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("kiln-garage-{}", Uuid::new_v4().simple()));
    let mut garage = PrivateGarage::start(&dir).await?;
    let s3 = garage.s3.clone();
    let mut c = Cluster::start(&[
        ("KILN_S3_ENDPOINT", s3.endpoint.as_str()),
        ("KILN_RETRY_BASE", "1s"),
    ])
    .await?;
    let mut o = worker(&c, "w-outage", &s3);
    o.slots = 2;
    o.args.extend(["--s3-attempts".into(), "8".into()]);
    let mut w = Worker::start(&o).await?;

    let prompts: Vec<String> = (0..8).map(|i| format!("outage {i}")).collect();
    let params = json!({"width": 32, "height": 32, "steps": 5, "step_delay_ms": 100});
    let created = c.api.submit(&batch("outage", &prompts, params)).await?;
    let id = created["id"].as_str().context("batch id")?.to_string();
    let deadline = Instant::now() + LONG;
    while c.api.batch(&id).await?["counts"]["running"].as_i64() < Some(1) {
        ensure!(Instant::now() < deadline, "nothing started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    garage.pause()?;
    while !w.log_text().contains("upload failed; retrying") {
        ensure!(
            Instant::now() < deadline,
            "no upload retried:\n{}",
            w.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = c.api.batch(&id).await?;
    garage.resume().await?;
    let done = wait_done(&mut c, &id, &mut [&mut w]).await?;
    println!(
        "during the outage: {}; after: {}",
        during["counts"], done["counts"]
    );
    for j in c.api.jobs(&id).await? {
        check_objects(&s3, &c.tenant, &j).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_running_job_and_exits_0() -> Result<()> {
    let mut c = Cluster::start(&[]).await?;
    let s3 = c.s3.clone();
    let mut w = Worker::start(&worker(&c, "w-drain", &s3)).await?;
    let params = json!({"width": 32, "height": 32, "steps": 30, "step_delay_ms": 50});
    let (id, job_id) = submit_one(&c, "drain", "finish first", params).await?;
    wait_job(&c, &job_id, "ran", |j| {
        j["progress"]["step"].as_i64() >= Some(2)
    })
    .await?;
    w.terminate()?;
    let status = w.wait(Duration::from_secs(30)).await?;
    ensure!(
        status.success(),
        "exit status {status}:\n{}",
        w.log_tail(20)
    );
    let j = wait_job(&c, &job_id, "succeeded", |j| {
        j["state"] != "running" && j["state"] != "queued"
    })
    .await?;
    ensure!(j["state"] == "succeeded" && j["worker"] == "w-drain", "{j}");
    check_objects(&s3, &c.tenant, &j).await?;
    let _ = wait_done(&mut c, &id, &mut []).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_reported_while_the_worker_keeps_running(
) -> Result<()> {
    let mut c = Cluster::start(&[]).await?;
    let s3 = c.s3.clone();
    let mut w = Worker::start(&worker(&c, "w-poison", &s3)).await?;
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

    let params = json!({"width": 16, "height": 16});
    let created = c
        .api
        .submit(&batch("after poison", &["still here".to_string()], params))
        .await?;
    let id = created["id"].as_str().context("batch id")?.to_string();
    wait_done(&mut c, &id, &mut [&mut w]).await?;
    if w.try_exited()?.is_some() {
        bail!("the worker stopped");
    }
    Ok(())
}
