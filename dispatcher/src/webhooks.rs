//! Sending batches' webhooks: every `KILN_WEBHOOK_POLL` the sender claims
//! the deliveries that are due (for a lease, so that replicas share the
//! work and a sender that dies leaves its claims to the others), posts
//! each one signed (`kiln_protocol::api::webhook` documents the headers and
//! how a receiver verifies them) and records the attempt. A delivery that
//! gets no 2xx is tried again with exponential backoff, from
//! `KILN_WEBHOOK_FIRST_RETRY` doubling up to an hour, until it is older
//! than `KILN_WEBHOOK_RETRY_FOR`, when it is given up (`failed`).
//!
//! Destinations: unless `KILN_WEBHOOK_ALLOW_PRIVATE`, the client resolves
//! host names itself and connects only to public addresses (so a name
//! that resolved to a public address at intake and to a private one now
//! is refused), an IP address in the URL must be public, and redirects are
//! not followed.

use crate::config::Webhooks;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::store;
use crate::store::webhooks::Claimed;
use futures::StreamExt;
use kiln_protocol::api::webhook::{sign, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER};
use kiln_protocol::backoff::Backoff;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Deliveries claimed per read of the table.
const CLAIM_PAGE: i64 = 64;
/// Deliveries posted at once.
const CONCURRENT: usize = 16;
/// The longest wait between two attempts.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// The most of a receiver's answer kept as the attempt's error.
const MAX_ERROR_CHARS: usize = 300;
/// The most of a receiver's answer read.
const MAX_ERROR_BYTES: usize = 1024;

/// Whether `ip` is an address the sender may post to: not loopback,
/// private, link-local, unspecified, multicast, shared (CGNAT),
/// documentation, benchmarking or otherwise reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

/// The IPv4 address an IPv6 one stands for: mapped (`::ffff:a.b.c.d`),
/// compatible (`::a.b.c.d`, `::` and `::1` included, which map to
/// non-public IPv4 addresses) or NAT64 (`64:ff9b::a.b.c.d`,
/// `64:ff9b:1::/48`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0; 4] || s[2] == 1);
    if nat64 {
        return Some(low);
    }
    ip.to_ipv4()
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_multicast()
        // Unique local fc00::/7, link-local fe80::/10, site-local fec0::/10.
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] & 0xffc0) == 0xfec0
        // Discard-only 100::/64, documentation 2001:db8::/32, 6to4
        // 2002::/16, and the IETF protocol block 2001::/23.
        || (s[0] == 0x100 && s[1..4] == [0; 3])
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        || s[0] == 0x2002
        || (s[0] == 0x2001 && s[1] < 0x200))
}

/// A resolver that answers a host's public addresses only.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| is_public(a.ip()))
                .collect();
            if public.is_empty() {
                // The addresses are not said: a tenant learns nothing of
                // the dispatcher's network from a refusal.
                let err: Box<dyn std::error::Error + Send + Sync> = if found.is_empty() {
                    format!("{host} has no address").into()
                } else {
                    format!("{host} resolves to no public address (KILN_WEBHOOK_ALLOW_PRIVATE)")
                        .into()
                };
                return Err(err);
            }
            let addrs: reqwest::dns::Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

/// Posts due deliveries until `stop`.
pub(crate) async fn run(state: AppState, stop: CancellationToken) {
    let sender = match Sender::new(
        state.db.clone(),
        state.settings.webhooks.clone(),
        state.metrics.clone(),
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "webhooks: no HTTP client; deliveries wait");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(sender.settings.poll) => {}
        }
        if let Err(e) = sender.pass().await {
            tracing::warn!(error = %format!("{e:#}"), "webhooks: a pass failed; trying again");
        }
    }
}

/// What posts deliveries.
pub(crate) struct Sender {
    db: sqlx::PgPool,
    client: reqwest::Client,
    settings: Webhooks,
    metrics: Arc<Metrics>,
}

/// What one attempt got.
enum Outcome {
    Delivered(u16),
    Failed(Option<u16>, String),
}

impl Sender {
    pub(crate) fn new(
        db: sqlx::PgPool,
        settings: Webhooks,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Sender> {
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kiln-dispatcher/", env!("CARGO_PKG_VERSION")));
        if !settings.allow_private {
            // A proxy would resolve the receiver's name itself, past the
            // check: deliveries go direct.
            builder = builder.dns_resolver(Arc::new(PublicOnly)).no_proxy();
        }
        Ok(Sender {
            db,
            client: builder.build()?,
            settings,
            metrics,
        })
    }

    /// Sends every delivery due now: receivers in parallel, each one's
    /// deliveries in turn, so that a receiver that fails costs one attempt
    /// per page, and the rest of its deliveries wait (deferred) as if they
    /// had failed with it.
    async fn pass(&self) -> anyhow::Result<()> {
        // Long enough for a page's posts at their timeout.
        let lease = self.settings.timeout * (CLAIM_PAGE as u32 + 1);
        loop {
            let claimed = store::webhooks::claim(&self.db, CLAIM_PAGE, lease).await?;
            let n = claimed.len();
            let mut by_url: Vec<Vec<Claimed>> = Vec::new();
            for d in claimed {
                match by_url.iter_mut().find(|g| g[0].url == d.url) {
                    Some(g) => g.push(d),
                    None => by_url.push(vec![d]),
                }
            }
            futures::stream::iter(by_url)
                .for_each_concurrent(CONCURRENT, |group| self.deliver_to_one(group))
                .await;
            if (n as i64) < CLAIM_PAGE {
                return Ok(());
            }
        }
    }

    /// The deliveries of one receiver, in turn, until one fails; the rest
    /// are deferred by the wait that failure got.
    async fn deliver_to_one(&self, mut group: Vec<Claimed>) {
        // The least tried first: deliveries deferred behind one that
        // failed get their turn at the next pass.
        group.sort_by_key(|d| (d.attempts, d.id));
        let mut left = group.into_iter();
        for d in left.by_ref() {
            if let Some(wait) = self.deliver(d).await {
                let rest: Vec<i64> = left.map(|d| d.id).collect();
                if let Err(e) = store::webhooks::defer(&self.db, &rest, wait).await {
                    tracing::warn!(error = %e, "webhooks: could not defer deliveries");
                }
                return;
            }
        }
    }

    /// One attempt at `d`, recorded; answers the wait before the next when
    /// it failed.
    async fn deliver(&self, d: Claimed) -> Option<Duration> {
        let outcome = self.attempt(&d).await;
        let mut failed = None;
        let recorded = match outcome {
            Outcome::Delivered(status) => {
                self.metrics.webhooks_delivered.inc();
                store::webhooks::delivered(&self.db, d.id, status).await
            }
            Outcome::Failed(status, error) => {
                self.metrics.webhook_attempts_failed.inc();
                let tries = usize::try_from(d.attempts).unwrap_or(0);
                let wait = Backoff::new(self.settings.first_retry, MAX_WAIT)
                    .delays()
                    .nth(tries)
                    .unwrap_or(MAX_WAIT);
                tracing::info!(delivery = d.id, attempts = d.attempts + 1, ?status, %error, retry_in = ?wait, "webhook attempt failed");
                failed = Some(wait);
                store::webhooks::attempt_failed(
                    &self.db,
                    d.id,
                    status,
                    &error,
                    wait,
                    self.settings.retry_for,
                )
                .await
                .map(|gave_up| {
                    if gave_up {
                        self.metrics.webhooks_given_up.inc();
                        tracing::warn!(delivery = d.id, created_at = %d.created_at, "webhook delivery given up (KILN_WEBHOOK_RETRY_FOR)");
                    }
                })
            }
        };
        // Unrecorded, the claim lapses and the delivery is tried again.
        if let Err(e) = recorded {
            tracing::warn!(delivery = d.id, error = %e, "webhooks: could not record an attempt");
        }
        failed
    }

    async fn attempt(&self, d: &Claimed) -> Outcome {
        if let Err(why) = self.destination_allowed(&d.url) {
            return Outcome::Failed(None, why);
        }
        let now = chrono::Utc::now().timestamp();
        let sent = self
            .client
            .post(&d.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, &d.event)
            .header(DELIVERY_HEADER, d.id.to_string())
            .header(SIGNATURE_HEADER, sign(&d.secret, now, d.body.as_bytes()))
            .body(d.body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Outcome::Delivered(r.status().as_u16()),
            Ok(mut r) => {
                let status = r.status();
                // The start of the answer only: a receiver cannot make the
                // dispatcher hold a large body.
                let mut head = Vec::new();
                while head.len() < MAX_ERROR_BYTES {
                    match r.chunk().await {
                        Ok(Some(chunk)) => head.extend_from_slice(&chunk),
                        _ => break,
                    }
                }
                head.truncate(MAX_ERROR_BYTES);
                let text = String::from_utf8_lossy(&head);
                let text: String = text.chars().take(MAX_ERROR_CHARS).collect();
                let error = match text.trim() {
                    "" => format!("the receiver answered {status}"),
                    t => format!("the receiver answered {status}: {t}"),
                };
                Outcome::Failed(Some(status.as_u16()), error)
            }
            Err(e) => Outcome::Failed(None, kiln_protocol::error_chain(&e)),
        }
    }

    /// An IP address in the URL must be public (names are checked by the
    /// resolver), unless private destinations are allowed.
    fn destination_allowed(&self, url: &str) -> Result<(), String> {
        if self.settings.allow_private {
            return Ok(());
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let ip = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(()),
        };
        if is_public(ip) {
            Ok(())
        } else {
            Err(
                "the URL's address is not a public one; not posted (KILN_WEBHOOK_ALLOW_PRIVATE)"
                    .into(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_reserved_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b:1::a00:1",
            "fec0::1",
            "100::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn names_that_resolve_to_private_addresses_are_refused() {
        use reqwest::dns::Resolve;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = match PublicOnly.resolve(name).await {
            Ok(_) => panic!("localhost resolved for posting"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("no public address"), "{err}");
    }
}
