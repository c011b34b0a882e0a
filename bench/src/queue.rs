//! Case 2, queue overhead: N `test-pattern` jobs at 64×64 through 1, 2, 4
//! worker processes (one slot each by default, like Celery's prefetch 1;
//! `--worker-slots` adds runs with more jobs in flight per process), timed until every job is `succeeded` in PostgreSQL
//! (and so its PNG is in the bucket); against a Celery worker (RabbitMQ
//! broker, PostgreSQL result backend, late acks, prefetch 1) whose task
//! makes the same image and puts it into the same bucket with boto3.
//!
//! Beside both, the floor ([`crate::floor`]) at the same number of jobs in
//! flight (processes × slots): the same calls to the services made by the
//! simplest loop, so Kiln's rate can be stated as a fraction of what the
//! services allow.
//!
//! Both sides first run a warm-up of 20 jobs, so that connections are open
//! and processes loaded before the clock starts. The clock starts when the
//! submit starts; a job's latency is the time from then to its `succeeded`
//! (Kiln: `finished_at` in PostgreSQL; Celery: `date_done` in its result
//! table).

use crate::ingest::{flatten, ratio};
use crate::kiln::Kiln;
use crate::stack::{self, Database, Process, Vhost, S3};
use crate::Options;
use anyhow::{bail, ensure, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const WARMUP: usize = 20;
const SIDE: u32 = 64;

pub async fn run(o: &Options) -> Result<Value> {
    let jobs = o.queue_jobs;
    let mut kiln = serde_json::Map::new();
    for &slots in &o.worker_slots {
        for &n in &o.workers {
            eprintln!("[queue] kiln: {jobs} jobs through {n} worker(s) of {slots} slot(s)");
            kiln.insert(
                format!("{n}x{slots}"),
                flatten(kiln_run(o, jobs, n, slots).await),
            );
        }
    }
    let mut out = json!({"jobs": jobs, "side": SIDE, "kiln": kiln});
    if !o.no_baseline {
        let mut celery = serde_json::Map::new();
        for &n in &o.celery_workers {
            eprintln!("[queue] celery: {jobs} tasks through a worker of concurrency {n}");
            celery.insert(n.to_string(), flatten(celery_run(o, jobs, n).await));
        }
        out["celery"] = Value::Object(celery);
        let mut speedup = serde_json::Map::new();
        for &slots in &o.worker_slots {
            for &n in &o.workers {
                let key = format!("{n}x{slots}");
                let k = &out["kiln"][&key]["jobs_per_s"];
                if let Some(r) = ratio(k, &out["celery"][n.to_string()]["jobs_per_s"]) {
                    speedup.insert(key, r);
                }
            }
        }
        out["speedup_jobs_per_s"] = Value::Object(speedup);
        let floors = floor_runs(o).await;
        let mut of_floor = serde_json::Map::new();
        for (key, f) in &floors {
            if let Some(r) = ratio(&out["kiln"][key]["jobs_per_s"], &f["jobs_per_s"]) {
                of_floor.insert(key.clone(), r);
            }
        }
        out["floor"] = Value::Object(floors);
        out["kiln_of_floor"] = Value::Object(of_floor);
    }
    Ok(out)
}

/// The `floor` case alone, at the queue case's sizes.
pub async fn floor(o: &Options) -> Result<Value> {
    Ok(json!({
        "jobs": o.queue_jobs,
        "side": SIDE,
        "floor": floor_runs(o).await,
    }))
}

/// The floor at every processes × slots of the queue case, keyed like
/// Kiln's runs.
async fn floor_runs(o: &Options) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    for &slots in &o.worker_slots {
        for &n in &o.workers {
            let loops = n * slots;
            eprintln!("[floor] {} jobs through {loops} loop(s)", o.queue_jobs);
            out.insert(
                format!("{n}x{slots}"),
                flatten(crate::floor::measure(o.queue_jobs, loops, SIDE).await),
            );
        }
    }
    out
}

pub fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

fn request(name: &str, jobs: usize, from: usize) -> Vec<u8> {
    let prompts: Vec<String> = (from..from + jobs)
        .map(|i| format!("queue benchmark prompt {i}"))
        .collect();
    serde_json::to_vec(&json!({
        "engine": "test-pattern",
        "name": name,
        "params": {"width": SIDE, "height": SIDE, "steps": 1, "seed": 7},
        "prompts": prompts,
    }))
    .expect("json")
}

/// Waits until the batch's `jobs` all succeeded (30 minutes at most); an
/// error naming one on a failure.
pub async fn wait_succeeded(
    kiln: &mut Kiln,
    pool: &sqlx::PgPool,
    batch: uuid::Uuid,
    jobs: usize,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let (done, failed): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'succeeded'),
                    count(*) FILTER (WHERE state IN ('failed', 'cancelled'))
             FROM jobs WHERE batch_id = $1",
        )
        .bind(batch)
        .fetch_one(pool)
        .await?;
        if failed > 0 {
            let (err,): (Option<String>,) = sqlx::query_as(
                "SELECT error FROM jobs WHERE batch_id = $1 AND state = 'failed' LIMIT 1",
            )
            .bind(batch)
            .fetch_one(pool)
            .await?;
            bail!("{failed} jobs failed, e.g.: {err:?}");
        }
        if done as usize == jobs {
            return Ok(());
        }
        kiln.ensure_running()?;
        if Instant::now() > deadline {
            bail!("{done} of {jobs} jobs succeeded after 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn kiln_run(o: &Options, jobs: usize, workers: usize, slots: usize) -> Result<Value> {
    let mut kiln = Kiln::start(&o.bin_dir, &[]).await?;
    let r = kiln_measure(&mut kiln, jobs, workers, slots).await;
    if r.is_err() {
        eprintln!("[queue] logs in {}", kiln.dir.display());
    }
    kiln.teardown().await;
    r
}

async fn kiln_measure(kiln: &mut Kiln, jobs: usize, workers: usize, slots: usize) -> Result<Value> {
    for _ in 0..workers {
        kiln.start_worker("test-pattern", slots).await?;
    }
    let pool = kiln.pool().await?;
    let warm = kiln
        .submit("application/json", request("warm-up", WARMUP, 0))
        .await?;
    wait_succeeded(kiln, &pool, warm.parse()?, WARMUP).await?;

    let body = request("queue benchmark", jobs, WARMUP);
    let t0 = now_epoch();
    let batch = kiln.submit("application/json", body).await?;
    let submitted = now_epoch() - t0;
    let id: uuid::Uuid = batch.parse()?;
    wait_succeeded(kiln, &pool, id, jobs).await?;
    let done: Vec<(f64,)> = sqlx::query_as(
        "SELECT extract(epoch FROM finished_at)::float8 FROM jobs WHERE batch_id = $1",
    )
    .bind(id)
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    let pngs = kiln
        .s3
        .count_pngs(&format!("{}/{batch}/", kiln.tenant))
        .await?;
    ensure!(
        pngs == jobs,
        "{pngs} PNGs in the bucket for {jobs} succeeded jobs"
    );
    let mut out = figures(t0, &done, pngs);
    out["workers"] = json!(workers);
    out["slots"] = json!(slots);
    out["submit_seconds"] = json!(submitted);
    Ok(out)
}

/// A run's figures from the clock's start `t0` and each job's finish (both
/// seconds since the epoch): its seconds (to the last finish), jobs per
/// second, latency percentiles, and `pngs` in the bucket.
pub fn figures(t0: f64, finished: &[(f64,)], pngs: usize) -> Value {
    let mut lat: Vec<f64> = finished.iter().map(|(f,)| f - t0).collect();
    lat.sort_by(f64::total_cmp);
    let seconds = lat.last().copied().unwrap_or(0.0);
    json!({
        "seconds": seconds,
        "jobs_per_s": finished.len() as f64 / seconds,
        "latency_p50_s": percentile(&lat, 50.0),
        "latency_p99_s": percentile(&lat, 99.0),
        "pngs_in_bucket": pngs,
    })
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[k.min(sorted.len() - 1)]
}

async fn celery_run(o: &Options, jobs: usize, concurrency: usize) -> Result<Value> {
    let db = Database::create().await?;
    let vhost = Vhost::fresh().await?;
    let s3 = S3::from_env();
    let prefix = format!("bench-celery-{}", uuid::Uuid::new_v4().simple());
    let backend = format!(
        "db+{}",
        db.url.replacen("postgres://", "postgresql+psycopg2://", 1)
    );
    let mut envs: Vec<(String, String)> = vec![
        ("BENCH_AMQP_URL".into(), vhost.amqp_url.clone()),
        ("BENCH_RESULT_BACKEND".into(), backend),
    ];
    envs.extend(s3.envs().into_iter().map(|(k, v)| (k.to_string(), v)));
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir)?;
    let mut cmd = tokio::process::Command::new(&o.celery_python);
    cmd.args([
        "-m",
        "celery",
        "-A",
        "celery_app",
        "worker",
        "--pool",
        "prefork",
    ])
    .args(["--concurrency", &concurrency.to_string()])
    .args(["-Q", "bench", "--loglevel", "WARNING"])
    .args([
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ])
    .current_dir(&o.baselines)
    .envs(envs.iter().map(|(k, v)| (k, v)));
    let worker = Process::spawn("celery worker", dir.join("celery.log"), &mut cmd)?;
    let r = stack::python(
        &o.celery_python,
        &o.baselines.join("celery_queue.py"),
        &[
            "--jobs".into(),
            jobs.to_string(),
            "--warmup".into(),
            WARMUP.to_string(),
            "--width".into(),
            SIDE.to_string(),
            "--prefix".into(),
            format!("{prefix}/b"),
            "--dsn".into(),
            db.url.replacen("postgres://", "postgresql://", 1),
        ],
        &envs,
    )
    .await;
    if r.is_err() {
        eprintln!("[queue] celery worker log:\n{}", worker.log_tail(30));
    }
    worker.stop(Duration::from_secs(20)).await;
    let r = match r {
        Ok(mut v) => {
            let pngs = s3.count_pngs(&format!("{prefix}/b/")).await?;
            v["pngs_in_bucket"] = json!(pngs);
            v["concurrency"] = json!(concurrency);
            Ok(v)
        }
        e => e,
    };
    let _ = s3.delete_prefix(&format!("{prefix}/")).await;
    let _ = db.drop_now().await;
    let _ = vhost.reset().await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}
