//! Helpers for tests of the worker runtime: `kiln-worker run` processes, a
//! broker handle that plays the dispatcher's part (publishes jobs and
//! cancels, reads events and dead letters), a [`Rig`] that gives a test its
//! own virtual host, tenant and folder, bucket checks of result PNGs, and a
//! private Garage that a test may stop and start without disturbing the
//! tests that share the local stack's Garage.

use crate::{bin, S3};
use anyhow::{bail, ensure, Context, Result};
use futures::StreamExt;
use kiln_protocol::topology::{self, CONTROL_EXCHANGE, DEAD_QUEUE, EVENTS_QUEUE, JOBS_EXCHANGE};
use kiln_protocol::{ControlMessage, Engine, Event, JobMessage, JobSpec, Limits, ParamsDto};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

pub use crate::process::{free_port, Worker, WorkerOpts};

/// A test's connection to its virtual host, standing in for the dispatcher.
pub struct Broker {
    pub conn: Connection,
    ch: Channel,
    /// The bucket whose URLs a published job gets when it has none.
    s3: S3,
}

/// Lifetime of the URLs [`Broker::publish_job`] signs.
pub const JOB_URL_TTL: Duration = Duration::from_secs(3600);

impl Broker {
    /// Connects and declares Kiln's topology; jobs get URLs for the local
    /// stack's bucket.
    pub async fn connect(amqp_url: &str) -> Result<Broker> {
        let conn = Connection::connect(amqp_url, ConnectionProperties::default())
            .await
            .context("connecting to RabbitMQ")?;
        let ch = conn.create_channel().await?;
        topology::declare(&ch).await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Broker {
            conn,
            ch,
            s3: S3::from_env(),
        })
    }

    /// Jobs published from now on get URLs for `s3`'s bucket.
    pub fn sign_for(&mut self, s3: &S3) {
        self.s3 = s3.clone();
    }

    async fn publish(&self, exchange: &str, key: &str, body: &[u8]) -> Result<()> {
        let confirm = self
            .ch
            .basic_publish(
                exchange,
                key,
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
        ensure!(
            confirm.is_ack(),
            "the broker refused a publish to {exchange}"
        );
        Ok(())
    }

    /// Publishes `job` as the dispatcher's relay would: with presigned
    /// URLs (alive [`JOB_URL_TTL`]) unless it carries some already.
    pub async fn publish_job(&self, job: &JobMessage) -> Result<()> {
        let body = match job.urls {
            Some(_) => job.encode(),
            None => self.s3.sign(job.clone(), JOB_URL_TTL).encode(),
        };
        self.publish(JOBS_EXCHANGE, job.spec.engine().as_str(), &body)
            .await
    }

    /// Any bytes onto an engine's queue.
    pub async fn publish_raw(&self, engine: Engine, body: &[u8]) -> Result<()> {
        self.publish(JOBS_EXCHANGE, engine.as_str(), body).await
    }

    /// Any control message, to every worker of the virtual host.
    pub async fn control(&self, msg: &ControlMessage) -> Result<()> {
        self.publish(CONTROL_EXCHANGE, "", &msg.encode()).await
    }

    pub async fn cancel(&self, ids: Vec<Uuid>) -> Result<()> {
        self.publish(CONTROL_EXCHANGE, "", &ControlMessage::cancel(ids).encode())
            .await
    }

    /// Every event the workers publish, in order of arrival.
    pub async fn events(&self) -> Result<Events> {
        let rx = self.consume(EVENTS_QUEUE).await?;
        Ok(Events {
            rx,
            seen: Vec::new(),
        })
    }

    /// The raw bodies of dead-lettered messages.
    pub async fn dead_letters(&self) -> Result<mpsc::UnboundedReceiver<Vec<u8>>> {
        self.consume(DEAD_QUEUE).await
    }

    async fn consume<T: DecodeBody + Send + 'static>(
        &self,
        queue: &str,
    ) -> Result<mpsc::UnboundedReceiver<T>> {
        let ch = self.conn.create_channel().await?;
        let mut consumer = ch
            .basic_consume(
                queue,
                "",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let _ch = ch;
            while let Some(Ok(d)) = consumer.next().await {
                let _ = d.acker.ack(BasicAckOptions::default()).await;
                if let Some(v) = T::decode_body(d.data) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// Bodies a consumer can hand over.
pub trait DecodeBody: Sized {
    fn decode_body(bytes: Vec<u8>) -> Option<Self>;
}

impl DecodeBody for Vec<u8> {
    fn decode_body(bytes: Vec<u8>) -> Option<Self> {
        Some(bytes)
    }
}

/// An event, or the raw bytes when it did not decode.
#[derive(Debug, Clone)]
pub struct EventBody(pub Result<Event, String>);

impl DecodeBody for EventBody {
    fn decode_body(b: Vec<u8>) -> Option<Self> {
        Some(EventBody(Event::decode(&b).map_err(|e| {
            format!("{e}: {}", String::from_utf8_lossy(&b))
        })))
    }
}

/// The events seen so far and a way to wait for more.
pub struct Events {
    rx: mpsc::UnboundedReceiver<EventBody>,
    pub seen: Vec<Event>,
}

impl Events {
    /// Waits for the first event (already seen or new) that `pred` accepts.
    pub async fn wait(
        &mut self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Event) -> bool,
    ) -> Result<Event> {
        if let Some(e) = self.seen.iter().find(|e| pred(e)) {
            return Ok(e.clone());
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = tokio::time::timeout_at(deadline, self.rx.recv()).await;
            match next {
                Ok(Some(EventBody(Ok(e)))) => {
                    self.seen.push(e.clone());
                    if pred(&e) {
                        return Ok(e);
                    }
                }
                Ok(Some(EventBody(Err(raw)))) => bail!("an event that does not decode: {raw}"),
                Ok(None) => bail!("the event consumer stopped"),
                Err(_) => bail!(
                    "no {what} within {limit:?}; events seen: {:#?}",
                    self.seen
                        .iter()
                        .map(|e| (e.job_id, e.kind.name(), &e.worker))
                        .collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Collects whatever arrives within `d`.
    pub async fn settle(&mut self, d: Duration) -> Result<()> {
        let _ = self.wait(d, "nothing", |_| false).await;
        Ok(())
    }

    pub fn of(&self, job: Uuid) -> Vec<&Event> {
        self.seen.iter().filter(|e| e.job_id == job).collect()
    }
}

/// A test's own virtual host (with a [`Broker`] on it), tenant and folder.
pub struct Rig {
    pub broker: Broker,
    pub amqp_url: String,
    pub s3: S3,
    pub tenant: String,
    pub dir: PathBuf,
}

impl Rig {
    pub async fn new() -> Result<Rig> {
        let amqp_url = crate::fresh_vhost().await?;
        let tenant = crate::fresh_tenant();
        let dir = std::env::temp_dir().join(format!("kiln-{tenant}"));
        std::fs::create_dir_all(&dir)?;
        Ok(Rig {
            broker: Broker::connect(&amqp_url).await?,
            amqp_url,
            s3: S3::from_env(),
            tenant,
            dir,
        })
    }

    /// A test-pattern worker named `name` on this rig's virtual host.
    pub fn opts(&self, name: &str) -> WorkerOpts {
        WorkerOpts::new(name, &self.amqp_url, &self.dir)
    }

    /// A test-pattern job of this rig's tenant.
    pub fn job(&self, prompt: &str, dto: ParamsDto) -> JobMessage {
        test_job(&self.tenant, prompt, dto)
    }

    /// The key prefix of `j`'s objects.
    pub fn job_prefix(&self, j: &JobMessage) -> String {
        format!("{}/{}/{}/", self.tenant, j.batch_id, j.job_id)
    }
}

/// Matches the terminal event of `job`.
pub fn terminal(job: Uuid) -> impl Fn(&Event) -> bool {
    move |e| e.job_id == job && e.kind.is_terminal()
}

/// Test-pattern parameters of a job that holds its slot for `steps` ×
/// `delay_ms`, as a GPU render would (32×32 pixels).
pub fn held(steps: u32, delay_ms: u32) -> ParamsDto {
    ParamsDto {
        width: Some(32),
        height: Some(32),
        steps: Some(steps),
        step_delay_ms: Some(delay_ms),
        ..Default::default()
    }
}

/// A test-pattern job message for `tenant`.
pub fn test_job(tenant: &str, prompt: &str, dto: ParamsDto) -> JobMessage {
    job_for(Engine::TestPattern, tenant, prompt, dto)
}

/// A job message of `engine` for `tenant`.
pub fn job_for(engine: Engine, tenant: &str, prompt: &str, dto: ParamsDto) -> JobMessage {
    let spec =
        JobSpec::parse(engine, prompt, &dto, 1234, &Limits::default()).expect("a valid test job");
    JobMessage::new(Uuid::new_v4(), Uuid::new_v4(), tenant, 1, spec)
}

/// A PNG read back from the bucket.
#[derive(Debug)]
pub struct StoredPng {
    pub width: u32,
    pub height: u32,
    /// `tEXt` and `iTXt` chunks.
    pub text: std::collections::BTreeMap<String, String>,
    pub bytes: Vec<u8>,
}

pub async fn get_object(s3: &S3, key: &str) -> Result<Vec<u8>> {
    let out = s3
        .client()
        .get_object()
        .bucket(&s3.bucket)
        .key(key)
        .send()
        .await
        .with_context(|| format!("GET s3://{}/{key}", s3.bucket))?;
    Ok(out.body.collect().await?.into_bytes().to_vec())
}

pub async fn get_png(s3: &S3, key: &str) -> Result<StoredPng> {
    let bytes = get_object(s3, key).await?;
    let reader = png::Decoder::new(std::io::Cursor::new(bytes.as_slice()))
        .read_info()
        .with_context(|| format!("{key} is not a PNG"))?;
    let info = reader.info();
    let mut text = std::collections::BTreeMap::new();
    for t in &info.uncompressed_latin1_text {
        text.insert(t.keyword.clone(), t.text.clone());
    }
    for t in &info.utf8_text {
        text.insert(t.keyword.clone(), t.get_text()?);
    }
    Ok(StoredPng {
        width: info.width,
        height: info.height,
        text,
        bytes,
    })
}

/// Every key under `prefix`, sorted.
pub async fn list_keys(s3: &S3, prefix: &str) -> Result<Vec<String>> {
    s3.keys(prefix).await
}

/// Writes tiny random-weight models for every engine (CLIP included) into
/// `dir` with `kiln-worker models init-tiny`.
pub async fn init_tiny_models(dir: &Path) -> Result<()> {
    let out = tokio::process::Command::new(bin("kiln-worker"))
        .args(["models", "init-tiny", "--out"])
        .arg(dir)
        .output()
        .await
        .context("running kiln-worker models init-tiny")?;
    ensure!(
        out.status.success(),
        "kiln-worker models init-tiny failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A single-node Garage of the test's own, on free ports, with the same
/// credentials and bucket name as the local stack. Stopping it affects only
/// the test that started it.
pub struct PrivateGarage {
    pub s3: S3,
    bin: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateGarage {
    fn binary() -> Result<PathBuf> {
        if let Ok(b) = std::env::var("KILN_GARAGE_BIN") {
            return Ok(b.into());
        }
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let p = Path::new(dir).join("garage");
            if p.is_file() {
                return Ok(p);
            }
        }
        let home = std::env::var("HOME").context("HOME is not set")?;
        let p = Path::new(&home).join(".cargo/bin/garage");
        ensure!(
            p.is_file(),
            "no garage binary (run `deploy/local/stack up`)"
        );
        Ok(p)
    }

    pub async fn start(dir: &Path) -> Result<PrivateGarage> {
        let bin = Self::binary()?;
        let dir = dir.join("garage");
        std::fs::create_dir_all(dir.join("meta"))?;
        std::fs::create_dir_all(dir.join("data"))?;
        let (s3_port, rpc_port, admin_port) = (free_port()?, free_port()?, free_port()?);
        let base = S3::from_env();
        let conf = dir.join("garage.toml");
        std::fs::write(
            &conf,
            format!(
                r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{region}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
admin_token = "kiln-test-admin-token"
"#,
                meta = dir.join("meta").display(),
                data = dir.join("data").display(),
                secret = hex_of(Uuid::new_v4(), Uuid::new_v4()),
                region = base.region,
            ),
        )?;
        let s3 = S3 {
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            ..base
        };
        let mut g = PrivateGarage {
            s3,
            bin,
            conf,
            log: dir.join("garage.log"),
            child: None,
        };
        g.resume().await?;
        let node = g.cli(&["node", "id", "-q"]).await?;
        let node = node.trim().split('@').next().unwrap_or("").to_string();
        g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node])
            .await?;
        g.cli(&["layout", "apply", "--version", "1"]).await?;
        let (key, secret) = (g.s3.access_key.clone(), g.s3.secret_key.clone());
        g.cli(&["key", "import", "--yes", "-n", "kiln-test", &key, &secret])
            .await?;
        let bucket = g.s3.bucket.clone();
        g.cli(&["bucket", "create", &bucket]).await?;
        g.cli(&[
            "bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", &key,
        ])
        .await?;
        Ok(g)
    }

    async fn cli(&self, args: &[&str]) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = tokio::process::Command::new(&self.bin)
                .arg("-c")
                .arg(&self.conf)
                .args(args)
                .output()
                .await?;
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            if Instant::now() > deadline {
                bail!(
                    "garage {}: {}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the server (the data stays).
    pub fn pause(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Starts the server again and waits until it answers S3 requests.
    pub async fn resume(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "garage is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = std::process::Command::new(&self.bin)
            .arg("-c")
            .arg(&self.conf)
            .arg("server")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting garage")?;
        self.child = Some(child);
        self.cli(&["status"]).await?;
        Ok(())
    }
}

impl Drop for PrivateGarage {
    fn drop(&mut self) {
        let _ = self.pause();
    }
}

fn hex_of(a: Uuid, b: Uuid) -> String {
    format!("{}{}", a.simple(), b.simple())
}
