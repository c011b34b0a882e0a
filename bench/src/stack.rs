//! The local stack as the benchmarks use it: a database of their own per
//! run (dropped afterwards), a RabbitMQ virtual host emptied before each
//! run, the bucket, Kiln's processes and the Python baselines.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

// The same settings, with the same defaults, as Kiln's tests.
pub use kiln_tests::process::{free_port, Process};
pub use kiln_tests::{amqp_url, database_url, env_or, Management, S3};

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A database created for one run and dropped by [`Database::drop_now`].
pub struct Database {
    pub name: String,
    pub url: String,
    server: String,
}

impl Database {
    pub async fn create() -> Result<Database> {
        use sqlx::Connection;
        let base = database_url();
        let (server, _) = base
            .rsplit_once('/')
            .context("KILN_DATABASE_URL has no database name")?;
        let name = unique("kiln_bench");
        let mut conn = sqlx::PgConnection::connect(&format!("{server}/postgres"))
            .await
            .context("connecting to PostgreSQL (is `deploy/local/stack up` done?)")?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        Ok(Database {
            url: format!("{server}/{name}"),
            name,
            server: server.to_string(),
        })
    }

    pub async fn drop_now(&self) -> Result<()> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&format!("{}/postgres", self.server)).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}

/// The benchmarks' RabbitMQ virtual host (`KILN_BENCH_VHOST`, default
/// `kiln-bench`), emptied of every queue and exchange before each run.
///
/// Creating and deleting a virtual host is slow on a busy RabbitMQ 3.x (the
/// operations are serialised broker-wide, and one stuck deletion holds up
/// every other test's creation), so the benchmarks reuse one and reset it
/// with AMQP deletes instead: a reset virtual host is as fresh as a new one.
pub struct Vhost {
    pub name: String,
    pub amqp_url: String,
    api: Management,
}

impl Vhost {
    /// The benchmark virtual host, created if missing, then reset.
    pub async fn fresh() -> Result<Vhost> {
        let name = env_or("KILN_BENCH_VHOST", "kiln-bench");
        let api = Management::with_client(
            reqwest::Client::builder()
                .timeout(Duration::from_secs(180))
                .build()?,
        )?;
        let amqp = amqp_url();
        let (server, _) = amqp
            .rsplit_once('/')
            .context("KILN_AMQP_URL has no vhost")?;
        let v = Vhost {
            amqp_url: format!("{server}/{name}"),
            name,
            api,
        };
        if !v
            .get(&format!("vhosts/{}", v.name))
            .await?
            .status()
            .is_success()
        {
            v.create().await?;
        }
        v.reset().await?;
        Ok(v)
    }

    async fn get(&self, path: &str) -> Result<reqwest::Response> {
        self.api
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .context("RabbitMQ management API (is `deploy/local/stack up` done?)")
    }

    async fn create(&self) -> Result<()> {
        // On a busy broker the management API may drop the request while
        // the virtual host is still being created: then wait for it to exist.
        let put = self
            .api
            .request(reqwest::Method::PUT, &format!("vhosts/{}", self.name))
            .send()
            .await
            .and_then(|r| r.error_for_status());
        if let Err(e) = put {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !matches!(self.get(&format!("vhosts/{}", self.name)).await, Ok(r) if r.status().is_success())
            {
                if Instant::now() > deadline {
                    return Err(e).context("creating the benchmark virtual host");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        self.api
            .request(
                reqwest::Method::PUT,
                &format!("permissions/{}/{}", self.name, self.api.user),
            )
            .json(&serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    async fn names(&self, what: &str) -> Result<Vec<String>> {
        let v: Value = self
            .get(&format!("{what}/{}", self.name))
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Deletes every queue and every exchange that is not built in.
    pub async fn reset(&self) -> Result<()> {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        let queues = self.names("queues").await?;
        let exchanges: Vec<String> = self
            .names("exchanges")
            .await?
            .into_iter()
            .filter(|n| !n.is_empty() && !n.starts_with("amq."))
            .collect();
        if queues.is_empty() && exchanges.is_empty() {
            return Ok(());
        }
        let conn =
            lapin::Connection::connect(&self.amqp_url, lapin::ConnectionProperties::default())
                .await
                .context("connecting to the benchmark virtual host")?;
        let ch = conn.create_channel().await?;
        for q in &queues {
            ch.queue_delete(q, QueueDeleteOptions::default()).await.ok();
        }
        for x in &exchanges {
            ch.exchange_delete(x, ExchangeDeleteOptions::default())
                .await
                .ok();
        }
        conn.close(200, "reset").await.ok();
        Ok(())
    }

    /// Messages ready in `queue` (a passive declare).
    pub async fn queue_depth(&self, queue: &str) -> Result<u32> {
        kiln_tests::queue_depth(&self.amqp_url, queue).await
    }
}

/// Waits until `url` answers 2xx, or errors with the process's log.
pub async fn wait_ready(url: &str, proc: &mut Process, limit: Duration) -> Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + limit;
    loop {
        proc.ensure_running()?;
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} was not ready within {limit:?}; end of its log:\n{}",
                proc.name,
                proc.log_tail(12)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a Python baseline and returns the JSON object on the last line of
/// its standard output; its standard error is passed through.
pub async fn python(
    py: &Path,
    script: &Path,
    args: &[String],
    envs: &[(String, String)],
) -> Result<Value> {
    let dir = script.parent().context("script without a folder")?;
    let out = tokio::process::Command::new(py)
        .arg(script)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .env("PYTHONUNBUFFERED", "1")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("running {} {}", py.display(), script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} failed ({}); end of its output:\n{}",
            script.display(),
            out.status,
            tail(&stdout, 20)
        );
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| {
            format!(
                "{} printed no JSON:\n{}",
                script.display(),
                tail(&stdout, 20)
            )
        })?;
    serde_json::from_str(line)
        .with_context(|| format!("{} printed bad JSON: {line}", script.display()))
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
