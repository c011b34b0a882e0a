//! Measures a bulk NDJSON submit: seconds until the batch is durable (the
//! 201 answer) and until every job is confirmed by the broker (the outbox
//! is empty). Runs against the local stack on a fresh database and vhost,
//! which it removes afterwards.
//!
//! `cargo run --release -p kiln-dispatcher --example bulk_submit -- [JOBS] [RELAY_BATCH]`
//! prints one JSON object.

use kiln_dispatcher::{Application, Settings};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("KILN_LOG").is_some() {
        kiln_protocol::logging::init();
    }
    let jobs: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let relay_batch: Option<i64> = std::env::args().nth(2).map(|s| s.parse()).transpose()?;
    let db_url = kiln_tests::fresh_database().await?;
    let amqp_url = kiln_tests::fresh_vhost().await?;
    let mut s = Settings::defaults();
    s.connections.database_url = db_url.clone();
    s.connections.amqp_url = amqp_url.clone();
    s.bind = "127.0.0.1:0".into();
    s.max_batch_jobs = jobs;
    // Measure publication itself: no window holds jobs back.
    s.relay_window = jobs as i64 + 1;
    s.relay_interval = Duration::from_millis(20);
    if let Some(b) = relay_batch {
        s.relay_batch = b;
    }
    let relay_batch = s.relay_batch;
    let app = Application::build(s).await?;
    let base = format!("http://{}", app.local_addr());
    let stop = app.stop_token();
    let server = tokio::spawn(app.run_until_stopped());
    let db = kiln_dispatcher::connect_db(&db_url, 2).await?;
    let token = kiln_dispatcher::auth::create_token(&db, "bench").await?;

    let mut body = String::from("{\"engine\":\"test-pattern\",\"name\":\"bulk\"}\n");
    for i in 0..jobs {
        body.push_str(&format!(
            "{{\"prompt\":\"a lighthouse on a cliff at dusk, variation {i}\"}}\n"
        ));
    }
    let bytes = body.len();
    let started = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/batches"))
        .bearer_auth(&token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(
        resp.status() == 201,
        "submit failed: {}",
        resp.text().await?
    );
    let durable = started.elapsed();
    loop {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&db)
            .await?;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let confirmed = started.elapsed();
    let published: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE published_attempt = 1")
            .fetch_one(&db)
            .await?;
    anyhow::ensure!(published == jobs as i64, "{published} of {jobs} published");
    println!(
        "{}",
        serde_json::json!({
            "jobs": jobs,
            "relay_batch": relay_batch,
            "body_bytes": bytes,
            "durable_seconds": durable.as_secs_f64(),
            "confirmed_seconds": confirmed.as_secs_f64(),
            "jobs_per_second": jobs as f64 / confirmed.as_secs_f64(),
        })
    );

    stop.cancel();
    server.await??;
    db.close().await;
    cleanup(&db_url, &amqp_url).await
}

async fn cleanup(db_url: &str, amqp_url: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let (server, name) = db_url.rsplit_once('/').unwrap();
    let mut conn = sqlx::PgConnection::connect(&format!("{server}/postgres")).await?;
    // A database name made by kiln_tests::fresh_database: letters, digits, '_'.
    anyhow::ensure!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    let vhost = amqp_url.rsplit_once('/').unwrap().1;
    let api = reqwest::Url::parse(&kiln_tests::rabbitmq_api())?;
    let (user, pass) = (
        api.username().to_string(),
        api.password().unwrap_or("").to_string(),
    );
    let mut base = api.clone();
    base.set_username("").ok();
    base.set_password(None).ok();
    reqwest::Client::new()
        .delete(format!(
            "{}/api/vhosts/{vhost}",
            base.as_str().trim_end_matches('/')
        ))
        .basic_auth(user, Some(pass))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}
