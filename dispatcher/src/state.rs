//! What every request handler and background loop shares.

use crate::broker::Control;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::retry::RetryPolicy;
use kiln_protocol::Limits;
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub settings: Arc<Settings>,
    pub limits: Limits,
    pub s3: aws_sdk_s3::Client,
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
}

/// Presigned result URLs by object key. A URL is reused while at least
/// half its lifetime is left, so job lists polled again and again do not
/// sign every result each time, and a client always gets a URL valid for
/// at least half the presign TTL. Bounded: past [`PresignCache::MAX`]
/// entries, the old ones go (all of them if need be).
#[derive(Default)]
pub struct PresignCache(
    std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
);

impl PresignCache {
    const MAX: usize = 200_000;

    /// The URL of `key` signed less than `ttl / 2` ago.
    pub fn get(&self, key: &str, ttl: std::time::Duration) -> Option<String> {
        let map = self.0.lock().expect("presign cache lock");
        map.get(key)
            .filter(|(_, at)| at.elapsed() < ttl / 2)
            .map(|(url, _)| url.clone())
    }

    pub fn put(&self, key: &str, url: &str, ttl: std::time::Duration) {
        let mut map = self.0.lock().expect("presign cache lock");
        if map.len() >= Self::MAX {
            map.retain(|_, (_, at)| at.elapsed() < ttl / 2);
            if map.len() >= Self::MAX {
                map.clear();
            }
        }
        map.insert(
            key.to_string(),
            (url.to_string(), std::time::Instant::now()),
        );
    }
}

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

/// Hashes of well-formed tokens that named no active token lately: asked
/// again within [`UnknownTokens::FOR`], they are refused without a query,
/// so a client (or an attacker) repeating a bogus token costs no database
/// work. Bounded; a full cache is cleared. Tokens are random, so a new one
/// is never in it; a revoked one is unknown anyway.
#[derive(Default)]
pub struct UnknownTokens(std::sync::Mutex<std::collections::HashMap<Vec<u8>, std::time::Instant>>);

impl UnknownTokens {
    const FOR: std::time::Duration = std::time::Duration::from_secs(60);
    const MAX: usize = 10_000;

    pub fn contains(&self, hash: &[u8]) -> bool {
        let map = self.0.lock().expect("unknown tokens lock");
        map.get(hash).is_some_and(|at| at.elapsed() < Self::FOR)
    }

    pub fn insert(&self, hash: Vec<u8>) {
        let mut map = self.0.lock().expect("unknown tokens lock");
        if map.len() >= Self::MAX {
            map.retain(|_, at| at.elapsed() < Self::FOR);
            if map.len() >= Self::MAX {
                map.clear();
            }
        }
        map.insert(hash, std::time::Instant::now());
    }
}

impl AppState {
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
pub fn s3_client(s: &crate::config::S3Settings) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::timeout::TimeoutConfig;
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(s.timeout.min(std::time::Duration::from_secs(5)))
        .operation_timeout(s.timeout)
        .build();
    aws_sdk_s3::Client::from_conf(s.config("kiln-dispatcher").timeout_config(timeouts).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_tokens_are_remembered_within_a_bound() {
        let cache = UnknownTokens::default();
        let h = crate::auth::hash_token("kiln_unknown");
        assert!(!cache.contains(&h));
        cache.insert(h.clone());
        assert!(cache.contains(&h));
        for i in 0..UnknownTokens::MAX + 5 {
            cache.insert(crate::auth::hash_token(&format!("{i}")));
        }
        assert!(
            cache.0.lock().unwrap().len() <= UnknownTokens::MAX,
            "bounded"
        );
    }
}
