//! Kiln's own processes for cases 1 and 2: a dispatcher on a fresh
//! database and an emptied virtual host, an API token, and `kiln-worker run` processes.

use crate::stack::{free_port, wait_ready, Database, Process, Vhost, S3};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A dispatcher of its own: database, virtual host, tenant and token.
pub struct Kiln {
    pub db: Database,
    pub vhost: Vhost,
    pub s3: S3,
    pub tenant: String,
    pub token: String,
    pub base: String,
    pub dir: PathBuf,
    bin_dir: PathBuf,
    dispatcher: Option<Process>,
    workers: Vec<Process>,
}

impl Kiln {
    /// Starts `kiln-dispatcher serve` with `env` added to its environment.
    pub async fn start(bin_dir: &Path, env: &[(&str, String)]) -> Result<Kiln> {
        let dispatcher_bin = binary(bin_dir, "kiln-dispatcher")?;
        let db = Database::create().await?;
        let vhost = Vhost::fresh().await?;
        let s3 = S3::from_env();
        let tenant = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let dir = std::env::temp_dir().join(format!("kiln-{tenant}"));
        std::fs::create_dir_all(dir.join("models"))?;
        let port = free_port()?;
        let mut cmd = tokio::process::Command::new(&dispatcher_bin);
        cmd.arg("serve")
            .env("KILN_DATABASE_URL", &db.url)
            .env("KILN_AMQP_URL", &vhost.amqp_url)
            .env("KILN_BIND", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", log_filter())
            .env("NO_COLOR", "1")
            .envs(s3.envs())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let mut dispatcher =
            Process::spawn("kiln-dispatcher", dir.join("dispatcher.log"), &mut cmd)?;
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(
            &format!("{base}/readyz"),
            &mut dispatcher,
            Duration::from_secs(60),
        )
        .await?;
        let token = kiln_tests::scale::create_token(&dispatcher_bin, &db.url, &tenant).await?;
        Ok(Kiln {
            db,
            vhost,
            s3,
            tenant,
            token,
            base,
            dir,
            bin_dir: bin_dir.to_path_buf(),
            dispatcher: Some(dispatcher),
            workers: Vec::new(),
        })
    }

    /// Starts `kiln-worker run --engines ENGINES --slots SLOTS --device cpu`
    /// and waits for its health endpoint.
    pub async fn start_worker(&mut self, engines: &str, slots: usize) -> Result<()> {
        let models = self.dir.join("models");
        self.start_worker_with(engines, slots, &models, &[]).await
    }

    /// [`start_worker`](Kiln::start_worker) with the model root `models`
    /// and more flags.
    pub async fn start_worker_with(
        &mut self,
        engines: &str,
        slots: usize,
        models: &Path,
        args: &[String],
    ) -> Result<()> {
        let name = format!("kiln-worker-{}", self.workers.len() + 1);
        let health = free_port()?;
        let mut cmd = tokio::process::Command::new(binary(&self.bin_dir, "kiln-worker")?);
        cmd.args(["run", "--engines", engines, "--models"])
            .arg(models)
            .args(["--slots", &slots.to_string(), "--device", "cpu"])
            .args(args)
            .args(["--drain-timeout", "10s"])
            .args(["--worker-id", &name])
            .arg("--metrics-bind")
            .arg(format!("127.0.0.1:{health}"))
            .env("KILN_AMQP_URL", &self.vhost.amqp_url)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .env_remove("KILN_DATABASE_URL");
        for name in S3::ENV_NAMES {
            cmd.env_remove(name);
        }
        let mut p = Process::spawn(&name, self.dir.join(format!("{name}.log")), &mut cmd)?;
        wait_ready(
            &format!("http://127.0.0.1:{health}/healthz"),
            &mut p,
            Duration::from_secs(600),
        )
        .await?;
        self.workers.push(p);
        Ok(())
    }

    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(d) = self.dispatcher.as_mut() {
            d.ensure_running()?;
        }
        for w in &mut self.workers {
            w.ensure_running()?;
        }
        Ok(())
    }

    /// `POST /v1/batches` with `body` of `content_type`; returns the batch id.
    pub async fn submit(&self, content_type: &str, body: Vec<u8>) -> Result<String> {
        let resp = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()?
            .post(format!("{}/v1/batches", self.base))
            .bearer_auth(&self.token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .context("submitting a batch")?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("submitting a batch: {status}: {text}");
        }
        let batch: kiln_protocol::api::Batch = serde_json::from_str(&text)
            .with_context(|| format!("an answer that is not a batch: {text}"))?;
        Ok(batch.id.to_string())
    }

    pub async fn pool(&self) -> Result<sqlx::PgPool> {
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.db.url)
            .await?)
    }

    /// Stops every process, drops the database, empties the virtual host
    /// and deletes the tenant's objects.
    pub async fn teardown(mut self) {
        for w in self.workers.drain(..) {
            w.stop(Duration::from_secs(10)).await;
        }
        if let Some(d) = self.dispatcher.take() {
            d.stop(Duration::from_secs(10)).await;
        }
        let _ = self.s3.delete_prefix(&format!("{}/", self.tenant)).await;
        if keep_logs() {
            eprintln!("database kept: {}", self.db.url);
        } else {
            let _ = self.db.drop_now().await;
        }
        let _ = self.vhost.reset().await;
        if keep_logs() {
            eprintln!("logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `RUST_LOG` of the dispatcher: `KILN_BENCH_DISPATCHER_LOG`, default `warn`
/// (`kiln_dispatcher::relay=debug` logs each relay transaction's timings).
fn log_filter() -> String {
    std::env::var("KILN_BENCH_DISPATCHER_LOG").unwrap_or_else(|_| "warn".into())
}

/// Keeps the folder of logs and the database (instead of removing them at
/// teardown) when `KILN_BENCH_KEEP_LOGS` is set, for looking into a run.
fn keep_logs() -> bool {
    std::env::var_os("KILN_BENCH_KEEP_LOGS").is_some()
}

pub fn binary(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is not built; run `cargo build -p kiln-dispatcher -p kiln-worker` (same profile as kiln-bench) or pass --bin-dir",
            path.display()
        );
    }
    Ok(path)
}
