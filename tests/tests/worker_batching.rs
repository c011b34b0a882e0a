//! `kiln-worker run` with batches: several deliveries of one engine rendered
//! together on one slot, each keeping its own progress, heartbeats, cancel
//! and time limit; and one set of models per device whatever the slot count.
//!
//! Test-pattern jobs of equal step count and delay render in lockstep (as a GPU batch
//! does), so a batch here is cheap and its timing is the test's to choose.
//! `vqgan-clip` batches are continuous: a job joins a running batch.
//! Needs the local stack and the workspace binaries.

use anyhow::{ensure, Context, Result};
use kiln_protocol::{Engine, Event, EventKind, FailureKind, JobMessage, ParamsDto};
use kiln_tests::e2e::{
    held, init_tiny_models, job_for, list_keys, terminal, Rig, Worker, WorkerOpts,
};
use std::time::Duration;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);

/// A test-pattern worker of `rig` with one slot that batches up to
/// `max_batch` jobs, waiting up to 2 s for a batch to fill.
fn batching(rig: &Rig, name: &str, max_batch: u32) -> WorkerOpts {
    let mut o = rig.opts(name);
    o.args.extend([
        "--max-batch".into(),
        format!("test-pattern={max_batch}"),
        "--batch-window".into(),
        "2s".into(),
    ]);
    o
}

/// Whether every job with events in `seen` reported progress before the
/// first terminal event.
fn all_progressed_before_an_end(seen: &[Event]) -> bool {
    let Some(first_end) = seen.iter().position(|e| e.kind.is_terminal()) else {
        return false;
    };
    let jobs: std::collections::HashSet<Uuid> = seen.iter().map(|e| e.job_id).collect();
    jobs.iter().all(|j| {
        seen[..first_end]
            .iter()
            .any(|e| e.job_id == *j && matches!(e.kind, EventKind::Progress { .. }))
    })
}

/// Whether `e` is a job's end as cancelled.
fn ended_cancelled(e: &Event) -> bool {
    matches!(
        &e.kind,
        EventKind::Failed {
            kind: FailureKind::Cancelled,
            ..
        }
    )
}

/// That `w`'s `/metrics` counts `count` rendered jobs of `engine` whose
/// batch sizes add up to `sum`.
async fn ensure_batch_sizes(w: &Worker, engine: &str, sum: u32, count: u32) -> Result<()> {
    let text = w.metrics().await?;
    ensure!(
        text.contains(&format!(
            "kiln_worker_batch_size_sum{{engine=\"{engine}\"}} {sum}.0"
        )) && text.contains(&format!(
            "kiln_worker_batch_size_count{{engine=\"{engine}\"}} {count}"
        )),
        "{text}"
    );
    Ok(())
}

/// Progress steps of `job` that reached at least `step`.
fn progressed(job: Uuid, step: u32) -> impl Fn(&Event) -> bool {
    move |e| e.job_id == job && matches!(e.kind, EventKind::Progress { step: s, .. } if s >= step)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slot_renders_a_batch_together_and_a_cancel_ends_only_its_job() -> Result<()> {
    let rig = Rig::new().await?;
    let mut events = rig.broker.events().await?;
    let mut w = Worker::start(&batching(&rig, "w-batch", 4)).await?;

    // Four jobs of 60 steps × 50 ms (3 s each alone) on one slot.
    let jobs: Vec<JobMessage> = (0..4)
        .map(|i| rig.job(&format!("batched {i}"), held(60, 50)))
        .collect();
    for j in &jobs {
        rig.broker.publish_job(j).await?;
    }
    let cancelled = jobs[2].job_id;
    events
        .wait(
            LONG,
            "progress of the job to cancel",
            progressed(cancelled, 5),
        )
        .await?;
    rig.broker.cancel(vec![cancelled]).await?;
    for j in &jobs {
        events
            .wait(LONG, "every job ends", terminal(j.job_id))
            .await?;
    }

    // All four ran at once on the one slot: each made progress before any
    // ended (one after the other, the last would start after the first ended).
    ensure!(
        all_progressed_before_an_end(&events.seen),
        "a job made no progress before another ended, so they were not one batch: {:?}",
        events.seen
    );
    for j in &jobs {
        let of = events.of(j.job_id);
        let end = of.last().context("events")?;
        let progress = of
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Progress { .. }))
            .count();
        ensure!(
            progress >= 2,
            "job {} has {progress} progress events",
            j.job_id
        );
        if j.job_id == cancelled {
            ensure!(ended_cancelled(end), "{end:?}");
            ensure!(
                list_keys(
                    &rig.s3,
                    &format!("{}/{}/{}/", rig.tenant, j.batch_id, j.job_id)
                )
                .await?
                .is_empty(),
                "the cancelled job uploads nothing"
            );
        } else {
            ensure!(end.kind.name() == "succeeded", "{end:?}");
            let beats = of.iter().filter(|e| e.kind == EventKind::Heartbeat).count();
            ensure!(
                beats >= 1,
                "job {} of a 3 s batch had no heartbeat",
                j.job_id
            );
        }
    }
    w.ensure_running()?;

    // The batch sizes show on /metrics: three jobs rendered in a batch of four.
    ensure_batch_sizes(&w, "test-pattern", 12, 3).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_limit_stops_each_job_of_a_batch_on_its_own_clock() -> Result<()> {
    let rig = Rig::new().await?;
    let mut events = rig.broker.events().await?;
    let mut o = batching(&rig, "w-batch-limit", 3);
    o.args
        .extend(["--time-limit".into(), "test-pattern=3s".into()]);
    let mut w = Worker::start(&o).await?;
    // Three endless jobs (1000 × 20 ms) in one batch.
    let endless: Vec<JobMessage> = (0..3)
        .map(|i| rig.job(&format!("endless {i}"), held(1000, 20)))
        .collect();
    for j in &endless {
        rig.broker.publish_job(j).await?;
    }
    for j in &endless {
        let done = events
            .wait(LONG, "an endless job ends", terminal(j.job_id))
            .await?;
        let EventKind::Failed { kind, reason } = &done.kind else {
            anyhow::bail!("{done:?}")
        };
        ensure!(
            *kind == FailureKind::Retryable && reason.contains("time limit"),
            "{kind:?}: {reason}"
        );
        let start = events
            .of(j.job_id)
            .iter()
            .find(|e| e.kind == EventKind::Started)
            .map(|e| e.at)
            .context("no started event")?;
        let took = (done.at - start).to_std()?;
        ensure!(took < Duration::from_secs(6), "stopped after {took:?}");
    }
    // They were one batch: each made progress before any ended.
    ensure!(
        all_progressed_before_an_end(&events.seen),
        "{:?}",
        events.seen
    );
    // The slot is free again: the next job runs and succeeds.
    let after = rig.job("after the time limit", held(2, 0));
    rig.broker.publish_job(&after).await?;
    let done = events
        .wait(LONG, "the next job", terminal(after.job_id))
        .await?;
    ensure!(done.kind.name() == "succeeded", "{done:?}");
    w.ensure_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_while_it_waits_for_a_render_thread_ends_at_once() -> Result<()> {
    let rig = Rig::new().await?;
    let mut events = rig.broker.events().await?;
    // Two jobs in hand, one render thread: jobs of other step counts never
    // share a batch, so the second waits while the first renders.
    let mut w = Worker::start(&batching(&rig, "w-batch-queued", 2)).await?;
    let running = rig.job("running", held(200, 50));
    let waiting = rig.job("waiting", held(3, 50));
    rig.broker.publish_job(&running).await?;
    events
        .wait(LONG, "the first job runs", progressed(running.job_id, 2))
        .await?;
    rig.broker.publish_job(&waiting).await?;
    let id = waiting.job_id;
    events
        .wait(LONG, "the second is in hand", move |e| {
            e.job_id == id && e.kind == EventKind::Started
        })
        .await?;
    let t0 = std::time::Instant::now();
    rig.broker.cancel(vec![waiting.job_id]).await?;
    let done = events
        .wait(
            Duration::from_secs(10),
            "the waiting job ends",
            terminal(waiting.job_id),
        )
        .await?;
    ensure!(ended_cancelled(&done), "{done:?}");
    ensure!(
        t0.elapsed() < Duration::from_secs(3),
        "the cancel took {:?}",
        t0.elapsed()
    );
    ensure!(
        !events
            .seen
            .iter()
            .any(|e| e.job_id == running.job_id && e.kind.is_terminal()),
        "it ended while the first job still rendered"
    );
    ensure!(!events
        .of(waiting.job_id)
        .iter()
        .any(|e| matches!(e.kind, EventKind::Progress { .. })));
    rig.broker.cancel(vec![running.job_id]).await?;
    events
        .wait(LONG, "the first job ends", terminal(running.job_id))
        .await?;
    w.ensure_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_holds_one_set_of_models_whatever_its_slot_count() -> Result<()> {
    let rig = Rig::new().await?;
    let models = rig.dir.join("models");
    init_tiny_models(&models).await?;
    let mut bytes = Vec::new();
    for slots in [1, 4] {
        let mut o = WorkerOpts::new(&format!("w-models-{slots}"), &rig.amqp_url, &rig.dir);
        o.engines = "vqgan-clip,dalle".into();
        o.slots = slots;
        let w = Worker::start(&o).await?;
        let text = w.metrics().await?;
        let line = text
            .lines()
            .find(|l| l.starts_with("kiln_worker_model_bytes{device=\"cpu\"}"))
            .with_context(|| format!("no model bytes on /metrics: {text}"))?;
        let n: u64 = line.rsplit(' ').next().context("a value")?.parse()?;
        ensure!(n > 0, "{line}");
        bytes.push(n);
    }
    ensure!(
        bytes[0] == bytes[1],
        "4 slots hold {} bytes of models, 1 slot {}",
        bytes[1],
        bytes[0]
    );
    Ok(())
}

/// A `vqgan-clip` job of `steps` steps on the tiny models (64×48, 2 cutouts).
fn vqgan_job(rig: &Rig, prompt: &str, steps: u32) -> JobMessage {
    let dto = ParamsDto {
        width: Some(64),
        height: Some(48),
        steps: Some(steps),
        cutn: Some(2),
        ..Default::default()
    };
    job_for(Engine::VqganClip, &rig.tenant, prompt, dto)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vqgan_clip_job_joins_a_running_batch_and_leaves_it_when_done() -> Result<()> {
    let rig = Rig::new().await?;
    init_tiny_models(&rig.dir.join("models")).await?;
    let mut events = rig.broker.events().await?;
    let mut o = rig.opts("w-continuous");
    o.engines = "vqgan-clip".into();
    o.args.extend(["--max-batch".into(), "vqgan-clip=2".into()]);
    let mut w = Worker::start(&o).await?;

    // One render thread. A long job starts alone; a short one published
    // once it runs can only end first by joining its batch.
    let long = vqgan_job(&rig, "a lighthouse", 5000);
    let short = vqgan_job(&rig, "a red fox", 3);
    rig.broker.publish_job(&long).await?;
    events
        .wait(LONG, "the long job runs", progressed(long.job_id, 2))
        .await?;
    rig.broker.publish_job(&short).await?;
    let done = events
        .wait(LONG, "the short job ends", terminal(short.job_id))
        .await?;
    ensure!(done.kind.name() == "succeeded", "{done:?}");
    ensure!(
        !events
            .seen
            .iter()
            .any(|e| e.job_id == long.job_id && e.kind.is_terminal()),
        "the long job ended before the short one"
    );
    ensure!(
        !list_keys(&rig.s3, &rig.job_prefix(&short))
            .await?
            .is_empty(),
        "the short job uploaded its image"
    );
    // The long job renders on after the short one left.
    let after = events
        .of(long.job_id)
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Progress { step, .. } => Some(step),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    events
        .wait(
            LONG,
            "the long job goes on",
            progressed(long.job_id, after + 1),
        )
        .await?;
    // The short job was rendered in a batch of two.
    ensure_batch_sizes(&w, "vqgan-clip", 2, 1).await?;
    rig.broker.cancel(vec![long.job_id]).await?;
    let end = events
        .wait(LONG, "the long job ends", terminal(long.job_id))
        .await?;
    ensure!(ended_cancelled(&end), "{end:?}");
    w.ensure_running()?;
    Ok(())
}
