//! Webhooks: a batch may name a URL that Kiln posts to when its jobs finish
//! and when it finishes ([`WebhookRequest`] in a batch request,
//! [`Webhook`] in the batch as answered), and what became of each delivery
//! ([`WebhookDelivery`], `GET /v1/batches/{id}/webhooks`).
//!
//! Every delivery is a `POST` of a JSON body with these headers:
//!
//! - `Kiln-Event`: `job.finished` or `batch.finished` (also the body's
//!   `type`);
//! - `Kiln-Delivery`: the delivery's id, the same on every attempt (a
//!   receiver that has seen it may answer 2xx and do nothing);
//! - `Kiln-Signature`: `t=<unix seconds>,v1=<hex>`, where `<hex>` is
//!   HMAC-SHA256 with the batch's `secret` as key over `<t>.<body>` (the
//!   timestamp, a full stop and the body's bytes as received).
//!
//! To verify a delivery ([`verify`] does it): read `t` and every `v1` from
//! `Kiln-Signature`; compute the HMAC over `t`, `.` and the raw body;
//! compare it with each `v1` in constant time; refuse the delivery unless
//! one matches and `t` is within five minutes of the receiver's clock.
//! Answer 2xx within 10 seconds to acknowledge it: any other answer, or
//! none, is tried again later with exponential backoff.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The header naming the event.
pub const EVENT_HEADER: &str = "Kiln-Event";
/// The header holding the delivery's id.
pub const DELIVERY_HEADER: &str = "Kiln-Delivery";
/// The header holding the timestamp and signature.
pub const SIGNATURE_HEADER: &str = "Kiln-Signature";
/// How far a signature's timestamp may be from the receiver's clock.
pub const TOLERANCE_SECS: i64 = 300;
/// The shortest secret a batch may give.
pub const MIN_SECRET_CHARS: usize = 16;

/// What a webhook is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum WebhookEvent {
    /// A job of the batch reached `succeeded`, `failed` or `cancelled`.
    #[serde(rename = "job.finished")]
    JobFinished,
    /// The batch has nothing queued or running any more.
    #[serde(rename = "batch.finished")]
    BatchFinished,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 2] = [WebhookEvent::JobFinished, WebhookEvent::BatchFinished];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::JobFinished => "job.finished",
            WebhookEvent::BatchFinished => "batch.finished",
        }
    }
}

impl std::str::FromStr for WebhookEvent {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WebhookEvent::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| format!("unknown webhook event {s:?}"))
    }
}

/// A batch request's webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    /// An `http` or `https` URL that does not resolve to a loopback,
    /// private or link-local address (unless the server allows them).
    pub url: String,
    /// The key of each delivery's signature, at least 16 characters. It is
    /// stored with the batch and never answered.
    pub secret: String,
    /// What to post; both when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<WebhookEvent>>,
}

/// A batch's webhook as the API answers it (without its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Webhook {
    pub url: String,
    pub events: Vec<WebhookEvent>,
}

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not acknowledged yet: it is tried (again) at `next_attempt_at`.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Not acknowledged within the server's retry time; no more attempts.
    Failed,
}

/// One delivery of a batch's webhook and what its attempts got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct WebhookDelivery {
    /// The `Kiln-Delivery` header of its posts.
    pub id: String,
    pub event: WebhookEvent,
    /// The job it tells of (`job.finished`).
    pub job_id: Option<Uuid>,
    pub state: DeliveryState,
    pub attempts: u32,
    /// The receiver's HTTP status at the last attempt; absent when it did
    /// not answer.
    pub last_status: Option<u16>,
    /// What went wrong at the last attempt.
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// When a pending delivery is tried next.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A page of a batch's deliveries, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct WebhookDeliveryPage {
    pub items: Vec<WebhookDelivery>,
    /// Give it as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

#[cfg(feature = "webhook")]
mod signature {
    use crate::api::webhook::TOLERANCE_SECS;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `Kiln-Signature` header of `body` sent at `timestamp`.
    pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = mac(secret, timestamp, body).finalize().into_bytes();
        format!("t={timestamp},v1={}", hex::encode(tag))
    }

    /// Why a delivery is refused.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum Refused {
        #[error("the Kiln-Signature header has no t= or no v1=")]
        Malformed,
        #[error("the signature's timestamp is more than {TOLERANCE_SECS} s from now")]
        Stale,
        #[error("no v1 signature matches the body")]
        Mismatch,
    }

    /// Checks a delivery: `header` is its `Kiln-Signature`, `body` the raw
    /// bytes received, `now` the receiver's clock in unix seconds.
    pub fn verify(secret: &str, header: &str, body: &[u8], now: i64) -> Result<(), Refused> {
        let mut timestamp = None;
        let mut tags = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
                Some(("v1", v)) => tags.extend(hex::decode(v).ok()),
                _ => {}
            }
        }
        let Some(t) = timestamp else {
            return Err(Refused::Malformed);
        };
        if tags.is_empty() {
            return Err(Refused::Malformed);
        }
        if (now - t).abs() > TOLERANCE_SECS {
            return Err(Refused::Stale);
        }
        // `verify_slice` compares in constant time.
        if tags
            .iter()
            .any(|tag| mac(secret, t, body).verify_slice(tag).is_ok())
        {
            Ok(())
        } else {
            Err(Refused::Mismatch)
        }
    }
}

#[cfg(feature = "webhook")]
pub use signature::{sign, verify, Refused};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_and_write_their_names() {
        for e in WebhookEvent::ALL {
            assert_eq!(e.as_str().parse::<WebhookEvent>(), Ok(e));
            assert_eq!(serde_json::to_value(e).unwrap(), e.as_str());
        }
        assert!("job.started".parse::<WebhookEvent>().is_err());
    }

    #[cfg(feature = "webhook")]
    #[test]
    fn signatures_verify_and_refuse_what_was_changed() {
        let body = br#"{"type":"job.finished"}"#;
        let header = sign("a secret of sixteen", 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="), "{header}");
        assert_eq!(
            verify("a secret of sixteen", &header, body, 1_700_000_100),
            Ok(())
        );
        // Another secret, another body, an old timestamp, a bad header.
        assert_eq!(
            verify("another secret!!", &header, body, 1_700_000_000),
            Err(Refused::Mismatch)
        );
        assert_eq!(
            verify("a secret of sixteen", &header, b"{}", 1_700_000_000),
            Err(Refused::Mismatch)
        );
        assert_eq!(
            verify("a secret of sixteen", &header, body, 1_700_000_000 + 301),
            Err(Refused::Stale)
        );
        assert_eq!(
            verify("a secret of sixteen", "v1=00", body, 1_700_000_000),
            Err(Refused::Malformed)
        );
        // A retimed header does not carry the old signature over.
        let moved = header.replace("t=1700000000", "t=1700000001");
        assert_eq!(
            verify("a secret of sixteen", &moved, body, 1_700_000_000),
            Err(Refused::Mismatch)
        );
        // Several v1 (a rotated secret): any one may match.
        let both = format!("{header},v1=00ff");
        assert_eq!(
            verify("a secret of sixteen", &both, body, 1_700_000_000),
            Ok(())
        );
    }

    #[cfg(feature = "webhook")]
    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Python's hmac.new(b"key", b"1.{}", hashlib.sha256).hexdigest(),
        // as the README's recipe computes it.
        assert_eq!(
            sign("key", 1, b"{}"),
            "t=1,v1=1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
        );
    }
}
