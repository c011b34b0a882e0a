//! Kiln's dispatcher: the control plane between users and GPU workers.
//!
//! - [`config`]: settings from flags and `KILN_*` variables.
//! - `api`: the HTTP API (one module per resource: `api::batches` reads,
//!   validates and stores submissions; `api::extract` holds the body, id and
//!   list-query readers they share), `auth`: bearer tokens, `error`:
//!   problem+json answers, `openapi`: the document generated from `api`
//!   (which depends on nothing in it; the router is handed the text). The
//!   request and answer types are `kiln_protocol::api`'s, built from stored
//!   rows in `api::views`.
//! - `store`: SQL, one file per table family, every statement a named file
//!   under `store/sql/`; functions take the caller's transaction. Job
//!   states and engines are `kiln_protocol` enums down to the text columns.
//! - `broker`: RabbitMQ connections and the reconnect-with-backoff loop
//!   every consumer and the relay run in.
//! - `relay`: outbox → RabbitMQ with publisher confirms, a bounded window
//!   per engine so that priorities hold; it publishes the spec as stored at
//!   intake, without decoding it.
//! - `events`: worker events applied as guarded transitions;
//!   `dead_letter`: dead-lettered deliveries are retried or end failed;
//!   `reaper`: lapsed leases are retried; `rescuer`: published jobs the
//!   broker lost are published again; `retry`: the backoff policy;
//!   `registry`: workers' reports about themselves kept for `/v1/workers`;
//!   `webhooks`: batches' webhook deliveries, signed and retried.
//!
//! [`Application::build`] binds the listener and starts the background
//! loops; [`Application::run_until_stopped`] serves until shut down.

mod api;
pub mod auth;
mod broker;
pub mod config;
mod dead_letter;
mod error;
mod events;
mod metrics;
mod openapi;
pub mod prune;
pub mod quotas;
mod reaper;
mod registry;
mod relay;
mod rescuer;
pub mod retry;
mod state;
mod store;
mod webhooks;

pub use config::Settings;
pub use openapi::openapi_json;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connects to PostgreSQL (without migrating).
pub async fn connect_db(url: &str, max: u32) -> anyhow::Result<PgPool> {
    connect_db_limited(url, max, std::time::Duration::ZERO).await
}

/// [`connect_db`] whose statements PostgreSQL cancels after
/// `statement_timeout` (zero: never).
async fn connect_db_limited(
    url: &str,
    max: u32,
    statement_timeout: std::time::Duration,
) -> anyhow::Result<PgPool> {
    use std::str::FromStr;
    let mut opts = sqlx::postgres::PgConnectOptions::from_str(url).with_context(|| {
        format!(
            "reading the PostgreSQL URL {}",
            kiln_protocol::logging::redact(url)
        )
    })?;
    if !statement_timeout.is_zero() {
        let ms = statement_timeout.as_millis().to_string();
        opts = opts.options([("statement_timeout", ms.as_str())]);
    }
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(opts)
        .await
        .with_context(|| {
            format!(
                "connecting to PostgreSQL at {}",
                kiln_protocol::logging::redact(url)
            )
        })
}

/// [`connect_db`], tried again with backoff while PostgreSQL is unreachable,
/// for at most `wait`: a dispatcher started beside its database (or during
/// its restart) comes up once the database does.
pub async fn connect_db_waiting(
    url: &str,
    max: u32,
    wait: std::time::Duration,
    statement_timeout: std::time::Duration,
) -> anyhow::Result<PgPool> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut waits = kiln_protocol::backoff::Backoff::new(
        std::time::Duration::from_millis(250),
        std::time::Duration::from_millis(2500),
    )
    .delays();
    let mut first = true;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        // The first try runs to its own end, so a zero wait still connects.
        let tried = if first {
            Ok(connect_db_limited(url, max, statement_timeout).await)
        } else {
            tokio::time::timeout(left, connect_db_limited(url, max, statement_timeout)).await
        };
        first = false;
        let error = match tried {
            Ok(Ok(db)) => return Ok(db),
            // A wrong password or a missing database does not heal by waiting.
            Ok(Err(e)) if !error::database_unreachable_in(&e) => return Err(e),
            Ok(Err(e)) => e,
            Err(_) => anyhow::anyhow!("no connection to PostgreSQL"),
        };
        let delay = waits.next().unwrap_or(std::time::Duration::from_secs(5));
        if tokio::time::Instant::now() + delay >= deadline {
            return Err(error.context(format!(
                "gave up waiting for PostgreSQL after {wait:?} (KILN_DATABASE_WAIT)"
            )));
        }
        tracing::warn!(
            error = format!("{error:#}"),
            retry_in = ?delay,
            "PostgreSQL is unreachable; waiting for it"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Applies pending migrations.
pub async fn migrate(db: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(db).await.context("applying migrations")
}

/// A running dispatcher: HTTP API plus relay, event consumer, dead-letter
/// consumer, lease reaper and rescuer.
pub struct Application {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    state: state::AppState,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Application {
    /// Migrates the database, binds the listener and starts the loops.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let db = connect_db_waiting(
            &settings.connections.database_url,
            settings.connections.database_pool,
            settings.connections.database_wait,
            settings.connections.statement_timeout,
        )
        .await?;
        // Migrations may run longer than a statement of `serve` may (an
        // index over a large table): a connection of their own, no limit.
        let migrations = connect_db(&settings.connections.database_url, 1).await?;
        migrate(&migrations).await?;
        migrations.close().await;
        let listener = tokio::net::TcpListener::bind(&settings.bind)
            .await
            .with_context(|| format!("binding {}", settings.bind))?;
        let addr = listener.local_addr()?;
        let s3 = &settings.connections.s3;
        // Credentials and region the AWS way: none found, no start.
        let bucket = s3.resolve().await?;
        let stop = CancellationToken::new();
        let state = state::AppState {
            streams: Arc::new(state::Streams::new(
                settings.tenant_max_streams,
                settings.max_streams,
                stop.child_token(),
            )),
            db,
            limits: settings.limits(),
            s3: state::s3_client(&bucket, s3.timeout),
            presigner: Arc::new(state::job_presigner(&bucket, s3)?),
            result_urls: Arc::new(state::result_presigner(&bucket, s3)?),
            control: Arc::new(broker::Control::new(
                &settings.connections.amqp_url,
                settings.broker_timeout,
            )),
            metrics: Arc::new(metrics::Metrics::default()),
            relay_wake: Arc::new(tokio::sync::Notify::new()),
            event_path: Arc::default(),
            submits: Arc::new(tokio::sync::Semaphore::new(
                settings.max_concurrent_submits as usize,
            )),
            requests: Arc::new(tokio::sync::Semaphore::new(
                settings.max_concurrent_requests as usize,
            )),
            unknown_tokens: Arc::new(state::UnknownTokens::new(
                state::UNKNOWN_TOKENS_FOR,
                state::UNKNOWN_TOKENS_MAX,
            )),
            presigned: Arc::new(state::PresignCache::new(
                settings.connections.s3.presign_ttl / 2,
                state::PRESIGNED_MAX,
            )),
            settings: Arc::new(settings),
        };
        let mut tasks = JoinSet::new();
        tasks.spawn(relay::run(state.clone(), stop.clone()));
        tasks.spawn(events::run(state.clone(), stop.clone()));
        tasks.spawn(dead_letter::run(state.clone(), stop.clone()));
        tasks.spawn(registry::run(state.clone(), stop.clone()));
        tasks.spawn(reaper::run(state.clone(), stop.clone()));
        tasks.spawn(rescuer::run(state.clone(), stop.clone()));
        tasks.spawn(webhooks::run(state.clone(), stop.clone()));
        let pruner = prune::Pruner::new(
            state.db.clone(),
            state.s3.clone(),
            &state.settings.connections.s3.bucket,
            state.settings.retention.clone(),
        );
        tasks.spawn(pruner.run(state.metrics.clone(), stop.clone()));
        tracing::info!(%addr, "dispatcher listening");
        Ok(Application {
            listener,
            addr,
            state,
            stop,
            tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A token that stops the server and every loop when cancelled.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Serves until the stop token is cancelled (or the server fails).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Application {
            listener,
            state,
            stop,
            mut tasks,
            ..
        } = self;
        let document = openapi::openapi_json(&state.settings);
        let router = api::router(state, document);
        let shutdown = stop.clone();
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        stop.cancel();
        while tasks.join_next().await.is_some() {}
        served.context("serving HTTP")
    }
}
