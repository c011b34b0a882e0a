//! Case 1, ingest: N prompts as one NDJSON submit, timed until every job is
//! durable in PostgreSQL and confirmed by RabbitMQ; against Celery's
//! `apply_async` of N tasks to the same RabbitMQ, with and without
//! publisher confirms. Kiln runs at each size of `--ingest-jobs` (the
//! largest is the one compared with Celery), and the relay's own rate
//! (jobs over the time from the 201 to the last confirm) at the smallest
//! and the largest size says whether its cost per job grows with the
//! backlog.

use crate::kiln::Kiln;
use crate::stack::{self, Vhost};
use crate::Options;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub async fn run(o: &Options) -> Result<Value> {
    let mut sizes = o.ingest_jobs.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let jobs = *sizes.last().context("--ingest-jobs is empty")?;
    let mut by_size = serde_json::Map::new();
    let mut message = None;
    for &n in &sizes {
        eprintln!("[ingest] kiln: {n} prompts as NDJSON");
        let r = kiln(o, n).await.map(|(v, m)| {
            message = Some(m);
            v
        });
        by_size.insert(n.to_string(), flatten(r));
    }
    let relay = |n: usize| &by_size[&n.to_string()]["relay_jobs_per_s"];
    let relay_ratio = match sizes.len() {
        1 => None,
        _ => ratio(relay(jobs), relay(sizes[0])),
    };
    let mut out = json!({
        "jobs": jobs,
        "kiln": by_size[&jobs.to_string()].clone(),
        "kiln_by_size": by_size,
    });
    if let Some(r) = relay_ratio {
        out["relay_rate_largest_over_smallest"] = r;
    }
    if let Some(message) = message.filter(|_| !o.no_baseline) {
        eprintln!(
            "[ingest] the broker alone: {jobs} confirmed publishes of one of Kiln's job messages"
        );
        let broker = flatten(crate::floor::publish_only(jobs, &message).await);
        if let Some(r) = ratio(&out["kiln"]["relay_jobs_per_s"], &broker["jobs_per_s"]) {
            out["relay_of_broker_floor"] = r;
        }
        out["broker_floor"] = broker;
    }
    if !o.no_baseline {
        for confirm in [false, true] {
            eprintln!("[ingest] celery: {jobs} apply_async, publisher confirms {confirm}");
            let key = if confirm {
                "celery_confirm"
            } else {
                "celery_no_confirm"
            };
            out[key] = flatten(celery(o, jobs, confirm).await);
        }
        for celery in ["celery_confirm", "celery_no_confirm"] {
            if let Some(r) = ratio(&out["kiln"]["jobs_per_s"], &out[celery]["jobs_per_s"]) {
                out[format!("speedup_vs_{celery}")] = r;
            }
        }
    }
    Ok(out)
}

/// `num / den` when both are numbers (a run that failed has none).
pub fn ratio(num: &Value, den: &Value) -> Option<Value> {
    Some(json!(num.as_f64()? / den.as_f64()?))
}

pub fn flatten(r: Result<Value>) -> Value {
    r.unwrap_or_else(|e| json!({"error": format!("{e:#}")}))
}

/// The NDJSON body: a header line, then one job per line.
fn ndjson(jobs: usize) -> Vec<u8> {
    let mut body = serde_json::to_vec(&json!({
        "engine": "test-pattern",
        "name": "ingest benchmark",
        "params": {"width": 256, "height": 256, "steps": 1, "seed": 7},
    }))
    .expect("json");
    body.push(b'\n');
    for i in 0..jobs {
        let line = json!({"prompt": format!("a prompt for the ingest benchmark, number {i}")});
        serde_json::to_writer(&mut body, &line).expect("json");
        body.push(b'\n');
    }
    body
}

/// Kiln's figures at `jobs`, and one of the job messages it published.
async fn kiln(o: &Options, jobs: usize) -> Result<(Value, Vec<u8>)> {
    // The relay keeps at most KILN_RELAY_WINDOW unstarted jobs per engine in
    // the broker (so that later high-priority work is not stuck behind a
    // backlog); with no worker running, the window must hold the whole batch
    // for every job to reach the broker.
    let window = (jobs + 1).to_string();
    let kiln = Kiln::start(&o.bin_dir, &[("KILN_RELAY_WINDOW", window)]).await?;
    let result = measure(&kiln, jobs).await;
    if result.is_err() {
        eprintln!("[ingest] dispatcher log in {}", kiln.dir.display());
    }
    kiln.teardown().await;
    result
}

async fn measure(kiln: &Kiln, jobs: usize) -> Result<(Value, Vec<u8>)> {
    let body = ndjson(jobs);
    let bytes = body.len();
    let pool = kiln.pool().await?;
    let t0 = Instant::now();
    let batch = kiln.submit("application/x-ndjson", body).await?;
    let durable = t0.elapsed();
    let batch_id: uuid::Uuid = batch.parse()?;
    let deadline = Instant::now() + Duration::from_secs(900);
    // The relay deletes a job's outbox row in the transaction that marks it
    // published, after the broker's confirm: an empty outbox is every job
    // confirmed (checked below by counting them once). Polling a count of
    // the batch's jobs instead would load PostgreSQL during the run.
    let confirmed = loop {
        let left: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox)")
            .fetch_one(&pool)
            .await?;
        if !left {
            break t0.elapsed();
        }
        if Instant::now() > deadline {
            bail!("jobs still unconfirmed after 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let published: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE batch_id = $1 AND published_attempt = attempt",
    )
    .bind(batch_id)
    .fetch_one(&pool)
    .await?;
    if published != jobs as i64 {
        bail!("{published} of {jobs} jobs marked published with an empty outbox");
    }
    let queue = kiln_protocol::topology::job_queue(kiln_protocol::Engine::TestPattern);
    let depth = kiln.vhost.queue_depth(&queue).await?;
    if depth as usize != jobs {
        bail!("{queue} holds {depth} messages, expected {jobs}");
    }
    // Updates of the jobs table that were HOT (no index touched): marking
    // a job published should be one. The statistics reach the view within
    // about a second of each transaction.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (updates, hot): (i64, i64) = sqlx::query_as(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'jobs'",
    )
    .fetch_one(&pool)
    .await?;
    let (job_id, tenant, attempt, prompt, params): (uuid::Uuid, String, i32, String, Value) =
        sqlx::query_as(
            "SELECT id, tenant, attempt, prompt, params FROM jobs WHERE batch_id = $1 LIMIT 1",
        )
        .bind(batch_id)
        .fetch_one(&pool)
        .await?;
    // The job's URLs, as the relay signs them (the baseline's messages are
    // as large as Kiln's).
    let keep = params.get("keep").and_then(Value::as_u64).unwrap_or(1) as u32;
    let urls = kiln.s3.presigner(Duration::from_secs(24 * 3600)).job_urls(
        &tenant,
        batch_id,
        job_id,
        keep,
        None,
        std::time::SystemTime::now(),
    );
    let message = kiln_protocol::StoredJobMessage::new(
        job_id,
        batch_id,
        &tenant,
        attempt as u32,
        // The size of a real token (64 hex digits).
        &"0".repeat(64),
        kiln_protocol::Engine::TestPattern,
        &prompt,
        &params,
    )
    .with_urls(&urls)
    .encode();
    pool.close().await;
    let figures = json!({
        "jobs_updates": updates,
        "jobs_hot_updates": hot,
        "body_bytes": bytes,
        "submit_seconds": durable.as_secs_f64(),
        "durable_jobs_per_s": jobs as f64 / durable.as_secs_f64(),
        "seconds": confirmed.as_secs_f64(),
        "jobs_per_s": jobs as f64 / confirmed.as_secs_f64(),
        "relay_jobs_per_s": jobs as f64 / (confirmed - durable).as_secs_f64(),
        "broker_queue_depth": depth,
    });
    Ok((figures, message))
}

async fn celery(o: &Options, jobs: usize, confirm: bool) -> Result<Value> {
    let vhost = Vhost::fresh().await?;
    let envs = vec![
        ("BENCH_AMQP_URL".to_string(), vhost.amqp_url.clone()),
        (
            "BENCH_CONFIRM".to_string(),
            if confirm { "1" } else { "0" }.to_string(),
        ),
    ];
    let r = stack::python(
        &o.celery_python,
        &o.baselines.join("celery_ingest.py"),
        &["--jobs".to_string(), jobs.to_string()],
        &envs,
    )
    .await;
    vhost.reset().await.context("resetting the virtual host")?;
    r
}
