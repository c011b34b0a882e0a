//! Kiln as separate processes, for tests that scale workers in and out.
//!
//! [`Cluster::start`] gives a test its own database, virtual host and
//! tenant, starts `kiln-dispatcher serve` on a free port and creates an API
//! token; [`Cluster::start_worker`] adds `kiln-worker run` processes, which
//! can be stopped with SIGTERM ([`Process::terminate`]) like an orchestrator
//! does. [`Api`] is a small client of the HTTP API, and [`metric`] reads one
//! sample from the Prometheus text of `/metrics`.
//!
//! Every process writes its output to a log file in the cluster's folder
//! under the system temporary directory; failures quote the end of it, and
//! the folder stays when a test fails.

use crate::{bin, fresh_database, fresh_tenant, fresh_vhost, S3};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A child process that is killed when dropped.
pub struct Process {
    pub name: String,
    log: PathBuf,
    child: tokio::process::Child,
    exited: Option<ExitStatus>,
}

impl Process {
    fn spawn(name: &str, log: PathBuf, cmd: &mut tokio::process::Command) -> Result<Process> {
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
            exited: None,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The exit status if the process has ended.
    pub fn try_exited(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait()?;
        }
        Ok(self.exited)
    }

    /// Errors with the end of the log if the process has ended.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.try_exited()? {
            bail!(
                "{} exited early ({status}); end of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// Sends SIGTERM, as Kubernetes and Docker do before stopping a container.
    pub fn terminate(&self) -> Result<()> {
        let pid = self.pid().context("process already reaped")?;
        let status = std::process::Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}")])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -TERM {pid} ({}) failed: {status}", self.name);
        }
        Ok(())
    }

    /// Waits for the process to end.
    pub async fn wait(&mut self, limit: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.exited {
            return Ok(s);
        }
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                self.exited = Some(status);
                Ok(status)
            }
            Err(_) => bail!(
                "{} still running after {limit:?}; end of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(30)
            ),
        }
    }

    /// The last `n` lines of the process's output.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn binary(name: &str) -> Result<PathBuf> {
    let path = bin(name);
    if !path.is_file() {
        bail!(
            "{} is not built; run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// One test's Kiln: its database, virtual host, tenant, a dispatcher and
/// the workers it started.
pub struct Cluster {
    pub database_url: String,
    pub amqp_url: String,
    pub s3: S3,
    pub tenant: String,
    pub dir: PathBuf,
    pub dispatcher: Process,
    pub api: Api,
    workers: usize,
}

impl Cluster {
    /// Starts a dispatcher with `env` added to its environment (for example
    /// `KILN_RELAY_WINDOW`) and creates a token for a fresh tenant.
    pub async fn start(env: &[(&str, &str)]) -> Result<Cluster> {
        let dispatcher_bin = binary("kiln-dispatcher")?;
        binary("kiln-worker")?;
        let database_url = fresh_database().await?;
        let amqp_url = fresh_vhost().await?;
        let s3 = S3::from_env();
        let tenant = fresh_tenant();
        let dir = std::env::temp_dir().join(format!("kiln-{tenant}"));
        std::fs::create_dir_all(dir.join("models"))?;
        let port = free_port()?;
        let mut cmd = tokio::process::Command::new(&dispatcher_bin);
        cmd.arg("serve")
            .env("KILN_DATABASE_URL", &database_url)
            .env("KILN_AMQP_URL", &amqp_url)
            .env("KILN_BIND", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .envs(s3.envs())
            .envs(env.iter().copied());
        let mut dispatcher =
            Process::spawn("kiln-dispatcher", dir.join("dispatcher.log"), &mut cmd)?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            dispatcher.ensure_running()?;
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the dispatcher was not ready within 60 s; end of its log:\n{}",
                    dispatcher.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let token = create_token(&dispatcher_bin, &database_url, &tenant).await?;
        Ok(Cluster {
            database_url,
            amqp_url,
            s3,
            tenant,
            dir,
            dispatcher,
            api: Api { http, base, token },
            workers: 0,
        })
    }

    /// Starts `kiln-worker run` on the CPU for `engines`.
    pub fn start_worker(
        &mut self,
        engines: &str,
        slots: u32,
        drain_timeout_s: u32,
    ) -> Result<Process> {
        self.workers += 1;
        let name = format!("kiln-worker-{}", self.workers);
        let mut cmd = tokio::process::Command::new(binary("kiln-worker")?);
        cmd.args(["run", "--engines", engines, "--models"])
            .arg(self.dir.join("models"))
            .args(["--slots", &slots.to_string(), "--device", "cpu"])
            .args(["--drain-timeout", &drain_timeout_s.to_string()])
            .env("KILN_AMQP_URL", &self.amqp_url)
            .env("KILN_WORKER_ID", &name)
            .env("KILN_METRICS_BIND", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env_remove("KILN_DATABASE_URL")
            .envs(self.s3.envs());
        Process::spawn(&name, self.dir.join(format!("{name}.log")), &mut cmd)
    }

    /// Deletes the log folder; a test calls it once it passed, so that the
    /// logs of a failed run stay for reading.
    pub fn remove_logs(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Every object key under `{tenant}/{batch}/`.
    pub async fn object_keys(&self, batch: &str) -> Result<Vec<String>> {
        let client = self.s3.client();
        let prefix = format!("{}/{batch}/", self.tenant);
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = client
                .list_objects_v2()
                .bucket(&self.s3.bucket)
                .prefix(&prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .with_context(|| format!("listing s3://{}/{prefix}", self.s3.bucket))?;
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

    /// Ready messages in a broker queue, as a passive declare reports them
    /// (what KEDA's RabbitMQ scaler reads in AMQP mode): deliveries that
    /// workers hold unacked are not counted.
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

async fn create_token(bin: &Path, database_url: &str, tenant: &str) -> Result<String> {
    let out = tokio::process::Command::new(bin)
        .args(["token", "create", "--tenant", tenant])
        .env("KILN_DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .context("running kiln-dispatcher token create")?;
    if !out.status.success() {
        bail!(
            "kiln-dispatcher token create failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8(out.stdout)?;
    stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .context("kiln-dispatcher token create printed no token")
}

/// A client of the dispatcher's HTTP API, authenticated as one tenant.
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Api {
    async fn json(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Value> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| what.to_string())?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            bail!("{what}: {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("{what}: not JSON: {body}"))
    }

    /// `POST /v1/batches`; returns the batch.
    pub async fn submit(&self, batch: &Value) -> Result<Value> {
        self.json(
            self.http
                .post(format!("{}/v1/batches", self.base))
                .json(batch),
            "submitting a batch",
        )
        .await
    }

    /// `GET /v1/batches/{id}`.
    pub async fn batch(&self, id: &str) -> Result<Value> {
        self.json(
            self.http.get(format!("{}/v1/batches/{id}", self.base)),
            "reading a batch",
        )
        .await
    }

    /// Every job of a batch, following `next_cursor`.
    pub async fn jobs(&self, batch: &str) -> Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{}/v1/batches/{batch}/jobs?limit=1000", self.base);
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page = self.json(self.http.get(url), "listing jobs").await?;
            let items = page["items"].as_array().context("a page without items")?;
            all.extend(items.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return Ok(all),
            }
        }
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> Result<String> {
        let resp = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .context("reading /metrics")?
            .error_for_status()?;
        Ok(resp.text().await?)
    }

    /// `kiln_backlog{engine}`: jobs queued or running.
    pub async fn backlog(&self, engine: &str) -> Result<f64> {
        let text = self.metrics().await?;
        metric(&text, "kiln_backlog", &[("engine", engine)])
            .with_context(|| format!("no kiln_backlog{{engine=\"{engine}\"}} in /metrics:\n{text}"))
    }
}

/// The value of the sample `name{labels...}` in Prometheus text format; the
/// sample may carry more labels than those asked for.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric_name != name {
                return None;
            }
            let have: Vec<(&str, &str)> = label_text
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k.trim(), v.trim().trim_matches('"')))
                })
                .collect();
            labels
                .iter()
                .all(|want| have.contains(want))
                .then(|| value.trim().parse().ok())
                .flatten()
        })
}

/// The succeeded count of a batch, from `counts`.
pub fn succeeded(batch: &Value) -> i64 {
    batch["counts"]["succeeded"].as_i64().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::metric;

    #[test]
    fn reads_a_labelled_sample() {
        let text = "# HELP kiln_backlog x\n# TYPE kiln_backlog gauge\n\
                    kiln_backlog{engine=\"dalle\"} 3\n\
                    kiln_backlog{engine=\"test-pattern\"} 2000\n\
                    kiln_jobs{state=\"queued\",engine=\"test-pattern\"} 7\n";
        assert_eq!(
            metric(text, "kiln_backlog", &[("engine", "test-pattern")]),
            Some(2000.0)
        );
        assert_eq!(
            metric(text, "kiln_backlog", &[("engine", "dalle")]),
            Some(3.0)
        );
        assert_eq!(
            metric(text, "kiln_jobs", &[("engine", "test-pattern")]),
            Some(7.0)
        );
        assert_eq!(
            metric(text, "kiln_backlog", &[("engine", "vqgan-clip")]),
            None
        );
        assert_eq!(metric(text, "kiln_back", &[]), None);
    }
}
