//! Settings of a dispatcher process, read from flags or `KILN_*` variables.
//!
//! Every default matches the local stack (`deploy/local/stack up`), and
//! every interval is configurable so that tests can run with small ones.

use clap::Args;
use kiln_protocol::Limits;
use std::time::Duration;

/// `250ms`, `30s`, `5m`, `1h`, `30d`, a bare number of seconds, ...: see
/// [`kiln_protocol::duration`].
pub use kiln_protocol::duration::parse as parse_duration;

/// A retention: a duration of at least a second (a batch is never deleted
/// the moment it finishes).
pub fn parse_retention(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d >= Duration::from_secs(1) => Ok(d),
        _ => Err(format!("a retention of {s:?} is shorter than a second")),
    }
}

/// A duration longer than zero.
pub fn parse_positive(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if !d.is_zero() => Ok(d),
        _ => Err(format!("{s:?} must be longer than zero")),
    }
}

/// Connection settings for PostgreSQL, RabbitMQ and S3.
#[derive(Debug, Clone, Args)]
pub struct Connections {
    #[arg(
        long,
        env = "KILN_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/kiln"
    )]
    pub database_url: String,
    /// Largest number of PostgreSQL connections this process opens.
    #[arg(long, env = "KILN_DATABASE_POOL", default_value_t = 16)]
    pub database_pool: u32,
    /// How long `serve` waits for PostgreSQL at start before giving up.
    #[arg(long, env = "KILN_DATABASE_WAIT", default_value = "2m", value_parser = parse_duration)]
    pub database_wait: Duration,
    /// Longest time one SQL statement of `serve` may run before PostgreSQL
    /// cancels it (0: no limit).
    #[arg(long, env = "KILN_STATEMENT_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub statement_timeout: Duration,
    #[arg(
        long,
        env = "KILN_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    #[command(flatten)]
    pub s3: S3Settings,
}

/// The bucket (the flags and variables every Kiln process reads), and what
/// only the API needs.
#[derive(Debug, Clone, Args)]
pub struct S3Settings {
    #[command(flatten)]
    pub store: kiln_protocol::s3::S3Args,
    /// Lifetime of the presigned result URLs handed out by the API.
    #[arg(long, env = "KILN_PRESIGN_TTL", default_value = "1h", value_parser = parse_duration)]
    pub presign_ttl: Duration,
    /// Lifetime of the URLs each published job attempt carries (a PUT per
    /// object it may write, a GET for its init image): it must cover the
    /// job's wait in the queue and its render. An attempt whose URLs
    /// expired is published again with fresh ones (at most 7d: SigV4).
    #[arg(long = "job-url-ttl", env = "KILN_JOB_URL_TTL", default_value = "24h", value_parser = parse_duration)]
    pub job_url_ttl: Duration,
    /// Where workers reach the bucket, when that is not the S3 endpoint
    /// (the host is part of every signature).
    #[arg(long = "s3-worker-endpoint", env = "KILN_S3_WORKER_ENDPOINT")]
    pub worker_endpoint: Option<String>,
    /// Longest time one call to the bucket may take (an upload, with its
    /// retries) before the request fails.
    #[arg(long = "s3-timeout", env = "KILN_S3_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl std::ops::Deref for S3Settings {
    type Target = kiln_protocol::s3::S3Args;
    fn deref(&self) -> &Self::Target {
        &self.store
    }
}

impl std::ops::DerefMut for S3Settings {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.store
    }
}

/// Everything `serve` needs.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub connections: Connections,
    /// Address of the HTTP API (port 0 picks a free port).
    #[arg(long, env = "KILN_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,

    // Intake limits.
    #[arg(long, env = "KILN_MAX_PROMPT_CHARS", default_value_t = 1000)]
    pub max_prompt_chars: usize,
    #[arg(long, env = "KILN_MAX_BATCH_JOBS", default_value_t = 100_000)]
    pub max_batch_jobs: usize,
    /// Largest request body, in bytes (JSON or NDJSON).
    #[arg(long, env = "KILN_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Longest time a client may take to send a body (408 past it).
    #[arg(long, env = "KILN_BODY_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// Request bodies (submits and uploads) read and parsed at once; more
    /// wait their turn (each may hold a body of up to KILN_MAX_BODY_BYTES).
    #[arg(long, env = "KILN_MAX_CONCURRENT_SUBMITS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_submits: u32,
    /// Requests handled at once; more wait their turn.
    #[arg(long, env = "KILN_MAX_CONCURRENT_REQUESTS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,
    #[arg(long, env = "KILN_MAX_SIDE", default_value_t = 1024)]
    pub max_side: u32,
    #[arg(long, env = "KILN_MAX_STEPS", default_value_t = 5000)]
    pub max_steps: u32,
    #[arg(long, env = "KILN_MAX_CANDIDATES", default_value_t = 64)]
    pub max_candidates: u32,
    /// Largest upload, in bytes.
    #[arg(long, env = "KILN_MAX_UPLOAD_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_upload_bytes: usize,
    /// Largest width or height of an uploaded image, in pixels.
    #[arg(long, env = "KILN_MAX_UPLOAD_SIDE", default_value_t = 4096)]
    pub max_upload_side: u32,

    // Tenants' default quotas (each tenant's own: `tenant set-limits`).
    /// Jobs one tenant may have queued or running.
    #[arg(long, env = "KILN_TENANT_MAX_ACTIVE_JOBS", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(0..=i64::MAX as u64))]
    pub tenant_max_active_jobs: u64,
    /// Batches one tenant may submit per minute.
    #[arg(long, env = "KILN_TENANT_SUBMITS_PER_MINUTE", default_value_t = 600)]
    pub tenant_submits_per_minute: u32,

    // Jobs.
    #[arg(long, env = "KILN_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// How long a running job lives without a heartbeat before it is retried.
    #[arg(long, env = "KILN_LEASE", default_value = "2m", value_parser = parse_duration)]
    pub lease: Duration,
    /// First retry delay; doubles per attempt, with jitter.
    #[arg(long, env = "KILN_RETRY_BASE", default_value = "5s", value_parser = parse_duration)]
    pub retry_base: Duration,
    #[arg(long, env = "KILN_RETRY_MAX", default_value = "10m", value_parser = parse_duration)]
    pub retry_max: Duration,

    // Background loops.
    /// Jobs per engine published but not yet started; bounds how far a
    /// backlog runs ahead of a later, higher-priority batch.
    #[arg(long, env = "KILN_RELAY_WINDOW", default_value_t = 2000)]
    pub relay_window: i64,
    /// Messages published per relay transaction.
    #[arg(long, env = "KILN_RELAY_BATCH", default_value_t = 1000)]
    pub relay_batch: i64,
    #[arg(long, env = "KILN_RELAY_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub relay_interval: Duration,
    #[arg(long, env = "KILN_REAPER_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub reaper_interval: Duration,
    /// A job the broker confirmed and no worker started within this time,
    /// while the engine's queue holds fewer ready messages than such jobs,
    /// is published again (its message was lost: a purged or deleted queue).
    #[arg(long, env = "KILN_RESCUE_AFTER", default_value = "10m", value_parser = parse_duration)]
    pub rescue_after: Duration,
    /// Times one attempt is published again because the broker lost it
    /// (then the job fails), and, counted apart, because the bucket refused
    /// its URLs (then the refusal spends the attempt).
    #[arg(long, env = "KILN_RESCUE_LIMIT", default_value_t = 3)]
    pub rescue_limit: u32,
    #[arg(long, env = "KILN_RESCUE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub rescue_interval: Duration,
    /// How long one wait on the broker may take (a publish and its
    /// confirm, a connection) before the loop gives up and reconnects.
    #[arg(long, env = "KILN_BROKER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub broker_timeout: Duration,
    /// Wait between reconnection attempts to RabbitMQ.
    #[arg(long, env = "KILN_RECONNECT_DELAY", default_value = "1s", value_parser = parse_duration)]
    pub reconnect_delay: Duration,
    /// Unacknowledged worker events the consumer holds at once.
    #[arg(long, env = "KILN_EVENT_PREFETCH", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..))]
    pub event_prefetch: u16,
    /// Workers not heard from for this long leave the worker registry
    /// (`GET /v1/workers`); until then a stopped one is shown as stopped and
    /// a silent one as lost.
    #[arg(long, env = "KILN_WORKER_FORGET_AFTER", default_value = "24h", value_parser = parse_duration)]
    pub worker_forget_after: Duration,

    // Event streams (`GET /v1/batches/{id}/events`, `GET /v1/events`).
    /// Event streams one tenant may hold open at once; one more is
    /// answered 429.
    #[arg(long, env = "KILN_TENANT_MAX_STREAMS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub tenant_max_streams: u32,
    /// Event streams this server holds open at once, of every tenant; one
    /// more is answered 503 (each polls PostgreSQL).
    #[arg(long, env = "KILN_MAX_STREAMS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: u32,
    /// How often an open event stream looks for new events.
    #[arg(long, env = "KILN_STREAM_POLL", default_value = "500ms", value_parser = parse_positive)]
    pub stream_poll: Duration,
    /// An event stream is closed after this long: its client reconnects
    /// with `Last-Event-ID` (a load balancer may then send it elsewhere).
    #[arg(long, env = "KILN_STREAM_MAX_AGE", default_value = "30m", value_parser = parse_positive)]
    pub stream_max_age: Duration,
    /// Job events are kept this long for streams that resume; a stream
    /// resumed from an older one is sent `reset`.
    #[arg(long, env = "KILN_FEED_KEEP", default_value = "24h", value_parser = parse_positive)]
    pub feed_keep: Duration,

    #[command(flatten)]
    pub retention: Retention,

    #[command(flatten)]
    pub webhooks: Webhooks,
}

/// How batches' webhooks are sent (see `crate::webhooks`).
#[derive(Debug, Clone, Args)]
pub struct Webhooks {
    /// Take webhook URLs that resolve to loopback, private, link-local or
    /// other non-public addresses (refused by default: a tenant could
    /// otherwise make the dispatcher post into its own network).
    #[arg(id = "webhook_allow_private", long = "webhook-allow-private", env = "KILN_WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_private: bool,
    /// How long a delivery is tried before it is given up (`failed`).
    #[arg(id = "webhook_retry_for", long = "webhook-retry-for", env = "KILN_WEBHOOK_RETRY_FOR", default_value = "24h", value_parser = parse_positive)]
    pub retry_for: Duration,
    /// The wait after a delivery's first failed attempt; each later wait
    /// doubles (with jitter), up to an hour.
    #[arg(id = "webhook_first_retry", long = "webhook-first-retry", env = "KILN_WEBHOOK_FIRST_RETRY", default_value = "10s", value_parser = parse_positive)]
    pub first_retry: Duration,
    /// How long a receiver has to answer an attempt.
    #[arg(id = "webhook_timeout", long = "webhook-timeout", env = "KILN_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_positive)]
    pub timeout: Duration,
    /// How often the sender looks for due deliveries.
    #[arg(id = "webhook_poll", long = "webhook-poll", env = "KILN_WEBHOOK_POLL", default_value = "1s", value_parser = parse_positive)]
    pub poll: Duration,
}

/// What the dispatcher deletes, and when (see `crate::prune`).
#[derive(Debug, Clone, Args)]
pub struct Retention {
    /// Finished batches are deleted (with their jobs, results and images)
    /// this long after their last job finished, and uploads this long after
    /// a submit last used them once no job refers to them. A tenant's own
    /// (`kiln-dispatcher tenant set-retention`) takes precedence.
    #[arg(long, env = "KILN_RETENTION", default_value = "30d", value_parser = parse_retention)]
    pub retention: Duration,
    /// How often the dispatcher prunes (0: never; `kiln-dispatcher prune`
    /// still does).
    #[arg(long, env = "KILN_PRUNE_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub prune_interval: Duration,
    /// Jobs deleted per transaction at most (a larger batch goes alone).
    #[arg(long, env = "KILN_PRUNE_CHUNK", default_value_t = 5000, value_parser = clap::value_parser!(i64).range(1..))]
    pub prune_chunk: i64,
    /// Objects in the bucket that no row refers to (an upload whose row
    /// never committed, a duplicate run's extra images) are deleted once
    /// they are this old.
    #[arg(long, env = "KILN_ORPHAN_GRACE", default_value = "24h", value_parser = parse_duration)]
    pub orphan_grace: Duration,
    /// Pages of 1000 objects each pass looks through for orphans (the scan
    /// goes on where the last pass stopped).
    #[arg(long, env = "KILN_ORPHAN_SCAN_PAGES", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub orphan_scan_pages: u32,
}

impl Settings {
    /// Intake bounds for [`kiln_protocol::JobSpec::parse`].
    pub fn limits(&self) -> Limits {
        Limits {
            max_prompt_chars: self.max_prompt_chars,
            max_side: self.max_side,
            max_steps: self.max_steps,
            max_candidates: self.max_candidates,
        }
    }

    /// The defaults, as if started without flags or environment.
    pub fn defaults() -> Settings {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            settings: Settings,
        }
        // `env` lookups are part of clap's parsing; start from the built-in
        // defaults by parsing with every KILN_* value ignored.
        let cmd = <Wrapper as clap::CommandFactory>::command();
        let cmd = cmd.mut_args(|a| a.env(None::<&str>));
        let matches = cmd
            .try_get_matches_from(["kiln-dispatcher"])
            .expect("defaults parse");
        <Wrapper as clap::FromArgMatches>::from_arg_matches(&matches)
            .expect("defaults parse")
            .settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_common_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86400)
        );
        assert_eq!(parse_duration("0.5s").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_retention("0").is_err());
        assert!(parse_retention("500ms").is_err());
        assert_eq!(
            parse_retention("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
    }

    #[test]
    fn stream_intervals_must_be_longer_than_zero() {
        assert_eq!(parse_positive("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_positive("0s")
            .unwrap_err()
            .contains("longer than zero"));
        assert!(parse_positive("soon").is_err());
    }

    #[test]
    fn defaults_match_the_local_stack() {
        let s = Settings::defaults();
        assert_eq!(s.bind, "127.0.0.1:8080");
        assert_eq!(
            s.connections.database_url,
            "postgres://postgres@127.0.0.1:5432/kiln"
        );
        assert_eq!(
            s.connections.amqp_url,
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        // No bucket defaults: the local stack's come from `stack env`.
        assert_eq!(s.connections.s3.endpoint, None);
        assert_eq!(s.connections.s3.bucket, "kiln");
        assert_eq!(s.connections.s3.region, None);
        assert_eq!(s.connections.s3.access_key, None);
        assert_eq!(s.max_attempts, 3);
        assert_eq!(s.connections.s3.presign_ttl, Duration::from_secs(3600));
        assert_eq!(s.connections.s3.job_url_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(s.connections.s3.worker_endpoint, None);
        assert_eq!(s.retention.retention, Duration::from_secs(30 * 86400));
        assert_eq!(s.retention.orphan_grace, Duration::from_secs(86400));
    }
}
