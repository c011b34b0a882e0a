//! The `floor` case: what the services themselves allow for the queue
//! case's work, with none of Kiln's logic, so that Kiln's queue overhead
//! can be stated as a fraction of it.
//!
//! For N jobs, the simplest loop that does to PostgreSQL, RabbitMQ and the
//! bucket what Kiln's path does per job:
//! - PostgreSQL: every job inserted by one statement (as intake does), then
//!   per job an UPDATE to running, and an UPDATE to succeeded with an
//!   INSERT of its result in one transaction; plain tables, a primary key
//!   each, no triggers;
//! - RabbitMQ: one persistent publish per job to a durable quorum queue,
//!   confirmed (all in flight at once, as the relay does), consumed with
//!   manual acks and a prefetch of one; per job two persistent, confirmed
//!   publishes (started, succeeded) to a second quorum queue, which one
//!   consumer drains and acks;
//! - the bucket: the same 64×64 test pattern as a PNG with the same text
//!   chunks, and a metadata JSON, two PUTs.
//!
//! C loops run at once (C = processes × slots of the Kiln run it stands
//! beside), each with a connection and a channel of its own, like C
//! single-slot workers. The clock starts before the insert and stops when
//! the last job is marked succeeded; latency is the time from the start to
//! each job's `finished_at`.

use crate::queue::figures;
use crate::stack::{Database, Vhost, S3};
use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const JOBS: &str = "floor.jobs";
const INGEST: &str = "floor.ingest";
const EVENTS: &str = "floor.events";

const SCHEMA: &str = "
CREATE TABLE jobs (
    id uuid PRIMARY KEY, seq integer NOT NULL, prompt text NOT NULL, params jsonb NOT NULL,
    state text NOT NULL, worker text, started_at timestamptz, finished_at timestamptz
);
CREATE TABLE results (
    job_id uuid NOT NULL, rank integer NOT NULL, seed bigint NOT NULL, key text NOT NULL,
    PRIMARY KEY (job_id, rank)
)";

/// One measurement: `jobs` through `loops` concurrent loops; `side` is
/// the image's width and height.
pub async fn measure(jobs: usize, loops: usize, side: u32) -> Result<Value> {
    let db = Database::create().await?;
    let vhost = Vhost::fresh().await?;
    let s3 = S3::from_env();
    let prefix = format!("bench-floor-{}", Uuid::new_v4().simple());
    let r = run(&db.url, &vhost.amqp_url, &s3, &prefix, jobs, loops, side).await;
    let _ = s3.delete_prefix(&format!("{prefix}/")).await;
    let _ = db.drop_now().await;
    let _ = vhost.reset().await;
    r
}

async fn run(
    db_url: &str,
    amqp_url: &str,
    s3: &S3,
    prefix: &str,
    jobs: usize,
    loops: usize,
    side: u32,
) -> Result<Value> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(loops as u32 + 2)
        .connect(db_url)
        .await?;
    sqlx::raw_sql(SCHEMA).execute(&pool).await?;
    let publisher = connect(amqp_url).await?;
    let ch = publisher.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    for q in [JOBS, EVENTS] {
        declare(&ch, q).await?;
    }
    let events = connect(amqp_url).await?;
    let drained = tokio::spawn(drain_events(events, 2 * jobs));
    let shared = Arc::new(Shared {
        pool: pool.clone(),
        s3: s3.client(),
        bucket: s3.bucket.clone(),
        prefix: prefix.to_string(),
        side,
    });
    let mut workers = Vec::with_capacity(loops);
    for i in 0..loops {
        let conn = connect(amqp_url).await?;
        workers.push(tokio::spawn(work(
            conn,
            shared.clone(),
            format!("floor-{i}"),
        )));
    }

    let t0 = crate::queue::now_epoch();
    let ids: Vec<Uuid> = (0..jobs).map(|_| Uuid::now_v7()).collect();
    let prompts: Vec<String> = (0..jobs)
        .map(|i| format!("queue benchmark prompt {i}"))
        .collect();
    let seqs: Vec<i32> = (0..jobs as i32).collect();
    let params = json!({"width": side, "height": side, "steps": 1, "seed": 7});
    sqlx::query(
        "INSERT INTO jobs (id, seq, prompt, params, state)
         SELECT id, seq, prompt, $4, 'queued' FROM unnest($1::uuid[], $2::int[], $3::text[]) AS t (id, seq, prompt)",
    )
    .bind(&ids)
    .bind(&seqs)
    .bind(&prompts)
    .bind(&params)
    .execute(&pool)
    .await?;
    let mut confirms = Vec::with_capacity(jobs);
    for (id, prompt) in ids.iter().zip(&prompts) {
        let body = serde_json::to_vec(&json!({"id": id, "prompt": prompt, "seed": 7}))?;
        confirms.push(publish(&ch, JOBS, &body).await?);
    }
    for c in confirms {
        ensure!(c.await?.is_ack(), "the broker refused a job");
    }

    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .fetch_one(&pool)
            .await?;
        if done as usize == jobs {
            break;
        }
        for w in &workers {
            ensure!(!w.is_finished(), "a floor loop stopped early");
        }
        ensure!(
            Instant::now() < deadline,
            "{done} of {jobs} floor jobs done after 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done: Vec<(f64,)> =
        sqlx::query_as("SELECT extract(epoch FROM finished_at)::float8 FROM jobs")
            .fetch_all(&pool)
            .await?;
    for w in workers {
        w.abort();
    }
    let events = tokio::time::timeout(Duration::from_secs(60), drained)
        .await
        .context("draining the floor's events")???;
    pool.close().await;
    let pngs = s3.count_pngs(&format!("{prefix}/")).await?;
    ensure!(pngs == jobs, "{pngs} floor PNGs for {jobs} jobs");
    let mut out = figures(t0, &done, pngs);
    out["loops"] = json!(loops);
    out["events_consumed"] = json!(events);
    Ok(out)
}

struct Shared {
    pool: sqlx::PgPool,
    s3: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    side: u32,
}

async fn connect(url: &str) -> Result<Connection> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")
}

async fn declare(ch: &Channel, queue: &str) -> Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue, durable, kiln_protocol::topology::quorum())
        .await?;
    Ok(())
}

async fn publish(
    ch: &Channel,
    queue: &str,
    body: &[u8],
) -> Result<lapin::publisher_confirm::PublisherConfirm> {
    Ok(ch
        .basic_publish(
            "",
            queue,
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?)
}

/// One consumer of the events queue; answers how many it acked.
async fn drain_events(conn: Connection, expect: usize) -> Result<usize> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(256, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            EVENTS,
            "floor-events",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut n = 0;
    while n < expect {
        let Some(d) = consumer.next().await else {
            break;
        };
        d?.ack(BasicAckOptions::default()).await?;
        n += 1;
    }
    Ok(n)
}

/// One loop: take a job, mark it running, report `started`, render and
/// encode, two PUTs, report `succeeded`, mark it succeeded with its
/// result, ack.
async fn work(conn: Connection, s: Arc<Shared>, name: String) -> Result<()> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.basic_qos(1, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            JOBS,
            &name,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(d) = consumer.next().await {
        let d = d?;
        let msg: Value = serde_json::from_slice(&d.data)?;
        let id: Uuid = serde_json::from_value(msg["id"].clone())?;
        let prompt = msg["prompt"].as_str().unwrap_or_default().to_string();
        let seed = msg["seed"].as_u64().unwrap_or(0);
        sqlx::query(
            "UPDATE jobs SET state = 'running', worker = $2, started_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(&name)
        .execute(&s.pool)
        .await?;
        let started = json!({"job_id": id, "kind": "started", "worker": name});
        publish(&ch, EVENTS, &serde_json::to_vec(&started)?)
            .await?
            .await?;
        let image = kiln_worker::engine::test_pattern::pattern(&prompt, seed, s.side, s.side);
        let texts = [
            ("prompt", prompt.clone()),
            ("seed", seed.to_string()),
            ("engine", "test-pattern".to_string()),
            ("params", msg.to_string()),
            ("score", String::new()),
            ("rank", "0".to_string()),
        ];
        let png = kiln_worker::runtime::output::encode_png(&image, &texts)?;
        let key = format!("{}/{id}/0.png", s.prefix);
        put(&s, &key, png, "image/png").await?;
        let meta = json!({"job_id": id, "prompt": prompt, "worker": name,
                          "results": [{"rank": 0, "seed": seed, "key": key}]});
        let meta_key = format!("{}/{id}/metadata.json", s.prefix);
        put(
            &s,
            &meta_key,
            serde_json::to_vec_pretty(&meta)?,
            "application/json",
        )
        .await?;
        let succeeded = json!({"job_id": id, "kind": "succeeded", "results": [key]});
        publish(&ch, EVENTS, &serde_json::to_vec(&succeeded)?)
            .await?
            .await?;
        let mut tx = s.pool.begin().await?;
        sqlx::query("UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO results (job_id, rank, seed, key) VALUES ($1, 0, $2, $3)")
            .bind(id)
            .bind(seed as i64)
            .bind(&key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        d.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

async fn put(s: &Shared, key: &str, body: Vec<u8>, content_type: &str) -> Result<()> {
    s.s3.put_object()
        .bucket(&s.bucket)
        .key(key)
        .content_type(content_type)
        .body(body.into())
        .send()
        .await
        .with_context(|| format!("PUT {key}"))?;
    Ok(())
}

/// The broker's own limit for the ingest case: `jobs` persistent,
/// mandatory publishes of `message` (one of Kiln's job messages) to a
/// quorum queue from one channel, all in flight at once, timed from the
/// first publish to the last confirm.
pub async fn publish_only(jobs: usize, message: &[u8]) -> Result<Value> {
    let vhost = Vhost::fresh().await?;
    let r = async {
        let conn = connect(&vhost.amqp_url).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        declare(&ch, INGEST).await?;
        let t0 = Instant::now();
        let mut confirms = Vec::with_capacity(jobs);
        for i in 0..jobs {
            let confirm = ch
                .basic_publish(
                    "",
                    INGEST,
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    message,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_message_id(format!("{i}:1").into()),
                )
                .await?;
            confirms.push(confirm);
        }
        for c in confirms {
            ensure!(c.await?.is_ack(), "the broker refused a message");
        }
        let seconds = t0.elapsed().as_secs_f64();
        conn.close(200, "done").await.ok();
        Ok(json!({
            "jobs": jobs,
            "message_bytes": message.len(),
            "seconds": seconds,
            "jobs_per_s": jobs as f64 / seconds,
        }))
    }
    .await;
    let _ = vhost.reset().await;
    r
}
