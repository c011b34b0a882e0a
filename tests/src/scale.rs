//! Kiln as separate processes, for tests that scale workers in and out.
//!
//! [`Cluster::start`] gives a test its own database, virtual host and
//! tenant, starts `kiln-dispatcher serve` on a free port and creates an API
//! token; [`Cluster::start_worker`] adds `kiln-worker run` processes, which
//! can be stopped with SIGTERM ([`Process::terminate`]) like an orchestrator
//! does. [`Api`] is a small client of the HTTP API that sends and decodes the
//! shared contract's types ([`kiln_protocol::api`]), and [`metric`] reads one
//! sample from the Prometheus text of `/metrics`.
//!
//! Every process writes its output to a log file in the cluster's folder
//! under the system temporary directory; failures quote the end of it, and
//! the folder stays when a test fails.

use crate::process::{binary, WorkerOpts};
use crate::{fresh_database, fresh_tenant, fresh_vhost, S3};
use anyhow::{bail, Context, Result};
use kiln_protocol::api::{Batch, BatchPage, BatchRequest, Job, JobCancel, JobPage};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub use crate::process::{free_port, Process};

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

/// Where a cluster's state lives: by default a fresh database and virtual
/// host on the local stack and its bucket.
pub struct Services {
    pub database_url: String,
    pub amqp_url: String,
    pub s3: S3,
}

impl Services {
    pub async fn fresh() -> Result<Services> {
        Ok(Services {
            database_url: fresh_database().await?,
            amqp_url: fresh_vhost().await?,
            s3: S3::from_env(),
        })
    }
}

impl Cluster {
    /// Starts a dispatcher with `env` added to its environment (for example
    /// `KILN_RELAY_WINDOW`) and creates a token for a fresh tenant.
    pub async fn start(env: &[(&str, &str)]) -> Result<Cluster> {
        Cluster::start_on(Services::fresh().await?, env).await
    }

    /// [`Cluster::start`] on the given services.
    pub async fn start_on(services: Services, env: &[(&str, &str)]) -> Result<Cluster> {
        let dispatcher_bin = binary("kiln-dispatcher")?;
        binary("kiln-worker")?;
        let tenant = fresh_tenant();
        let dir = std::env::temp_dir().join(format!("kiln-{tenant}"));
        std::fs::create_dir_all(dir.join("models"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let (dispatcher, base) =
            spawn_dispatcher(&services, &dir, &http, "dispatcher", env).await?;
        let token = create_token(&dispatcher_bin, &services.database_url, &tenant).await?;
        Ok(Cluster {
            database_url: services.database_url,
            amqp_url: services.amqp_url,
            s3: services.s3,
            tenant,
            dir,
            dispatcher,
            api: Api { http, base, token },
            workers: 0,
        })
    }

    /// Starts one more `kiln-dispatcher serve` on the cluster's services,
    /// logging to `{name}.log`, and waits until it is ready; returns it and
    /// an API client for it, with the cluster's token.
    pub async fn start_dispatcher(
        &self,
        name: &str,
        env: &[(&str, &str)],
    ) -> Result<(Process, Api)> {
        let services = Services {
            database_url: self.database_url.clone(),
            amqp_url: self.amqp_url.clone(),
            s3: self.s3.clone(),
        };
        let (p, base) = spawn_dispatcher(&services, &self.dir, &self.api.http, name, env).await?;
        let api = Api {
            http: self.api.http.clone(),
            base,
            token: self.api.token.clone(),
        };
        Ok((p, api))
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
        WorkerOpts {
            engines: engines.to_string(),
            slots,
            drain_timeout: drain_timeout_s.to_string(),
            args: Vec::new(),
            ..WorkerOpts::new(&name, &self.amqp_url, &self.dir)
        }
        .spawn()
    }

    /// An operator's token (`token create --operator`) for the tenant `ops`.
    pub async fn operator_token(&self) -> Result<String> {
        let bin = binary("kiln-dispatcher")?;
        token_create(&bin, &self.database_url, &["--tenant", "ops", "--operator"]).await
    }

    /// Deletes the log folder; a test calls it once it passed, so that the
    /// logs of a failed run stay for reading.
    pub fn remove_logs(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Every object key under `{tenant}/{batch}/`.
    pub async fn object_keys(&self, batch: Uuid) -> Result<Vec<String>> {
        self.s3.keys(&format!("{}/{batch}/", self.tenant)).await
    }

    /// Ready messages in a broker queue, as a passive declare reports them
    /// (what KEDA's RabbitMQ scaler reads in AMQP mode): deliveries that
    /// workers hold unacked are not counted.
    pub async fn queue_depth(&self, queue: &str) -> Result<u32> {
        crate::queue_depth(&self.amqp_url, queue).await
    }
}

/// Starts `kiln-dispatcher serve` on `services`, logging to
/// `{dir}/{name}.log`, and waits until `/readyz` answers; returns it and
/// its base URL.
async fn spawn_dispatcher(
    services: &Services,
    dir: &Path,
    http: &reqwest::Client,
    name: &str,
    env: &[(&str, &str)],
) -> Result<(Process, String)> {
    let port = free_port()?;
    let mut cmd = tokio::process::Command::new(binary("kiln-dispatcher")?);
    cmd.arg("serve")
        .env("KILN_DATABASE_URL", &services.database_url)
        .env("KILN_AMQP_URL", &services.amqp_url)
        .env("KILN_BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info")
        // Only the stack's bucket settings, not a developer's own AWS ones.
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .envs(services.s3.envs())
        .envs(env.iter().copied());
    let mut dispatcher = Process::spawn(name, dir.join(format!("{name}.log")), &mut cmd)?;
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        dispatcher.ensure_running()?;
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return Ok((dispatcher, base));
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{name} was not ready within 60 s; end of its log:\n{}",
                dispatcher.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates an API token for `tenant` with `kiln-dispatcher token create`.
pub async fn create_token(bin: &Path, database_url: &str, tenant: &str) -> Result<String> {
    token_create(bin, database_url, &["--tenant", tenant]).await
}

/// `kiln-dispatcher token create` with `args`; the token it printed.
async fn token_create(bin: &Path, database_url: &str, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(bin)
        .args(["token", "create"])
        .args(args)
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
    /// Sends `req` with the token and decodes a successful answer as `T`.
    async fn json<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<T> {
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
        serde_json::from_str(&body)
            .with_context(|| format!("{what}: not a {}: {body}", std::any::type_name::<T>()))
    }

    /// `POST /v1/batches`; returns the batch.
    pub async fn submit(&self, batch: &BatchRequest) -> Result<Batch> {
        self.json(
            self.http
                .post(format!("{}/v1/batches", self.base))
                .json(batch),
            "submitting a batch",
        )
        .await
    }

    /// The first page of `GET /v1/batches`.
    pub async fn batches(&self) -> Result<Vec<Batch>> {
        let page: BatchPage = self
            .json(
                self.http.get(format!("{}/v1/batches", self.base)),
                "listing batches",
            )
            .await?;
        Ok(page.items)
    }

    /// `GET /v1/batches/{id}`.
    pub async fn batch(&self, id: Uuid) -> Result<Batch> {
        self.json(
            self.http.get(format!("{}/v1/batches/{id}", self.base)),
            "reading a batch",
        )
        .await
    }

    /// Every job of a batch, following `next_cursor`.
    pub async fn jobs(&self, batch: Uuid) -> Result<Vec<Job>> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{}/v1/batches/{batch}/jobs?limit=1000", self.base);
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page: JobPage = self.json(self.http.get(url), "listing jobs").await?;
            all.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(all),
            }
        }
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn job(&self, id: Uuid) -> Result<Job> {
        self.json(
            self.http.get(format!("{}/v1/jobs/{id}", self.base)),
            "reading a job",
        )
        .await
    }

    /// `POST /v1/jobs/{id}/cancel`.
    pub async fn cancel_job(&self, id: Uuid) -> Result<JobCancel> {
        self.json(
            self.http.post(format!("{}/v1/jobs/{id}/cancel", self.base)),
            "cancelling a job",
        )
        .await
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
