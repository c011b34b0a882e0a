//! `kiln-worker run` against the real RabbitMQ and Garage, with the test
//! standing in for the dispatcher: it publishes job messages into a fresh
//! virtual host, reads the workers' events, and checks the bucket.
//!
//! Needs the local stack (`deploy/local/stack up`) and the workspace
//! binaries (`cargo build --workspace --bins`).

use anyhow::{ensure, Context, Result};
use kiln_protocol::keys::{image_key, metadata_key};
use kiln_protocol::message::ControlCommand;
use kiln_protocol::{ControlMessage, Engine, Event, EventKind, FailureKind, JobMessage, ParamsDto};
use kiln_tests::bin;
use kiln_tests::e2e::{
    get_object, get_png, held, init_tiny_models, job_for, list_keys, terminal, PrivateGarage, Rig,
    Worker,
};
use std::time::{Duration, Instant};
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);

fn is(job: Uuid, name: &'static str) -> impl Fn(&Event) -> bool {
    move |e| e.job_id == job && e.kind.name() == name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renders_jobs_into_pngs_with_text_chunks_and_metadata() -> Result<()> {
    let rig = Rig::new().await?;
    let mut events = rig.broker.events().await?;
    let mut o = rig.opts("w-render");
    o.slots = 2;
    let mut w = Worker::start(&o).await?;

    let jobs = vec![
        rig.job(
            "a red fox",
            ParamsDto {
                width: Some(64),
                height: Some(32),
                seed: Some(11),
                ..Default::default()
            },
        ),
        rig.job(
            "café ☕ at dawn",
            ParamsDto {
                width: Some(48),
                height: Some(80),
                steps: Some(3),
                ..Default::default()
            },
        ),
        rig.job(
            "three candidates",
            ParamsDto {
                width: Some(16),
                height: Some(16),
                candidates: Some(3),
                keep: Some(2),
                ..Default::default()
            },
        ),
    ];
    for j in &jobs {
        rig.broker.publish_job(j).await?;
    }
    for j in &jobs {
        let p = j.spec.params();
        let done = events.wait(LONG, "succeeded", terminal(j.job_id)).await?;
        let EventKind::Succeeded { results } = &done.kind else {
            anyhow::bail!("job {} ended {:?}", j.job_id, done.kind);
        };
        ensure!(done.worker == "w-render" && done.attempt == 1, "{done:?}");
        ensure!(results.len() == p.keep() as usize, "{results:?}");
        let seen = events.of(j.job_id);
        ensure!(
            seen[0].kind == EventKind::Started,
            "first event: {:?}",
            seen[0]
        );
        ensure!(seen.iter().filter(|e| e.kind.is_terminal()).count() == 1);

        let mut want_keys = vec![metadata_key(&rig.tenant, j.batch_id, j.job_id)];
        for (i, r) in results.iter().enumerate() {
            ensure!(r.rank == i as u32 && r.score.is_none(), "{r:?}");
            ensure!(r.key == image_key(&rig.tenant, j.batch_id, j.job_id, r.rank));
            ensure!((r.width, r.height) == (p.width(), p.height()));
            ensure!(
                r.seed == p.seed() + i as u64,
                "without CLIP the first candidates are kept in order"
            );
            let png = get_png(&rig.s3, &r.key).await?;
            ensure!((png.width, png.height) == (p.width(), p.height()));
            ensure!(
                png.text["prompt"] == j.spec.prompt().text(),
                "{:?}",
                png.text
            );
            ensure!(png.text["seed"] == r.seed.to_string());
            ensure!(png.text["engine"] == "test-pattern");
            let params: serde_json::Value = serde_json::from_str(&png.text["params"])?;
            ensure!(params == serde_json::to_value(p)?, "{params}");
            ensure!(png.text["score"].is_empty(), "no scorer, no score");
            want_keys.push(r.key.clone());
        }
        want_keys.sort();
        ensure!(list_keys(&rig.s3, &rig.job_prefix(j)).await? == want_keys);
        let meta: serde_json::Value = serde_json::from_slice(
            &get_object(&rig.s3, &metadata_key(&rig.tenant, j.batch_id, j.job_id)).await?,
        )?;
        ensure!(
            meta["job_id"] == j.job_id.to_string() && meta["prompt"] == j.spec.prompt().text(),
            "{meta}"
        );
        ensure!(meta["results"] == serde_json::to_value(results)?, "{meta}");
    }

    // A second delivery of an attempt this worker reported is acked
    // without rendering: no second terminal event.
    rig.broker.publish_job(&jobs[0]).await?;
    events.settle(Duration::from_secs(2)).await?;
    let reported = |events: &kiln_tests::e2e::Events| {
        events
            .seen
            .iter()
            .filter(|e| terminal(jobs[0].job_id)(e))
            .count()
    };
    ensure!(
        reported(&events) == 1,
        "the same attempt was rendered again"
    );

    // The same prompt and seed render the same pixels: a rerun (the next
    // attempt, as after a lapsed lease) overwrites the object with
    // identical bytes.
    let first = get_png(
        &rig.s3,
        &image_key(&rig.tenant, jobs[0].batch_id, jobs[0].job_id, 0),
    )
    .await?;
    let mut rerun = jobs[0].clone();
    rerun.attempt += 1;
    rig.broker.publish_job(&rerun).await?;
    let deadline = Instant::now() + LONG;
    while reported(&events) < 2 {
        ensure!(Instant::now() < deadline, "the rerun did not finish");
        events.settle(Duration::from_millis(100)).await?;
    }
    let again = get_png(
        &rig.s3,
        &image_key(&rig.tenant, jobs[0].batch_id, jobs[0].job_id, 0),
    )
    .await?;
    ensure!(again.bytes == first.bytes, "a rerun wrote different bytes");

    let base = w.metrics_addr()?;
    let http = reqwest::Client::new();
    for path in ["/livez", "/readyz", "/healthz"] {
        let health = http.get(format!("{base}{path}")).send().await?;
        ensure!(health.status() == 200, "{path}: {}", health.status());
    }
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        metrics.contains("kiln_worker_jobs_total{engine=\"test-pattern\",outcome=\"succeeded\"} 4"),
        "{metrics}"
    );
    ensure!(
        metrics.contains("kiln_worker_render_seconds_count{engine=\"test-pattern\"} 4"),
        "{metrics}"
    );
    ensure!(
        metrics.contains("kiln_worker_redeliveries_recognised_total 1"),
        "{metrics}"
    );
    ensure!(
        metrics.contains("kiln_worker_queue_wait_seconds_count{engine=\"test-pattern\"} 4"),
        "{metrics}"
    );
    // The process metrics, of the worker's process.
    let rss = kiln_tests::scale::metric(&metrics, "process_resident_memory_bytes", &[])
        .context("no process_resident_memory_bytes")?;
    ensure!(rss > 1e6, "{metrics}");
    ensure!(metrics.contains("process_cpu_seconds_total "), "{metrics}");
    ensure!(metrics.ends_with("# EOF\n"), "{metrics}");
    w.ensure_running()?;
    Ok(())
}

/// The progress events of `job` in `seen`, as `(step, total)`, and the time
/// from its `started` event to its terminal event on the worker's clock.
fn progress_of(seen: &[&Event], job: Uuid) -> Result<(Vec<(u32, u32)>, Duration)> {
    let progress = seen
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Progress { step, total } => Some((step, total)),
            _ => None,
        })
        .collect();
    let started = seen
        .iter()
        .find(|e| e.kind == EventKind::Started)
        .with_context(|| format!("no started event of {job}"))?;
    let ended = seen
        .iter()
        .find(|e| e.kind.is_terminal())
        .with_context(|| format!("no terminal event of {job}"))?;
    Ok((progress, (ended.at - started.at).to_std()?))
}

/// The most progress events a worker can publish in `span` at one per
/// `interval`: its progress ticks are at least `interval` apart, and all of
/// them fall between the `started` and the terminal event.
fn throttled_bound(span: Duration, interval: Duration) -> usize {
    (span.as_secs_f64() / interval.as_secs_f64()) as usize + 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_heartbeats_are_published_while_a_job_runs() -> Result<()> {
    // 400 steps of 5 ms: at least 2 s, and 400 progress reports from the
    // engine, far more than one per progress interval.
    const STEPS: u32 = 400;
    let rig = Rig::new().await?;
    let mut events = rig.broker.events().await?;

    // `WorkerOpts` sets --progress-interval 100ms.
    let fast_interval = Duration::from_millis(100);
    let fast = rig.opts("w-progress");
    ensure!(fast
        .args
        .windows(2)
        .any(|a| a == ["--progress-interval", "100ms"]));
    let w = Worker::start(&fast).await?;
    let j = rig.job("progress", held(STEPS, 5));
    rig.broker.publish_job(&j).await?;
    events.wait(LONG, "succeeded", terminal(j.job_id)).await?;
    drop(w);
    let seen = events.of(j.job_id);
    let (progress, span) = progress_of(&seen, j.job_id)?;
    println!(
        "100 ms interval: {} progress events in {span:?}",
        progress.len()
    );
    ensure!(progress.len() >= 3, "progress: {progress:?}");
    ensure!(
        progress.windows(2).all(|p| p[0].0 < p[1].0),
        "steps increase: {progress:?}"
    );
    ensure!(progress.iter().all(|p| p.1 == STEPS), "{progress:?}");
    // Throttled to the interval: a few tens of events, not one per step.
    let bound = throttled_bound(span, fast_interval);
    ensure!(
        progress.len() <= bound && bound < STEPS as usize / 2,
        "{} progress events in {span:?} at one per {fast_interval:?} (at most {bound}): {progress:?}",
        progress.len()
    );
    let beats = seen
        .iter()
        .filter(|e| e.kind == EventKind::Heartbeat)
        .count();
    ensure!(beats >= 1, "no heartbeat in a 2 s job: {seen:?}");

    // --progress-interval 500ms: the same job publishes at most one event
    // per 500 ms.
    let slow_interval = Duration::from_millis(500);
    let mut o = rig.opts("w-progress-500ms");
    let at = o
        .args
        .iter()
        .position(|a| a == "--progress-interval")
        .context("WorkerOpts sets --progress-interval")?;
    o.args[at + 1] = "500ms".into();
    let _w = Worker::start(&o).await?;
    let k = rig.job("progress every 500 ms", held(STEPS, 5));
    rig.broker.publish_job(&k).await?;
    events.wait(LONG, "succeeded", terminal(k.job_id)).await?;
    let (sparse, sparse_span) = progress_of(&events.of(k.job_id), k.job_id)?;
    println!(
        "500 ms interval: {} progress events in {sparse_span:?}",
        sparse.len()
    );
    ensure!(sparse.len() >= 2, "progress: {sparse:?}");
    ensure!(
        sparse.windows(2).all(|p| p[0].0 < p[1].0) && sparse.iter().all(|p| p.1 == STEPS),
        "{sparse:?}"
    );
    let sparse_bound = throttled_bound(sparse_span, slow_interval);
    ensure!(
        sparse.len() <= sparse_bound,
        "{} progress events in {sparse_span:?} at one per {slow_interval:?} (at most {sparse_bound}): {sparse:?}",
        sparse.len()
    );
    // The 100 ms worker published more than a 500 ms interval (or the 1 s
    // default) would have allowed it: the flag sets the interval.
    ensure!(
        progress.len() > throttled_bound(span, slow_interval),
        "with --progress-interval 100ms only {} progress events in {span:?}, no more than one per 500 ms would give",
        progress.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_stops_within_a_few_steps_and_a_queued_one_is_dropped() -> Result<()> {
    let rig = Rig::new().await?;
    let mut events = rig.broker.events().await?;
    let mut w = Worker::start(&rig.opts("w-cancel")).await?;

    // 400 steps of 25 ms would take 10 s.
    let j = rig.job("cancel me", held(400, 25));
    rig.broker.publish_job(&j).await?;
    let p = events
        .wait(LONG, "progress", move |e| {
            e.job_id == j.job_id && matches!(e.kind, EventKind::Progress { step, .. } if step >= 3)
        })
        .await?;
    let EventKind::Progress {
        step: at_cancel, ..
    } = p.kind
    else {
        unreachable!()
    };
    let t0 = Instant::now();
    rig.broker.cancel(vec![j.job_id]).await?;
    let done = events
        .wait(Duration::from_secs(10), "failed", terminal(j.job_id))
        .await?;
    let took = t0.elapsed();
    let EventKind::Failed { kind, reason } = &done.kind else {
        anyhow::bail!("a cancelled job ended {:?}", done.kind)
    };
    ensure!(*kind == FailureKind::Cancelled, "{kind:?}: {reason}");
    let stopped_at: u32 = reason
        .strip_prefix("cancelled at step ")
        .context("reason names the step")?
        .parse()?;
    println!("cancel landed after {took:?}, at step {stopped_at} (progress said {at_cancel})");
    ensure!(took < Duration::from_secs(2), "cancel took {took:?}");
    // The progress event is up to 100 ms old when read: a few steps of 25 ms.
    ensure!(
        stopped_at < at_cancel + 40 && stopped_at < 400,
        "stopped at step {stopped_at}"
    );
    ensure!(
        list_keys(&rig.s3, &rig.job_prefix(&j)).await?.is_empty(),
        "a cancelled job uploads nothing"
    );

    // Cancelled while it waited in the queue: dropped on delivery, never started.
    let q = rig.job("cancelled in the queue", held(1, 0));
    rig.broker.cancel(vec![q.job_id]).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.broker.publish_job(&q).await?;
    let done = events.wait(LONG, "dropped", terminal(q.job_id)).await?;
    ensure!(
        matches!(&done.kind, EventKind::Failed { kind: FailureKind::Cancelled, reason } if reason.contains("before it started")),
        "{done:?}"
    );
    ensure!(!events
        .of(q.job_id)
        .iter()
        .any(|e| e.kind == EventKind::Started));

    // The slot is free again.
    let after = rig.job("after the cancels", held(1, 0));
    rig.broker.publish_job(&after).await?;
    let done = events
        .wait(LONG, "succeeded", terminal(after.job_id))
        .await?;
    ensure!(done.kind.name() == "succeeded", "{done:?}");
    w.ensure_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_version_messages_are_dead_lettered_and_the_worker_keeps_running(
) -> Result<()> {
    let rig = Rig::new().await?;
    let mut events = rig.broker.events().await?;
    let mut dead = rig.broker.dead_letters().await?;
    let mut w = Worker::start(&rig.opts("w-poison")).await?;

    let mut v2 = serde_json::to_value(rig.job("from the future", held(1, 0)))?;
    v2["v"] = 2.into();
    let wrong_engine = {
        let mut j = serde_json::to_value(rig.job("misrouted", held(1, 0)))?;
        j["engine"] = "dalle".into();
        j
    };
    let poison: Vec<Vec<u8>> = vec![
        b"this is not json".to_vec(),
        serde_json::to_vec(&v2)?,
        br#"{"v":1,"job_id":"not-a-uuid"}"#.to_vec(),
        serde_json::to_vec(&wrong_engine)?,
    ];
    for p in &poison {
        rig.broker.publish_raw(Engine::TestPattern, p).await?;
    }
    let mut got = Vec::new();
    while got.len() < poison.len() {
        let body = tokio::time::timeout(LONG, dead.recv())
            .await
            .context("waiting for dead letters")?
            .context("dead-letter consumer stopped")?;
        got.push(body);
    }
    got.sort();
    let mut want = poison.clone();
    want.sort();
    ensure!(got == want, "dead letters differ from the poison messages");

    let j = rig.job("still alive", held(1, 0));
    rig.broker.publish_job(&j).await?;
    let done = events.wait(LONG, "succeeded", terminal(j.job_id)).await?;
    ensure!(done.kind.name() == "succeeded", "{done:?}");
    w.ensure_running()?;
    let metrics = reqwest::get(format!("{}/metrics", w.metrics_addr()?))
        .await?
        .text()
        .await?;
    ensure!(
        metrics.contains("kiln_worker_jobs_total{engine=\"test-pattern\",outcome=\"rejected\"} 4"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_job_redelivers_it_and_it_succeeds_once() -> Result<()> {
    let rig = Rig::new().await?;
    let mut events = rig.broker.events().await?;
    let mut a = Worker::start(&rig.opts("w-a")).await?;
    let mut b = Worker::start(&rig.opts("w-b")).await?;

    let j = rig.job("survives a crash", held(40, 50));
    rig.broker.publish_job(&j).await?;
    let p = events
        .wait(LONG, "progress", move |e| {
            e.job_id == j.job_id && matches!(e.kind, EventKind::Progress { step, .. } if step >= 2)
        })
        .await?;
    let (victim, survivor) = if p.worker == a.name {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    victim.kill9().await?;

    let done = events.wait(LONG, "succeeded", terminal(j.job_id)).await?;
    ensure!(done.kind.name() == "succeeded", "{done:?}");
    ensure!(done.worker == survivor.name, "finished by {}", done.worker);
    events.settle(Duration::from_secs(1)).await?;
    let seen = events.of(j.job_id);
    ensure!(
        seen.iter().filter(|e| e.kind.is_terminal()).count() == 1,
        "{seen:?}"
    );
    let starts: Vec<_> = seen
        .iter()
        .filter(|e| e.kind == EventKind::Started)
        .map(|e| e.worker.as_str())
        .collect();
    ensure!(
        starts == [victim.name.as_str(), survivor.name.as_str()],
        "{starts:?}"
    );
    let keys = list_keys(&rig.s3, &rig.job_prefix(&j)).await?;
    ensure!(
        keys == [
            image_key(&rig.tenant, j.batch_id, j.job_id, 0),
            metadata_key(&rig.tenant, j.batch_id, j.job_id)
        ],
        "{keys:?}"
    );
    survivor.ensure_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_running_job_and_exits_0_leaving_queued_jobs() -> Result<()> {
    let rig = Rig::new().await?;
    let mut events = rig.broker.events().await?;
    let mut w = Worker::start(&rig.opts("w-drain")).await?;

    let running = rig.job("finish me", held(30, 50));
    let queued = rig.job("not yet", held(1, 0));
    rig.broker.publish_job(&running).await?;
    rig.broker.publish_job(&queued).await?;
    events
        .wait(LONG, "progress", move |e| {
            e.job_id == running.job_id && e.kind.name() == "progress"
        })
        .await?;
    w.terminate()?;
    let status = w.wait(Duration::from_secs(30)).await?;
    ensure!(
        status.success(),
        "exit status {status}:\n{}",
        w.log_tail(20)
    );
    let done = events
        .wait(
            Duration::from_secs(5),
            "succeeded",
            terminal(running.job_id),
        )
        .await?;
    ensure!(done.kind.name() == "succeeded", "{done:?}");
    ensure!(!list_keys(&rig.s3, &rig.job_prefix(&running))
        .await?
        .is_empty());
    ensure!(
        events.of(queued.job_id).is_empty(),
        "the queued job was not started"
    );

    // The queued job is still in the broker for the next worker.
    let _next = Worker::start(&rig.opts("w-next")).await?;
    let done = events
        .wait(LONG, "succeeded", terminal(queued.job_id))
        .await?;
    ensure!(
        done.worker == "w-next" && done.kind.name() == "succeeded",
        "{done:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_request_on_the_control_exchange_drains_only_the_named_worker() -> Result<()> {
    let rig = Rig::new().await?;
    let mut events = rig.broker.events().await?;
    let mut a = Worker::start(&rig.opts("w-drained")).await?;
    let mut b = Worker::start(&rig.opts("w-stays")).await?;
    let drain = |worker: &str| ControlMessage {
        v: kiln_protocol::PROTOCOL_VERSION,
        command: ControlCommand::Drain {
            worker: Some(worker.to_string()),
        },
    };
    rig.broker.control(&drain("w-drained")).await?;
    let status = a.wait(Duration::from_secs(30)).await?;
    ensure!(
        status.success(),
        "exit status {status}:\n{}",
        a.log_tail(20)
    );
    let j = rig.job("after a drain", held(1, 0));
    rig.broker.publish_job(&j).await?;
    let done = events.wait(LONG, "succeeded", terminal(j.job_id)).await?;
    ensure!(done.worker == "w-stays", "{done:?}");
    b.ensure_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_timeout_leaves_the_job_unacked_for_another_worker() -> Result<()> {
    let rig = Rig::new().await?;
    let mut events = rig.broker.events().await?;
    let mut o = rig.opts("w-short-drain");
    o.drain_timeout = "500ms".into();
    let mut w = Worker::start(&o).await?;

    let j = rig.job("too long to drain", held(60, 50));
    rig.broker.publish_job(&j).await?;
    events
        .wait(LONG, "started", is(j.job_id, "started"))
        .await?;
    let t0 = Instant::now();
    w.terminate()?;
    let status = w.wait(Duration::from_secs(10)).await?;
    ensure!(status.success(), "exit status {status}");
    ensure!(
        t0.elapsed() < Duration::from_secs(3),
        "drain took {:?}",
        t0.elapsed()
    );
    ensure!(events.of(j.job_id).iter().all(|e| !e.kind.is_terminal()));

    let _b = Worker::start(&rig.opts("w-takeover")).await?;
    let done = events.wait(LONG, "succeeded", terminal(j.job_id)).await?;
    ensure!(
        done.worker == "w-takeover" && done.kind.name() == "succeeded",
        "{done:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_limit_stops_a_long_job_as_retryable() -> Result<()> {
    let rig = Rig::new().await?;
    let mut events = rig.broker.events().await?;
    let mut o = rig.opts("w-limit");
    o.args
        .extend(["--time-limit".into(), "test-pattern=1s".into()]);
    let _w = Worker::start(&o).await?;
    let j = rig.job("endless", held(1000, 20));
    rig.broker.publish_job(&j).await?;
    let done = events.wait(LONG, "failed", terminal(j.job_id)).await?;
    let EventKind::Failed { kind, reason } = &done.kind else {
        anyhow::bail!("{done:?}")
    };
    ensure!(
        *kind == FailureKind::Retryable && reason.contains("time limit"),
        "{kind:?}: {reason}"
    );
    let start = events.of(j.job_id)[0].at;
    let took = (done.at - start).to_std()?;
    ensure!(took < Duration::from_secs(4), "stopped after {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_survive_a_storage_outage_and_fail_retryable_when_it_lasts() -> Result<()> {
    let mut rig = Rig::new().await?;
    let mut garage = PrivateGarage::start(&rig.dir).await?;
    rig.broker.sign_for(&garage.s3);
    let mut events = rig.broker.events().await?;
    let mut o = rig.opts("w-outage");
    o.args.extend(["--s3-attempts".into(), "10".into()]);
    let w = Worker::start(&o).await?;

    // Storage goes down while the job renders, and comes back while the
    // worker retries the upload.
    let j = rig.job("outage", held(10, 50));
    rig.broker.publish_job(&j).await?;
    events
        .wait(LONG, "started", is(j.job_id, "started"))
        .await?;
    garage.pause()?;
    let deadline = Instant::now() + LONG;
    while !w.log_text().contains("upload failed; retrying") {
        ensure!(
            Instant::now() < deadline,
            "no upload retry:\n{}",
            w.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    garage.resume().await?;
    let done = events.wait(LONG, "succeeded", terminal(j.job_id)).await?;
    let EventKind::Succeeded { results } = &done.kind else {
        anyhow::bail!("{done:?}")
    };
    let png = get_png(&garage.s3, &results[0].key).await?;
    ensure!((png.width, png.height) == (32, 32));

    // Storage down for longer than the worker retries: the job fails as
    // retryable (the dispatcher's retry takes it from there).
    drop(w);
    let mut o = rig.opts("w-gives-up");
    o.args.extend(["--s3-attempts".into(), "2".into()]);
    let _w = Worker::start(&o).await?;
    garage.pause()?;
    let k = rig.job("outage too long", held(1, 0));
    rig.broker.publish_job(&k).await?;
    let done = events.wait(LONG, "failed", terminal(k.job_id)).await?;
    ensure!(
        matches!(&done.kind, EventKind::Failed { kind: FailureKind::Retryable, reason } if reason.contains("storage unavailable after 2 attempts")),
        "{done:?}"
    );
    Ok(())
}

#[tokio::test]
async fn render_writes_a_job_locally_and_help_needs_no_service() -> Result<()> {
    let out = std::env::temp_dir().join(format!("kiln-render-{}", Uuid::new_v4().simple()));
    output_ok(
        tokio::process::Command::new(bin("kiln-worker"))
            .args([
                "render",
                "--engine",
                "test-pattern",
                "--prompt",
                "a local fox",
                "--device",
                "cpu",
            ])
            .args([
                "--width",
                "64",
                "--height",
                "48",
                "--candidates",
                "3",
                "--keep",
                "2",
                "--seed",
                "5",
            ])
            .arg("--out")
            .arg(&out),
    )
    .await?;
    for rank in 0..2 {
        let img = image::open(out.join(format!("{rank}.png")))?;
        ensure!((img.width(), img.height()) == (64, 48));
    }
    ensure!(!out.join("2.png").exists());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metadata.json"))?)?;
    ensure!(
        meta["params"]["seed"] == 5 && meta["results"][1]["seed"] == 6,
        "{meta}"
    );

    for args in [&["--help"][..], &["run", "--help"], &["render", "--help"]] {
        output_ok(
            tokio::process::Command::new(bin("kiln-worker"))
                .args(args)
                .env("KILN_AMQP_URL", "amqp://nobody@127.0.0.1:1/%2f"),
        )
        .await
        .with_context(|| format!("{args:?}"))?;
    }
    Ok(())
}

/// Runs `cmd` to its end; an error with its stderr unless it exits 0.
async fn output_ok(cmd: &mut tokio::process::Command) -> Result<std::process::Output> {
    let out = cmd.output().await?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// One candidate of a job, with its score computed on its own.
#[derive(Clone)]
struct Scored {
    seed: u64,
    score: f32,
    image: image::RgbImage,
}

/// Every candidate of the test-pattern job `j`, in candidate order, each
/// scored against the prompt by `kiln-worker clip score` with the CLIP in
/// `clip`. The candidates come from `kiln-worker render` with a model root
/// that has no CLIP and `keep` = `candidates`: all of them, unranked.
async fn score_every_candidate(
    dir: &std::path::Path,
    clip: &std::path::Path,
    j: &JobMessage,
) -> Result<Vec<Scored>> {
    let p = j.spec.params();
    let prompt = j.spec.prompt();
    // One positive part of weight 1: its score is the prompt's score.
    ensure!(
        prompt.parts().len() == 1 && prompt.parts()[0].weight == 1.0,
        "{prompt:?}"
    );
    let out = dir.join(format!("candidates-{}", j.job_id));
    let no_models = dir.join("no-models");
    std::fs::create_dir_all(&no_models)?;
    let n = p.candidates().to_string();
    output_ok(
        tokio::process::Command::new(bin("kiln-worker"))
            .args(["render", "--engine", "test-pattern", "--device", "cpu"])
            .args(["--prompt", prompt.text()])
            .args(["--width", &p.width().to_string()])
            .args(["--height", &p.height().to_string()])
            .args(["--seed", &p.seed().to_string()])
            .args(["--candidates", &n, "--keep", &n])
            .arg("--models")
            .arg(&no_models)
            .arg("--out")
            .arg(&out),
    )
    .await?;
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metadata.json"))?)?;
    let mut cmd = tokio::process::Command::new(bin("kiln-worker"));
    cmd.args(["clip", "score", "--device", "cpu", "--model"])
        .arg(clip);
    let mut all = Vec::new();
    for i in 0..p.candidates() {
        let r = &meta["results"][i as usize];
        ensure!(r["score"].is_null(), "scored without CLIP: {meta}");
        let seed = r["seed"].as_u64().context("a seed")?;
        ensure!(seed == j.spec.candidate_seed(i), "{meta}");
        let png = out.join(format!("{i}.png"));
        cmd.arg("--image").arg(&png);
        all.push(Scored {
            seed,
            score: f32::NAN,
            image: image::open(&png)?.to_rgb8(),
        });
    }
    let st = output_ok(cmd.args(["--text", &prompt.parts()[0].text])).await?;
    let scored: serde_json::Value = serde_json::from_slice(&st.stdout)?;
    for (i, c) in all.iter_mut().enumerate() {
        c.score = scored["scores"][i][0].as_f64().context("a score")? as f32;
    }
    Ok(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reranks_by_clip_and_fetches_init_images_from_the_bucket() -> Result<()> {
    let rig = Rig::new().await?;
    init_tiny_models(&rig.dir.join("models")).await?;
    let mut events = rig.broker.events().await?;
    let mut o = rig.opts("w-clip");
    o.engines = "test-pattern,vqgan-clip".into();
    let mut w = Worker::start(&o).await?;

    // Six candidates, two kept, ranked by the tiny CLIP's scores.
    let j = rig.job(
        "a red fox",
        ParamsDto {
            width: Some(32),
            height: Some(32),
            seed: Some(1234),
            candidates: Some(6),
            keep: Some(2),
            ..Default::default()
        },
    );
    rig.broker.publish_job(&j).await?;
    let done = events.wait(LONG, "succeeded", terminal(j.job_id)).await?;
    let EventKind::Succeeded { results } = &done.kind else {
        anyhow::bail!("{done:?}")
    };

    // Every candidate scored on its own, outside the worker's rerank.
    let all = score_every_candidate(&rig.dir, &rig.dir.join("models/clip"), &j).await?;
    let keep = j.spec.params().keep() as usize;
    let mut best = all.clone();
    // Stable: equal scores keep candidate order.
    best.sort_by(|a, b| b.score.total_cmp(&a.score));
    let scores: Vec<(u64, f32)> = all.iter().map(|c| (c.seed, c.score)).collect();
    let want: Vec<u64> = best[..keep].iter().map(|c| c.seed).collect();
    // The job is one where ranking matters: its best candidates are not its
    // first ones, and a clear gap separates the kept from the rest.
    ensure!(
        want != all[..keep].iter().map(|c| c.seed).collect::<Vec<_>>(),
        "the best candidates are the first ones: {scores:?}"
    );
    ensure!(
        best[keep - 1].score - best[keep].score > 0.1,
        "no clear gap after the best {keep}: {scores:?}"
    );
    let got: Vec<u64> = results.iter().map(|r| r.seed).collect();
    ensure!(
        got == want,
        "kept seeds {got:?}, but the best {keep} of {scores:?} are {want:?}"
    );
    for (i, (r, c)) in results.iter().zip(&best).enumerate() {
        let score = r.score.context("no score")?;
        ensure!(r.rank == i as u32, "{r:?}");
        ensure!(
            (score - c.score).abs() <= 1e-4 * c.score.abs().max(1.0),
            "seed {}: the worker scored {score}, on its own it scores {}",
            r.seed,
            c.score
        );
        let png = get_png(&rig.s3, &r.key).await?;
        ensure!(png.text["score"].parse::<f32>()? == score, "{:?}", png.text);
        ensure!(png.text["seed"] == r.seed.to_string());
        ensure!(
            image::load_from_memory(&png.bytes)?.to_rgb8() == c.image,
            "the image of rank {i} is not candidate {}",
            c.seed
        );
    }

    // vqgan-clip starts from an uploaded image, fetched from the bucket.
    let init = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8 * 8, y as u8 * 8, 128]));
    let mut png = Vec::new();
    init.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    let upload = format!("up-{}", Uuid::new_v4().simple());
    rig.s3
        .client()
        .put_object()
        .bucket(&rig.s3.bucket)
        .key(kiln_protocol::keys::upload_key(&rig.tenant, &upload))
        .body(png.into())
        .send()
        .await?;
    let vq = |init: &str| {
        job_for(
            Engine::VqganClip,
            &rig.tenant,
            "a red fox | blurry:-0.5",
            ParamsDto {
                width: Some(32),
                height: Some(32),
                steps: Some(2),
                cutn: Some(2),
                init_image: Some(init.to_string()),
                ..Default::default()
            },
        )
    };
    let with_init = vq(&upload);
    let missing = vq("never-uploaded");
    rig.broker.publish_job(&with_init).await?;
    rig.broker.publish_job(&missing).await?;
    let done = events
        .wait(LONG, "succeeded", terminal(with_init.job_id))
        .await?;
    let EventKind::Succeeded { results } = &done.kind else {
        anyhow::bail!("{done:?}")
    };
    let png = get_png(&rig.s3, &results[0].key).await?;
    ensure!((png.width, png.height) == (32, 32) && png.text["engine"] == "vqgan-clip");
    let done = events
        .wait(LONG, "failed", terminal(missing.job_id))
        .await?;
    ensure!(
        matches!(&done.kind, EventKind::Failed { kind: FailureKind::Permanent, reason } if reason.contains("never-uploaded")),
        "{done:?}"
    );
    w.ensure_running()?;
    Ok(())
}
