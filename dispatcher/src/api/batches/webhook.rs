//! A batch's `webhook` at intake: the URL's form, the secret's bounds and
//! the events, checked with the rest of the request; then, unless the
//! operator allows private destinations, where the URL's host resolves.
//!
//! The URL's form is one regular expression, stated in the OpenAPI
//! document and matched here, so the document and the server agree on
//! every string: `http` or `https`, a host name whose last label starts
//! with a letter or a dotted IPv4 address, an optional port, an optional
//! path of visible ASCII. A label is letters and digits, with single
//! hyphens between them (so no `xn--` label, which a URL parser would read
//! as punycode). IPv6 literals and user names are not taken.

use crate::error::{ApiError, FieldProblem};
use crate::store::batches::NewWebhook;
use kiln_protocol::api::webhook::MIN_SECRET_CHARS;
use kiln_protocol::api::{WebhookEvent, WebhookRequest};
use regex::Regex;
use std::sync::LazyLock;
use std::time::Duration;

/// The form of a webhook URL (see the module's text).
pub(crate) const URL_PATTERN: &str = concat!(
    r"^https?://",
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}",
    r"|(?:[A-Za-z0-9](?:-?[A-Za-z0-9])*\.)*[A-Za-z](?:-?[A-Za-z0-9])*)",
    r"(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?",
    r"(?:/[!-~]*)?$"
);
pub(crate) const MAX_URL_CHARS: usize = 2048;
pub(crate) const MAX_SECRET_CHARS: usize = 256;
/// How long intake waits for the URL's host to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

static URL_FORM: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(URL_PATTERN).expect("the URL pattern compiles"));

/// The webhook as it is stored, or every problem it has.
pub(crate) fn check(w: &WebhookRequest) -> Result<NewWebhook, Vec<FieldProblem>> {
    let mut problems = Vec::new();
    if w.url.chars().count() > MAX_URL_CHARS {
        problems.push(FieldProblem::new(
            "/webhook/url",
            format!("is longer than {MAX_URL_CHARS} characters"),
        ));
    } else if !URL_FORM.is_match(&w.url) || reqwest::Url::parse(&w.url).is_err() {
        problems.push(FieldProblem::new(
            "/webhook/url",
            "is not an http or https URL with a host name or IPv4 address, an optional port and path",
        ));
    }
    let secret_chars = w.secret.chars().count();
    if !(MIN_SECRET_CHARS..=MAX_SECRET_CHARS).contains(&secret_chars) {
        problems.push(FieldProblem::new(
            "/webhook/secret",
            format!("is {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} characters"),
        ));
    } else if w.secret.contains('\0') {
        problems.push(FieldProblem::new(
            "/webhook/secret",
            "holds no NUL character",
        ));
    }
    let mut events: Vec<WebhookEvent> = w.events.clone().unwrap_or(WebhookEvent::ALL.to_vec());
    if events.is_empty() {
        problems.push(FieldProblem::new(
            "/webhook/events",
            "is empty; leave it out for every event",
        ));
    }
    events.sort();
    events.dedup();
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(NewWebhook {
        url: w.url.clone(),
        secret: w.secret.clone(),
        events: events.iter().map(|e| e.as_str().to_string()).collect(),
    })
}

/// 422 unless every address the URL's host resolves to is public (see
/// [`crate::webhooks::is_public`]). Run only when private destinations are
/// not allowed; the sender checks again at each attempt.
pub(crate) async fn check_destination(url: &str) -> Result<(), ApiError> {
    let refuse =
        |message: String| ApiError::validation(vec![FieldProblem::new("/webhook/url", message)]);
    let parsed = reqwest::Url::parse(url).map_err(|e| refuse(format!("is not a URL: {e}")))?;
    let host = parsed.host_str().unwrap_or_default().to_string();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let found = tokio::time::timeout(
        RESOLVE_TIMEOUT,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    .map_err(|_| {
        refuse(format!(
            "the host {host} did not resolve within {RESOLVE_TIMEOUT:?}"
        ))
    })?
    .map_err(|e| refuse(format!("the host {host} does not resolve: {e}")))?;
    let addrs: Vec<std::net::IpAddr> = found.map(|a| a.ip()).collect();
    // The address is not said: a tenant learns nothing of the network.
    match addrs.iter().any(|ip| !crate::webhooks::is_public(*ip)) {
        _ if addrs.is_empty() => Err(refuse(format!("the host {host} has no address"))),
        true => Err(refuse(format!(
            "the host {host} resolves to a loopback, private, link-local or reserved address; \
             this server does not post there (KILN_WEBHOOK_ALLOW_PRIVATE)"
        ))),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(url: &str, secret: &str, events: Option<Vec<WebhookEvent>>) -> Vec<String> {
        let w = WebhookRequest {
            url: url.into(),
            secret: secret.into(),
            events,
        };
        match check(&w) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.into_iter().map(|p| p.pointer).collect(),
        }
    }

    const SECRET: &str = "sixteen chars ok";

    #[test]
    fn urls_of_the_documented_form_are_taken() {
        for url in [
            "https://hooks.example.com/kiln",
            "http://127.0.0.1:8080/hook?x=1#f",
            "http://receiver:65535",
            "https://a-b.c9.example/x/../y",
            "http://10.0.0.1/",
        ] {
            assert!(problems_of(url, SECRET, None).is_empty(), "{url}");
        }
    }

    #[test]
    fn other_urls_are_refused() {
        for url in [
            "ftp://example.com/",
            "https://",
            "https://user@example.com/",
            "https://[::1]/",
            "https://example.com:65536/",
            "https://example.com:0/",
            "https://256.1.1.1/",
            "https://1.2.3/",
            "https://example.123/",
            "https://exa mple.com/",
            "https://example..com/",
            "https://xn--a.example/",
            "https://-a.example/",
            "https://a-.example/",
            "https://example.com/a b",
            "HTTPS://example.com/",
            "https://example.com/\u{e9}",
        ] {
            assert_eq!(problems_of(url, SECRET, None), ["/webhook/url"], "{url}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_CHARS));
        assert_eq!(problems_of(&long, SECRET, None), ["/webhook/url"]);
    }

    #[test]
    fn secrets_and_events_are_bounded() {
        let url = "https://example.com/";
        assert_eq!(problems_of(url, "short", None), ["/webhook/secret"]);
        assert_eq!(
            problems_of(url, &"s".repeat(MAX_SECRET_CHARS + 1), None),
            ["/webhook/secret"]
        );
        assert_eq!(
            problems_of(url, "sixteen chars\0ok", None),
            ["/webhook/secret"]
        );
        assert_eq!(problems_of(url, SECRET, Some(vec![])), ["/webhook/events"]);
        let w = WebhookRequest {
            url: url.into(),
            secret: SECRET.into(),
            events: Some(vec![
                WebhookEvent::BatchFinished,
                WebhookEvent::BatchFinished,
            ]),
        };
        assert_eq!(check(&w).unwrap().events, ["batch.finished"]);
    }
}
