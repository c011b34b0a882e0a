//! Helpers shared by Kiln's tests: isolated resources on the local stack.
//!
//! Each test gets its own PostgreSQL database ([`fresh_database`]) and its
//! own RabbitMQ virtual host ([`fresh_vhost`]), so tests run in parallel
//! against one PostgreSQL and one RabbitMQ without seeing each other's
//! queues or rows. Objects are isolated by tenant prefix in one bucket.
//!
//! The services are the ones `deploy/local/stack up` starts; their
//! addresses come from the same `KILN_*` variables the binaries read.

use anyhow::{Context, Result};
use std::path::PathBuf;

pub mod browser;
pub mod e2e;
pub mod process;
pub mod scale;
pub mod services;

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn database_url() -> String {
    env_or(
        "KILN_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/kiln",
    )
}

pub fn amqp_url() -> String {
    env_or("KILN_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// The workers' broker user on the local stack (`deploy/local/stack env`):
/// it may do only what [`kiln_protocol::topology::worker_permissions`]
/// allow, in every virtual host [`fresh_vhost`] makes.
pub fn worker_amqp_url() -> String {
    env_or(
        "KILN_WORKER_AMQP_URL",
        "amqp://kiln-worker:kiln-worker-dev-password@127.0.0.1:5672/%2f",
    )
}

/// `amqp_url` (its host, port and virtual host) with the workers' user and
/// password instead of its own.
pub fn as_worker(amqp_url: &str) -> Result<String> {
    let worker = reqwest::Url::parse(&worker_amqp_url())?;
    let mut url = reqwest::Url::parse(amqp_url)?;
    url.set_username(worker.username())
        .map_err(|_| anyhow::anyhow!("{amqp_url} takes no user"))?;
    url.set_password(worker.password())
        .map_err(|_| anyhow::anyhow!("{amqp_url} takes no password"))?;
    Ok(url.to_string())
}

/// RabbitMQ's management API (enabled by `deploy/local/stack up`).
pub fn rabbitmq_api() -> String {
    env_or("KILN_RABBITMQ_API", "http://guest:guest@127.0.0.1:15672")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Creates an empty database and returns its URL. Migrations are the
/// dispatcher's business (`kiln-dispatcher serve` and `migrate` apply them).
pub async fn fresh_database() -> Result<String> {
    use sqlx::Connection;
    let base = database_url();
    let (server, _) = base
        .rsplit_once('/')
        .context("KILN_DATABASE_URL has no database name")?;
    let name = unique("kiln_test");
    let mut conn = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .context("connecting to PostgreSQL (is `deploy/local/stack up` done?)")?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    Ok(format!("{server}/{name}"))
}

/// RabbitMQ's management API, with the credentials of [`rabbitmq_api`].
pub struct Management {
    base: String,
    /// The API's user (whose permissions a new virtual host grants).
    pub user: String,
    pass: String,
    http: reqwest::Client,
}

impl Management {
    pub fn from_env() -> Result<Management> {
        Management::with_client(reqwest::Client::new())
    }

    /// [`Management::from_env`] sending through `http` (its timeouts).
    pub fn with_client(http: reqwest::Client) -> Result<Management> {
        let url = reqwest::Url::parse(&rabbitmq_api())?;
        let (user, pass) = (
            url.username().to_string(),
            url.password().unwrap_or("").to_string(),
        );
        let mut base = url.clone();
        base.set_username("").ok();
        base.set_password(None).ok();
        Ok(Management {
            base: base.as_str().trim_end_matches('/').to_string(),
            user,
            pass,
            http,
        })
    }

    /// A request to `/api/{path}`, authenticated.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/api/{path}", self.base))
            .basic_auth(&self.user, Some(&self.pass))
    }
}

/// Creates the workers' user ([`worker_amqp_url`]) unless it exists, and
/// grants it, in `vhost`, what a worker may do and no more.
pub async fn grant_worker(api: &Management, vhost: &str) -> Result<()> {
    use kiln_protocol::topology::{worker_permissions, EVENTS_EXCHANGE};
    let worker = reqwest::Url::parse(&worker_amqp_url())?;
    let user = worker.username();
    let put = |path: String, body: serde_json::Value| async move {
        api.request(reqwest::Method::PUT, &path)
            .json(&body)
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("RabbitMQ management API: PUT {path}"))
    };
    let exists = api
        .request(reqwest::Method::GET, &format!("users/{user}"))
        .send()
        .await?
        .status()
        .is_success();
    if !exists {
        let password = worker.password().unwrap_or("");
        put(
            format!("users/{user}"),
            serde_json::json!({"password": password, "tags": ""}),
        )
        .await?;
    }
    let p = worker_permissions();
    put(
        format!("permissions/{vhost}/{user}"),
        serde_json::json!({"configure": p.configure, "write": p.write, "read": p.read}),
    )
    .await?;
    put(
        format!("topic-permissions/{vhost}/{user}"),
        serde_json::json!({"exchange": EVENTS_EXCHANGE, "write": p.events_write, "read": p.events_read}),
    )
    .await?;
    Ok(())
}

/// Creates a RabbitMQ virtual host that guest may use (and the workers'
/// user, with a worker's permissions) and returns an AMQP URL for it, with
/// guest's credentials.
pub async fn fresh_vhost() -> Result<String> {
    let api = Management::from_env()?;
    let vhost = unique("kiln-test");
    api.request(reqwest::Method::PUT, &format!("vhosts/{vhost}"))
        .send()
        .await
        .context("RabbitMQ management API (is `deploy/local/stack up` done?)")?
        .error_for_status()?;
    api.request(
        reqwest::Method::PUT,
        &format!("permissions/{vhost}/{}", api.user),
    )
    .json(&serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}))
    .send()
    .await?
    .error_for_status()?;
    grant_worker(&api, &vhost).await?;
    let amqp = amqp_url();
    let (server, _) = amqp
        .rsplit_once('/')
        .context("KILN_AMQP_URL has no vhost")?;
    Ok(format!("{server}/{vhost}"))
}

/// The management API's names of the connections to the virtual host of
/// `amqp_url` whose client-given name is `name`. The API lists a new
/// connection only after its next statistics round, so this waits up to
/// 20 s for one to appear (and answers none after that).
pub async fn broker_connections(amqp_url: &str, name: &str) -> Result<Vec<String>> {
    let api = Management::from_env()?;
    let vhost = amqp_url.rsplit_once('/').context("no vhost in the URL")?.1;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let list: Vec<serde_json::Value> = api
            .request(reqwest::Method::GET, &format!("vhosts/{vhost}/connections"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let ids: Vec<String> = list
            .iter()
            .filter(|c| c["client_properties"]["connection_name"].as_str() == Some(name))
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect();
        if !ids.is_empty() || std::time::Instant::now() > deadline {
            return Ok(ids);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Closes the connections named `ids` (from [`broker_connections`]) as the
/// broker does on a restart: the clients see `CONNECTION_FORCED`.
pub async fn close_broker_connections(ids: &[String]) -> Result<()> {
    let api = Management::from_env()?;
    for id in ids {
        // The name holds spaces and `>`: one path segment, encoded.
        let mut url = reqwest::Url::parse(&format!("{}/api/connections", api.base))?;
        url.path_segments_mut()
            .map_err(|_| anyhow::anyhow!("the management URL cannot take a path"))?
            .push(id);
        api.http
            .delete(url)
            .basic_auth(&api.user, Some(&api.pass))
            .header("X-Reason", "closed by a test")
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(())
}

/// S3 settings of the local stack (Garage), as the binaries read them.
#[derive(Debug, Clone)]
pub struct S3 {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3 {
    /// The settings `deploy/local/stack env` exports (the test command
    /// evaluates it); the stack's key is nowhere else.
    pub fn from_env() -> S3 {
        let required = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run eval \"$(deploy/local/stack env)\" first")
            })
        };
        S3 {
            endpoint: required("KILN_S3_ENDPOINT"),
            bucket: env_or("KILN_S3_BUCKET", "kiln"),
            region: required("KILN_S3_REGION"),
            access_key: required("AWS_ACCESS_KEY_ID"),
            secret_key: required("AWS_SECRET_ACCESS_KEY"),
        }
    }

    /// A client for this bucket, configured as the dispatcher's.
    pub fn client(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(self.bucket().config().build())
    }

    /// The settings resolved (static credentials: no lookups).
    pub fn bucket(&self) -> kiln_protocol::s3::Bucket {
        self.args()
            .resolve_static()
            .expect("complete test S3 settings")
    }

    /// Every key under `prefix`, sorted.
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
                keys.sort();
                return Ok(keys);
            }
        }
    }

    /// How many PNG objects lie under `prefix`.
    pub async fn count_pngs(&self, prefix: &str) -> Result<usize> {
        let keys = self.keys(prefix).await?;
        Ok(keys.iter().filter(|k| k.ends_with(".png")).count())
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

    /// The bucket settings as the dispatcher reads them.
    pub fn args(&self) -> kiln_protocol::s3::S3Args {
        kiln_protocol::s3::S3Args {
            endpoint: Some(self.endpoint.clone()),
            bucket: self.bucket.clone(),
            region: Some(self.region.clone()),
            path_style: None,
            access_key: Some(self.access_key.clone()),
            secret_key: Some(self.secret_key.clone()),
            session_token: None,
        }
    }

    /// Signs job URLs that live `ttl`, as the dispatcher's relay does.
    pub fn presigner(&self, ttl: std::time::Duration) -> kiln_protocol::s3::Presigner {
        kiln_protocol::s3::Presigner::new(&self.bucket(), None, ttl)
            .expect("valid test S3 settings")
    }

    /// `job` with the URLs a dispatcher would sign for it now (alive `ttl`).
    pub fn sign(
        &self,
        job: kiln_protocol::JobMessage,
        ttl: std::time::Duration,
    ) -> kiln_protocol::JobMessage {
        self.sign_at(job, ttl, std::time::SystemTime::now())
    }

    /// `job` with URLs signed at `at` (alive `ttl` from then).
    pub fn sign_at(
        &self,
        job: kiln_protocol::JobMessage,
        ttl: std::time::Duration,
        at: std::time::SystemTime,
    ) -> kiln_protocol::JobMessage {
        let params = job.spec.params();
        let urls = self.presigner(ttl).job_urls(
            &job.tenant,
            job.batch_id,
            job.job_id,
            params.keep(),
            params.init_image(),
            at,
        );
        job.with_urls(urls)
    }

    /// The environment variables a process could read bucket settings or
    /// credentials from (a worker is started without them).
    pub const ENV_NAMES: [&'static str; 7] = [
        "KILN_S3_ENDPOINT",
        "KILN_S3_BUCKET",
        "KILN_S3_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
    ];

    /// Environment variables that point a Kiln process at this bucket.
    pub fn envs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KILN_S3_ENDPOINT", self.endpoint.clone()),
            ("KILN_S3_BUCKET", self.bucket.clone()),
            ("KILN_S3_REGION", self.region.clone()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
        ]
    }
}

/// Ready messages in a broker queue, as a passive declare reports them
/// (what KEDA's RabbitMQ scaler reads in AMQP mode): deliveries that
/// workers hold unacked are not counted.
pub async fn queue_depth(amqp_url: &str, queue: &str) -> Result<u32> {
    use lapin::options::QueueDeclareOptions;
    let conn = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await?;
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

/// A tenant name no other test uses (objects live under `{tenant}/`).
pub fn fresh_tenant() -> String {
    unique("t")
}

/// Path of a workspace binary (`kiln-dispatcher`, `kiln-worker`, `kiln`),
/// built by `cargo build` / `cargo test` into the same target directory.
pub fn bin(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("test binary path");
    dir.pop(); // deps/
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}
