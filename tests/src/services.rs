//! Private PostgreSQL and RabbitMQ servers for tests that restart them:
//! each runs from a folder of the test's own on free ports, so restarting
//! it touches no other test. (Garage's is [`crate::e2e::PrivateGarage`].)
//!
//! They use the servers the local stack installs (Debian's `postgresql` and
//! `rabbitmq-server` packages). PostgreSQL refuses to run as root, so as
//! root its commands run as the `postgres` user.

use crate::process::free_port;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const START_LIMIT: Duration = Duration::from_secs(90);

/// Waits until something accepts TCP connections on `port` (or, with
/// `up` false, until nothing does).
async fn wait_for_port(port: u16, up: bool, what: &str) -> Result<()> {
    let deadline = Instant::now() + START_LIMIT;
    loop {
        let open = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok();
        if open == up {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{what} did not {} within {START_LIMIT:?}",
            if up { "start" } else { "stop" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A PostgreSQL server of the test's own, with a database `kiln`.
pub struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    dir: PathBuf,
    pub port: u16,
    /// Run the server's commands as `postgres` (we are root).
    as_postgres: bool,
}

impl PrivatePostgres {
    /// Creates a cluster under `dir` and starts it.
    pub async fn start(dir: &Path) -> Result<PrivatePostgres> {
        let dir = dir.join("postgres");
        std::fs::create_dir_all(&dir)?;
        let as_postgres = is_root();
        if as_postgres {
            let status = std::process::Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()?;
            ensure!(status.success(), "chown postgres {}", dir.display());
        }
        let pg = PrivatePostgres {
            bin: Self::bin_dir()?,
            data: dir.join("data"),
            dir,
            port: free_port()?,
            as_postgres,
        };
        let data = pg.data.display().to_string();
        pg.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        )
        .await?;
        pg.resume().await?;
        pg.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
                "kiln",
            ],
        )
        .await?;
        Ok(pg)
    }

    fn bin_dir() -> Result<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .context("no /usr/lib/postgresql (run `deploy/local/stack up`)")?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("pg_ctl").is_file())
            .collect();
        found.sort();
        found.pop().context("no PostgreSQL server binaries")
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/kiln", self.port)
    }

    async fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let path = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            tokio::process::Command::new(&path)
        };
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts the server and waits until it accepts connections.
    pub async fn resume(&self) -> Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let (data, log) = (
            self.data.display().to_string(),
            self.dir.join("server.log").display().to_string(),
        );
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &opts, "-w", "start"],
        )
        .await?;
        wait_for_port(self.port, true, "PostgreSQL").await
    }

    /// Stops the server (fast shutdown: sessions are cut).
    pub async fn pause(&self) -> Result<()> {
        let data = self.data.display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"])
            .await?;
        wait_for_port(self.port, false, "PostgreSQL").await
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let path = self.bin.join("pg_ctl");
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            std::process::Command::new(&path)
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A RabbitMQ node of the test's own (no plugins), whose data survives a
/// restart.
pub struct PrivateRabbit {
    dir: PathBuf,
    node: String,
    pub port: u16,
    dist_port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRabbit {
    /// Starts a node with its data under `dir`.
    pub async fn start(dir: &Path) -> Result<PrivateRabbit> {
        let dir = dir.join("rabbitmq");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        let port = free_port()?;
        let mut r = PrivateRabbit {
            node: format!("kiln-test-{port}@localhost"),
            dir,
            port,
            dist_port: free_port()?,
            child: None,
        };
        r.resume().await?;
        r.grant_worker().await?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Creates the workers' user ([`crate::worker_amqp_url`]) with a
    /// worker's permissions in `/`, as `deploy/local/stack` does on the
    /// shared broker (this node has no management API: `rabbitmqctl`).
    async fn grant_worker(&self) -> Result<()> {
        use kiln_protocol::topology::{worker_permissions, EVENTS_EXCHANGE};
        let url = reqwest::Url::parse(&crate::worker_amqp_url())?;
        let (user, pass) = (url.username(), url.password().unwrap_or(""));
        let p = worker_permissions();
        let ctl = Self::binary()?.with_file_name("rabbitmqctl");
        let steps: [Vec<&str>; 3] = [
            vec!["add_user", user, pass],
            vec![
                "set_permissions",
                "-p",
                "/",
                user,
                p.configure,
                p.write,
                p.read,
            ],
            vec![
                "set_topic_permissions",
                "-p",
                "/",
                user,
                EVENTS_EXCHANGE,
                p.events_write,
                p.events_read,
            ],
        ];
        for args in steps {
            let out = tokio::process::Command::new(&ctl)
                .arg("-n")
                .arg(&self.node)
                .args(&args)
                .output()
                .await
                .context("running rabbitmqctl")?;
            ensure!(
                out.status.success(),
                "rabbitmqctl {}: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn binary() -> Result<PathBuf> {
        let lib = Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
        if lib.is_file() {
            return Ok(lib.into());
        }
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let p = Path::new(dir).join("rabbitmq-server");
            if p.is_file() {
                return Ok(p);
            }
        }
        bail!("no rabbitmq-server (run `deploy/local/stack up`)")
    }

    /// Starts the node and waits until it accepts AMQP connections.
    pub async fn resume(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "the node is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))?;
        let d = |p: &str| self.dir.join(p).display().to_string();
        let child = std::process::Command::new(Self::binary()?)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env("RABBITMQ_PID_FILE", d("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d("advanced.config"))
            .env("ERL_CRASH_DUMP", d("erl_crash.dump"))
            // Mnesia writes its core dumps (on a kill) to the working folder.
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting rabbitmq-server")?;
        self.child = Some(child);
        wait_for_port(self.port, true, "RabbitMQ").await
    }

    /// Stops the node (SIGTERM to the Erlang VM; its data stays) and waits
    /// until its port is closed.
    pub async fn pause(&mut self) -> Result<()> {
        let pid = std::fs::read_to_string(self.dir.join("pid")).context("the node's pid file")?;
        let status = std::process::Command::new("kill")
            .arg(pid.trim())
            .status()?;
        ensure!(status.success(), "kill {}", pid.trim());
        if let Some(mut c) = self.child.take() {
            let _ = tokio::task::spawn_blocking(move || c.wait()).await;
        }
        wait_for_port(self.port, false, "RabbitMQ").await
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid.trim()])
                .status();
        }
    }
}
