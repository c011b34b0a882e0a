//! Kiln's binaries as child processes of a test.
//!
//! [`Process`] is one spawned `kiln-dispatcher` or `kiln-worker`: its output
//! goes to a log file, it can be stopped with SIGTERM like an orchestrator
//! does ([`Process::terminate`]) or with SIGKILL ([`Process::kill9`]), and
//! failures quote the end of its log. [`WorkerOpts`] says how to start one
//! `kiln-worker run`; [`Worker`] is such a process once it consumes.

use crate::{bin, S3};
use anyhow::{bail, ensure, Context, Result};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A child process that is killed when dropped.
pub struct Process {
    pub name: String,
    pub log: PathBuf,
    child: tokio::process::Child,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Starts `cmd` with its stdout and stderr in a new file at `log`.
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
                self.log_tail(40)
            );
        }
        Ok(())
    }

    /// Waits until a `kiln-worker run` process consumes (its "ready" line),
    /// 60 s at most; fails at once if it exits.
    pub async fn wait_until_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.log_text().contains(": ready on ") {
            self.ensure_running()?;
            if Instant::now() > deadline {
                bail!(
                    "{} not ready within 60 s:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The Prometheus text of the worker's `/metrics`.
    pub async fn metrics(&self) -> Result<String> {
        let url = format!("{}/metrics", self.metrics_addr()?);
        let resp = reqwest::get(&url)
            .await
            .with_context(|| format!("reading {url}"))?
            .error_for_status()?;
        Ok(resp.text().await?)
    }

    /// The address of `/healthz` and `/metrics`, from a worker's output.
    pub fn metrics_addr(&self) -> Result<String> {
        let text = self.log_text();
        let line = text
            .lines()
            .find(|l| l.contains(": metrics on http://"))
            .context("no metrics line in the worker's output")?;
        Ok(line
            .rsplit_once("http://")
            .map(|(_, a)| format!("http://{}", a.trim()))
            .expect("matched above"))
    }

    /// Sends SIGTERM, as Kubernetes and Docker do before stopping a container.
    pub fn terminate(&self) -> Result<()> {
        let pid = self.pid().context("process already reaped")?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .context("running kill")?;
        ensure!(
            status.success(),
            "kill -TERM {pid} ({}) failed: {status}",
            self.name
        );
        Ok(())
    }

    /// SIGKILL: no chance to ack, publish or clean up.
    pub async fn kill9(&mut self) -> Result<()> {
        self.child.start_kill()?;
        self.wait(Duration::from_secs(10)).await?;
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if self.terminate().is_ok() && self.wait(grace).await.is_ok() {
            return;
        }
        let _ = self.kill9().await;
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

    /// The process's output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the process's output.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Path of a workspace binary, or an error saying how to build it.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = bin(name);
    ensure!(
        path.is_file(),
        "{} is not built; run `cargo build --workspace --bins` first",
        path.display()
    );
    Ok(path)
}

/// How to start one `kiln-worker run`.
#[derive(Debug, Clone)]
pub struct WorkerOpts {
    pub name: String,
    pub amqp_url: String,
    pub engines: String,
    pub slots: u32,
    pub drain_timeout: String,
    /// More flags, e.g. `["--progress-interval", "100ms"]`.
    pub args: Vec<String>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
    /// Folder for the log file and the (empty) model root.
    pub dir: PathBuf,
}

impl WorkerOpts {
    pub fn new(name: &str, amqp_url: &str, dir: &Path) -> WorkerOpts {
        WorkerOpts {
            name: name.to_string(),
            amqp_url: amqp_url.to_string(),
            engines: "test-pattern".into(),
            slots: 1,
            drain_timeout: "30s".into(),
            args: vec![
                "--progress-interval".into(),
                "100ms".into(),
                "--heartbeat-interval".into(),
                "1s".into(),
            ],
            env: Vec::new(),
            dir: dir.to_path_buf(),
        }
    }

    /// Starts `kiln-worker run` on the CPU, logging to `{dir}/{name}.log`,
    /// without waiting for it to consume. It connects to `amqp_url` as the
    /// workers' broker user ([`crate::as_worker`]), so every test that runs
    /// a worker proves a worker's permissions are enough; and with no
    /// bucket settings or credentials in its environment, so every such
    /// test proves the presigned URLs in its jobs are enough.
    pub fn spawn(&self) -> Result<Process> {
        let path = binary("kiln-worker")?;
        std::fs::create_dir_all(self.dir.join("models"))?;
        let mut cmd = tokio::process::Command::new(path);
        cmd.args(["run", "--engines", &self.engines, "--models"])
            .arg(self.dir.join("models"))
            .args(["--slots", &self.slots.to_string(), "--device", "cpu"])
            .args(["--drain-timeout", &self.drain_timeout])
            .args(["--metrics-bind", "127.0.0.1:0"])
            .args(&self.args)
            .env("KILN_AMQP_URL", crate::as_worker(&self.amqp_url)?)
            .env("KILN_WORKER_ID", &self.name)
            .env("RUST_LOG", "info")
            .env_remove("KILN_DATABASE_URL");
        for name in S3::ENV_NAMES {
            cmd.env_remove(name);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let log = self.dir.join(format!("{}.log", self.name));
        Process::spawn(&self.name, log, &mut cmd)
    }
}

/// A running `kiln-worker run` that has started consuming, killed when
/// dropped; it derefs to its [`Process`].
pub struct Worker(Process);

impl Worker {
    /// Starts the worker and waits until it consumes (its "ready" line).
    pub async fn start(o: &WorkerOpts) -> Result<Worker> {
        let mut w = Worker(o.spawn()?);
        w.wait_until_ready().await?;
        Ok(w)
    }
}

impl Deref for Worker {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.0
    }
}

impl DerefMut for Worker {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.0
    }
}
