//! Case 1, ingest: N prompts as one NDJSON submit, timed until every job is
//! durable in PostgreSQL and confirmed by RabbitMQ; against Celery's
//! `apply_async` of N tasks to the same RabbitMQ, with and without
//! publisher confirms.

use crate::kiln::Kiln;
use crate::stack::{self, Vhost};
use crate::Options;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub async fn run(o: &Options) -> Result<Value> {
    let jobs = o.ingest_jobs;
    eprintln!("[ingest] kiln: {jobs} prompts as NDJSON");
    let kiln = kiln(o, jobs).await;
    let mut out = json!({"jobs": jobs, "kiln": flatten(kiln)});
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
        if let (Some(k), Some(c)) = (
            out["kiln"]["jobs_per_s"].as_f64(),
            out["celery_confirm"]["jobs_per_s"].as_f64(),
        ) {
            out["speedup_vs_celery_confirm"] = json!(k / c);
        }
        if let (Some(k), Some(c)) = (
            out["kiln"]["jobs_per_s"].as_f64(),
            out["celery_no_confirm"]["jobs_per_s"].as_f64(),
        ) {
            out["speedup_vs_celery_no_confirm"] = json!(k / c);
        }
    }
    Ok(out)
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

async fn kiln(o: &Options, jobs: usize) -> Result<Value> {
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

async fn measure(kiln: &Kiln, jobs: usize) -> Result<Value> {
    let body = ndjson(jobs);
    let bytes = body.len();
    let pool = kiln.pool().await?;
    let t0 = Instant::now();
    let batch = kiln.submit("application/x-ndjson", body).await?;
    let durable = t0.elapsed();
    let batch_id: uuid::Uuid = batch.parse()?;
    let deadline = Instant::now() + Duration::from_secs(900);
    let confirmed = loop {
        // The relay marks a job published only after the broker's confirm,
        // and deletes its outbox row in the same transaction.
        let (published, outbox): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM jobs WHERE batch_id = $1 AND published_attempt = attempt),
                    (SELECT count(*) FROM outbox)",
        )
        .bind(batch_id)
        .fetch_one(&pool)
        .await?;
        if published == jobs as i64 && outbox == 0 {
            break t0.elapsed();
        }
        if Instant::now() > deadline {
            bail!("{published} of {jobs} jobs confirmed after 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let queue = kiln_protocol::topology::job_queue(kiln_protocol::Engine::TestPattern);
    let depth = kiln.vhost.queue_depth(&queue).await?;
    if depth as usize != jobs {
        bail!("{queue} holds {depth} messages, expected {jobs}");
    }
    pool.close().await;
    Ok(json!({
        "body_bytes": bytes,
        "submit_seconds": durable.as_secs_f64(),
        "durable_jobs_per_s": jobs as f64 / durable.as_secs_f64(),
        "seconds": confirmed.as_secs_f64(),
        "jobs_per_s": jobs as f64 / confirmed.as_secs_f64(),
        "broker_queue_depth": depth,
    }))
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
