//! What every request handler and background loop shares.

use crate::broker::Control;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::retry::RetryPolicy;
use kiln_protocol::Limits;
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub settings: Arc<Settings>,
    pub limits: Limits,
    pub s3: aws_sdk_s3::Client,
    /// Signs the URLs a published job attempt carries.
    pub presigner: Arc<kiln_protocol::s3::Presigner>,
    /// Signs the result URLs the API hands out (`KILN_PRESIGN_TTL`, on the
    /// bucket's endpoint).
    pub result_urls: Arc<kiln_protocol::s3::Presigner>,
    pub control: Arc<Control>,
    pub metrics: Arc<Metrics>,
    /// Wakes the relay when new outbox rows were committed.
    pub relay_wake: Arc<Notify>,
    /// Whether worker events reach PostgreSQL, for the reaper.
    pub event_path: Arc<EventPath>,
    /// One permit per submit being read and parsed.
    pub submits: Arc<tokio::sync::Semaphore>,
    /// One permit per request being handled.
    pub requests: Arc<tokio::sync::Semaphore>,
    /// Bogus tokens seen lately, refused without a query.
    pub unknown_tokens: Arc<UnknownTokens>,
    /// Result URLs presigned lately, reused while they stay valid long.
    pub presigned: Arc<PresignCache>,
    /// The event streams open, per tenant.
    pub streams: Arc<Streams>,
}

/// A bounded map whose entries count for `max_age` after they were put.
/// Past `max` entries, an insert first drops the expired ones, and all of
/// them if that is not enough.
pub struct Expiring<K, V> {
    map: std::sync::Mutex<std::collections::HashMap<K, (V, std::time::Instant)>>,
    max_age: std::time::Duration,
    max: usize,
}

impl<K: std::hash::Hash + Eq, V: Clone> Expiring<K, V> {
    pub fn new(max_age: std::time::Duration, max: usize) -> Self {
        Expiring {
            map: Default::default(),
            max_age,
            max,
        }
    }

    /// The value put under `key` less than `max_age` ago.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let map = self.map.lock().expect("expiring map lock");
        map.get(key)
            .filter(|(_, at)| at.elapsed() < self.max_age)
            .map(|(v, _)| v.clone())
    }

    pub fn insert(&self, key: K, value: V) {
        let mut map = self.map.lock().expect("expiring map lock");
        if map.len() >= self.max {
            map.retain(|_, (_, at)| at.elapsed() < self.max_age);
            if map.len() >= self.max {
                map.clear();
            }
        }
        map.insert(key, (value, std::time::Instant::now()));
    }
}

/// Presigned result URLs by object key. A URL is reused while at least
/// half its lifetime is left (the map's `max_age` is half the presign
/// TTL), so job lists polled again and again do not sign every result each
/// time, and a client always gets a URL valid for at least half the
/// presign TTL. At most [`PRESIGNED_MAX`] entries.
pub type PresignCache = Expiring<String, String>;
pub const PRESIGNED_MAX: usize = 200_000;

/// Hashes of well-formed tokens that named no active token lately: asked
/// again within [`UNKNOWN_TOKENS_FOR`], they are refused without a query,
/// so a client (or an attacker) repeating a bogus token costs no database
/// work. At most [`UNKNOWN_TOKENS_MAX`] entries. Tokens are random, so a
/// new one is never in it; a revoked one is unknown anyway.
pub type UnknownTokens = Expiring<Vec<u8>, ()>;
pub const UNKNOWN_TOKENS_FOR: std::time::Duration = std::time::Duration::from_secs(60);
pub const UNKNOWN_TOKENS_MAX: usize = 10_000;

/// Whether worker events reach PostgreSQL, and since when without a break.
/// A lease lapses only for want of heartbeats, and heartbeats that wait in
/// the events queue while the broker or the database is out of the
/// dispatcher's reach renew nothing: so the reaper expires leases only once
/// the event path has worked for a whole lease, time enough for the
/// heartbeats queued meanwhile to be applied.
#[derive(Default)]
pub struct EventPath {
    working_since: std::sync::Mutex<Option<std::time::Instant>>,
}

impl EventPath {
    /// Events are applied (the consumer is connected, PostgreSQL answers).
    pub fn up(&self) {
        let mut since = self.working_since.lock().expect("event path lock");
        since.get_or_insert_with(std::time::Instant::now);
    }

    /// Events cannot be applied (the consumer lost the broker, or
    /// PostgreSQL refused an event).
    pub fn down(&self) {
        *self.working_since.lock().expect("event path lock") = None;
    }

    /// Whether events have been applied for at least `d` without a break.
    pub fn working_for(&self, d: std::time::Duration) -> bool {
        self.working_since
            .lock()
            .expect("event path lock")
            .is_some_and(|since| since.elapsed() >= d)
    }
}

impl AppState {
    /// A permit to read and parse one body (a submit or an upload): at most
    /// `KILN_MAX_CONCURRENT_SUBMITS` at once; the others wait here, holding
    /// nothing but their connection.
    pub async fn body_permit(
        &self,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, crate::error::ApiError> {
        self.submits
            .acquire()
            .await
            .map_err(|_| crate::error::ApiError::Unavailable("the dispatcher is stopping".into()))
    }

    pub fn retry_policy(&self, max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base: self.settings.retry_base,
            max: self.settings.retry_max,
        }
    }
}

/// The dispatcher's bucket client: every call gives up after the S3
/// timeout (connecting after 5 s at most), so a stalled store answers a
/// request with an error instead of holding it.
pub fn s3_client(
    bucket: &kiln_protocol::s3::Bucket,
    timeout: std::time::Duration,
) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::timeout::TimeoutConfig;
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(timeout.min(std::time::Duration::from_secs(5)))
        .operation_timeout(timeout)
        .build();
    aws_sdk_s3::Client::from_conf(bucket.config().timeout_config(timeouts).build())
}

/// The signer of result URLs: the dispatcher's bucket credentials, for
/// URLs on the bucket's endpoint that live the presign TTL.
pub fn result_presigner(
    bucket: &kiln_protocol::s3::Bucket,
    s: &crate::config::S3Settings,
) -> anyhow::Result<kiln_protocol::s3::Presigner> {
    use anyhow::Context;
    kiln_protocol::s3::Presigner::new(bucket, None, s.presign_ttl).context("KILN_PRESIGN_TTL")
}

/// The signer of job URLs: the dispatcher's bucket credentials, for URLs
/// on the workers' endpoint that live the job URL TTL.
pub fn job_presigner(
    bucket: &kiln_protocol::s3::Bucket,
    s: &crate::config::S3Settings,
) -> anyhow::Result<kiln_protocol::s3::Presigner> {
    use anyhow::Context;
    kiln_protocol::s3::Presigner::new(bucket, s.worker_endpoint.as_deref(), s.job_url_ttl)
        .context("KILN_JOB_URL_TTL / KILN_S3_WORKER_ENDPOINT")
}

/// The event streams open (`crate::api::stream`), per tenant, and what
/// ends them all.
pub struct Streams {
    /// Streams per tenant, and their sum.
    open: std::sync::Mutex<(std::collections::HashMap<String, u32>, u32)>,
    per_tenant: u32,
    total: u32,
    stop: CancellationToken,
}

/// Why no stream can open now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamsFull {
    /// The tenant holds `KILN_TENANT_MAX_STREAMS`.
    Tenant,
    /// This server holds `KILN_MAX_STREAMS`.
    Server,
}

impl Streams {
    /// At most `per_tenant` streams per tenant and `total` in all; `stop`
    /// ends every stream.
    pub fn new(per_tenant: u32, total: u32, stop: CancellationToken) -> Streams {
        Streams {
            open: Default::default(),
            per_tenant,
            total,
            stop,
        }
    }

    /// A place for one more stream of `tenant`, held while the value
    /// lives, unless the tenant or the server holds as many as allowed.
    pub fn hold(self: &Arc<Self>, tenant: &str) -> Result<HeldStream, StreamsFull> {
        let mut guard = self.open.lock().expect("streams lock");
        let (open, all) = &mut *guard;
        if *all >= self.total {
            return Err(StreamsFull::Server);
        }
        if open.get(tenant).copied().unwrap_or(0) >= self.per_tenant {
            return Err(StreamsFull::Tenant);
        }
        *open.entry(tenant.to_string()).or_default() += 1;
        *all += 1;
        Ok(HeldStream {
            streams: self.clone(),
            tenant: tenant.to_string(),
        })
    }

    /// Cancelled when the dispatcher stops: every stream ends.
    pub fn stop(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// One open stream of a tenant, counted while alive.
pub struct HeldStream {
    streams: Arc<Streams>,
    tenant: String,
}

impl Drop for HeldStream {
    fn drop(&mut self) {
        let mut guard = self.streams.open.lock().expect("streams lock");
        let (open, all) = &mut *guard;
        if let Some(n) = open.get_mut(&self.tenant) {
            *n -= 1;
            *all -= 1;
            if *n == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_tokens_are_remembered_within_a_bound() {
        let cache = UnknownTokens::new(UNKNOWN_TOKENS_FOR, UNKNOWN_TOKENS_MAX);
        let h = crate::auth::hash_token("kiln_unknown");
        assert!(cache.get(&h).is_none());
        cache.insert(h.clone(), ());
        assert!(cache.get(&h).is_some());
        for i in 0..UNKNOWN_TOKENS_MAX + 5 {
            cache.insert(crate::auth::hash_token(&format!("{i}")), ());
        }
        assert!(
            cache.map.lock().unwrap().len() <= UNKNOWN_TOKENS_MAX,
            "bounded"
        );
    }
}
