//! The local stack as the benchmarks use it: a database of their own per
//! run (dropped afterwards), a RabbitMQ virtual host emptied before each
//! run, the bucket, Kiln's processes and the Python baselines.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

// The same settings, with the same defaults, as Kiln's tests.
pub use kiln_tests::{amqp_url, database_url, env_or, rabbitmq_api};

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
    api: String,
    user: String,
    pass: String,
    http: reqwest::Client,
}

impl Vhost {
    /// The benchmark virtual host, created if missing, then reset.
    pub async fn fresh() -> Result<Vhost> {
        let url = reqwest::Url::parse(&rabbitmq_api())?;
        let (user, pass) = (
            url.username().to_string(),
            url.password().unwrap_or("").to_string(),
        );
        let mut base = url.clone();
        base.set_username("").ok();
        base.set_password(None).ok();
        let api = base.as_str().trim_end_matches('/').to_string();
        let name = env_or("KILN_BENCH_VHOST", "kiln-bench");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(180))
            .build()?;
        let amqp = amqp_url();
        let (server, _) = amqp
            .rsplit_once('/')
            .context("KILN_AMQP_URL has no vhost")?;
        let v = Vhost {
            amqp_url: format!("{server}/{name}"),
            name,
            api,
            user,
            pass,
            http,
        };
        if !v
            .get(&format!("/api/vhosts/{}", v.name))
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
        self.http
            .get(format!("{}{path}", self.api))
            .basic_auth(&self.user, Some(&self.pass))
            .send()
            .await
            .context("RabbitMQ management API (is `deploy/local/stack up` done?)")
    }

    async fn create(&self) -> Result<()> {
        // On a busy broker the management API may drop the request while
        // the virtual host is still being created: then wait for it to exist.
        let put = self
            .http
            .put(format!("{}/api/vhosts/{}", self.api, self.name))
            .basic_auth(&self.user, Some(&self.pass))
            .send()
            .await
            .and_then(|r| r.error_for_status());
        if let Err(e) = put {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !matches!(self.get(&format!("/api/vhosts/{}", self.name)).await, Ok(r) if r.status().is_success())
            {
                if Instant::now() > deadline {
                    return Err(e).context("creating the benchmark virtual host");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        self.http
            .put(format!(
                "{}/api/permissions/{}/{}",
                self.api, self.name, self.user
            ))
            .basic_auth(&self.user, Some(&self.pass))
            .json(&serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    async fn names(&self, what: &str) -> Result<Vec<String>> {
        let v: Value = self
            .get(&format!("/api/{what}/{}", self.name))
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
        use lapin::options::QueueDeclareOptions;
        let conn =
            lapin::Connection::connect(&self.amqp_url, lapin::ConnectionProperties::default())
                .await?;
        let ch = conn.create_channel().await?;
        let q = ch
            .queue_declare(
                queue,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .with_context(|| format!("queue {queue} does not exist"))?;
        conn.close(200, "done").await.ok();
        Ok(q.message_count())
    }
}

/// The bucket of the local stack, as the binaries read it.
#[derive(Debug, Clone)]
pub struct S3 {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3 {
    pub fn from_env() -> S3 {
        S3 {
            endpoint: env_or("KILN_S3_ENDPOINT", "http://127.0.0.1:3900"),
            bucket: env_or("KILN_S3_BUCKET", "kiln"),
            region: env_or("KILN_S3_REGION", "garage"),
            access_key: env_or("AWS_ACCESS_KEY_ID", "GK6b696c6e2d6465762d6b6579"),
            secret_key: env_or(
                "AWS_SECRET_ACCESS_KEY",
                "6b696c6e2d6465762d7365637265742d6b65792d303030303030303030303030",
            ),
        }
    }

    pub fn envs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KILN_S3_ENDPOINT", self.endpoint.clone()),
            ("KILN_S3_BUCKET", self.bucket.clone()),
            ("KILN_S3_REGION", self.region.clone()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
        ]
    }

    fn client(&self) -> aws_sdk_s3::Client {
        let creds = aws_sdk_s3::config::Credentials::new(
            &self.access_key,
            &self.secret_key,
            None,
            None,
            "kiln-bench",
        );
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_sdk_s3::config::Region::new(self.region.clone()))
            .credentials_provider(creds)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Every key under `prefix`.
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let client = self.client();
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .with_context(|| format!("listing s3://{}/{prefix}", self.bucket))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() {
                return Ok(keys);
            }
        }
    }

    /// Deletes every object under `prefix`, a thousand per request.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        let client = self.client();
        for chunk in self.keys(prefix).await?.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()?;
            client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(Delete::builder().set_objects(Some(objects)).build()?)
                .send()
                .await?;
        }
        Ok(())
    }
}

/// A child process, killed when dropped; its output goes to a log file.
pub struct Process {
    pub name: String,
    log: PathBuf,
    child: tokio::process::Child,
}

impl Process {
    pub fn spawn(name: &str, log: PathBuf, cmd: &mut tokio::process::Command) -> Result<Process> {
        let out = std::fs::File::create(&log)
            .with_context(|| format!("creating log file {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Process {
            name: name.to_string(),
            log,
            child,
        })
    }

    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited early ({status}); end of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(12)
            );
        }
        Ok(())
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
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
