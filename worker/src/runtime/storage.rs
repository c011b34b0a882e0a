//! The bucket, through the presigned URLs each job message carries: the
//! worker holds no bucket credentials, and each URL allows one method on
//! one key until it expires.
//!
//! Every request is retried with exponential backoff and jitter while the
//! error is transient (no answer, a timeout, 5xx, 429, 408). Any refusal
//! once the URL's own lifetime has passed (S3 and MinIO answer an expired
//! URL with 403, Garage with 400), or a 403 `AccessDenied` or
//! `InvalidAccessKeyId` (the key that signed it was rotated), means the URL
//! no longer authorises the request: the attempt ends as
//! [`FailureKind::Expired`](kiln_protocol::FailureKind::Expired) and the
//! dispatcher publishes it again with fresh URLs. When storage stays down
//! the caller fails the job as retryable: the job is attempted again later
//! and, since keys are deterministic, overwrites whatever a partial run
//! left. Uploads send `Content-MD5` (the store refuses a body that arrives
//! damaged) and the content type their URL was signed for.

use base64::Engine as _;
use kiln_protocol::backoff::Backoff;
use md5::{Digest, Md5};
use reqwest::StatusCode;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {0} does not exist")]
    NotFound(String),
    #[error("storage unavailable after {attempts} attempts: {last}")]
    Unavailable { attempts: u32, last: String },
    #[error("storage refused the request: {0}")]
    Refused(String),
    /// The store refused the URL: it expired, or its signing key was
    /// rotated.
    #[error("storage refused the URL for {key} (expired?): {detail}")]
    Denied { key: String, detail: String },
}

impl StorageError {
    /// The job message lacks the URL of `key`: the dispatcher and this
    /// worker disagree, and fresh URLs would not mend it.
    pub fn no_url(key: &str) -> StorageError {
        StorageError::Refused(format!("the job message carries no URL for {key}"))
    }

    /// Whether fresh URLs would let the request through.
    pub fn needs_new_urls(&self) -> bool {
        matches!(self, StorageError::Denied { .. })
    }
}

#[derive(Clone)]
pub struct Storage {
    http: reqwest::Client,
    backoff: Backoff,
}

impl Storage {
    pub fn new(attempts: u32) -> Storage {
        // No redirects: a URL is a credential, and goes nowhere the
        // dispatcher did not sign it for.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client with timeouts builds");
        Storage {
            http,
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(4))
                .tries(attempts),
        }
    }

    /// Uploads `body` as `key` through its presigned PUT `url` (which was
    /// signed for `content_type`). `key` only names the object in errors
    /// and logs: the URL is a credential and is never logged.
    pub async fn put(
        &self,
        url: &str,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), StorageError> {
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&body));
        let body = bytes::Bytes::from(body);
        self.with_retries("upload", key, || async {
            let r = self
                .http
                .put(url)
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .header("content-md5", &md5)
                .body(body.clone())
                .send()
                .await;
            match r {
                Ok(resp) if resp.status().is_success() => Ok(()),
                Ok(resp) => Err(refusal("PUT", key, url, resp).await),
                Err(e) => Err(Attempt::Transient(describe(e))),
            }
        })
        .await
    }

    /// Downloads `key` through its presigned GET `url`.
    pub async fn get(&self, url: &str, key: &str) -> Result<Vec<u8>, StorageError> {
        self.with_retries("download", key, || async {
            match self.http.get(url).send().await {
                Ok(resp) if resp.status().is_success() => match resp.bytes().await {
                    Ok(b) => Ok(b.to_vec()),
                    Err(e) => Err(Attempt::Transient(format!(
                        "reading {key}: {}",
                        describe(e)
                    ))),
                },
                Ok(resp) if resp.status() == StatusCode::NOT_FOUND => {
                    Err(Attempt::Final(StorageError::NotFound(key.to_string())))
                }
                Ok(resp) => Err(refusal("GET", key, url, resp).await),
                Err(e) => Err(Attempt::Transient(describe(e))),
            }
        })
        .await
    }

    /// Runs `request` until it succeeds, fails for good, or has been tried
    /// as often as the backoff allows.
    async fn with_retries<T, F, Fut>(
        &self,
        what: &str,
        key: &str,
        request: F,
    ) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Attempt>>,
    {
        let mut failures = 0u32;
        let again = |e: &Attempt, wait: Duration| match e {
            Attempt::Final(_) => false,
            Attempt::Transient(why) => {
                failures += 1;
                tracing::warn!(key, attempt = failures, retry_in_ms = wait.as_millis() as u64, error = %why, "{what} failed; retrying");
                true
            }
        };
        match self.backoff.retry(request, again).await {
            Ok(v) => Ok(v),
            Err(Attempt::Final(e)) => Err(e),
            Err(Attempt::Transient(last)) => Err(StorageError::Unavailable {
                attempts: failures + 1,
                last,
            }),
        }
    }
}

/// How one request went wrong.
enum Attempt {
    /// Worth another try.
    Transient(String),
    Final(StorageError),
}

/// What an answer that is not a success means (see [`judge`]).
async fn refusal(method: &str, key: &str, url: &str, resp: reqwest::Response) -> Attempt {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let detail = format!("HTTP {status}{}", s3_error(&body));
    let expired =
        kiln_protocol::message::url_expires_at(url).is_some_and(|at| at <= chrono::Utc::now());
    match judge(status, tag(&body, "Code").as_deref(), expired) {
        Judged::Later => Attempt::Transient(format!("{method} {key}: {detail}")),
        Judged::UrlRefused => Attempt::Final(StorageError::Denied {
            key: key.to_string(),
            detail,
        }),
        Judged::Refused => {
            Attempt::Final(StorageError::Refused(format!("{method} {key}: {detail}")))
        }
    }
}

/// What an answer that is not a success says.
#[derive(Debug, PartialEq)]
enum Judged {
    /// Try again later: 5xx, 429, 408.
    Later,
    /// The URL no longer authorises the request: any refusal once its
    /// lifetime has passed (`expired`), or a 403 that names no other cause
    /// than the credentials (the key that signed it was rotated).
    UrlRefused,
    /// Refused for a cause fresh URLs would not mend (a bad request, a
    /// signature that does not match the request).
    Refused,
}

fn judge(status: StatusCode, code: Option<&str>, expired: bool) -> Judged {
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        Judged::Later
    } else if expired
        // Temporary credentials that ran out: AWS answers 400 or 403.
        || code == Some("ExpiredToken")
        || (status == StatusCode::FORBIDDEN
            && matches!(code, None | Some("AccessDenied" | "InvalidAccessKeyId")))
    {
        Judged::UrlRefused
    } else {
        Judged::Refused
    }
}

/// The text of the first `<name>` element of an S3 error document.
fn tag(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{name}>"))? + start;
    Some(body[start..end].trim().to_string())
}

/// `: Code: Message` from an S3 error document, or nothing.
fn s3_error(body: &str) -> String {
    match (tag(body, "Code"), tag(body, "Message")) {
        (Some(c), Some(m)) => format!(": {c}: {m}"),
        (Some(c), None) => format!(": {c}"),
        _ => String::new(),
    }
}

/// A transport error without its URL (which is a credential).
fn describe(e: reqwest::Error) -> String {
    kiln_protocol::error_chain(&e.without_url())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_error_documents_are_summarised() {
        let body = "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>";
        assert_eq!(s3_error(body), ": AccessDenied: Request has expired");
        assert_eq!(s3_error("<Error><Code>X</Code></Error>"), ": X");
        assert_eq!(s3_error("not xml"), "");
    }

    #[test]
    fn answers_are_judged_by_status_code_and_the_urls_lifetime() {
        use Judged::{Later, Refused, UrlRefused};
        use StatusCode as S;
        let cases = [
            (S::SERVICE_UNAVAILABLE, Some("SlowDown"), true, Later),
            (S::INTERNAL_SERVER_ERROR, None, false, Later),
            (S::TOO_MANY_REQUESTS, None, false, Later),
            (S::REQUEST_TIMEOUT, Some("RequestTimeout"), false, Later),
            // Past the URL's lifetime any refusal is the URL's: S3 and
            // MinIO answer 403 "Request has expired", Garage 400 "Date is
            // too old".
            (S::FORBIDDEN, Some("AccessDenied"), true, UrlRefused),
            (S::BAD_REQUEST, Some("InvalidRequest"), true, UrlRefused),
            // A rotated key, within the lifetime.
            (S::FORBIDDEN, None, false, UrlRefused),
            (S::FORBIDDEN, Some("AccessDenied"), false, UrlRefused),
            (S::FORBIDDEN, Some("InvalidAccessKeyId"), false, UrlRefused),
            // Temporary credentials that expired before the URL would.
            (S::BAD_REQUEST, Some("ExpiredToken"), false, UrlRefused),
            (S::FORBIDDEN, Some("ExpiredToken"), false, UrlRefused),
            // A URL that does not match its request (a wrong worker
            // endpoint, a proxy that rewrites the host), a bad request, a
            // damaged body: fresh URLs would be refused the same.
            (S::FORBIDDEN, Some("SignatureDoesNotMatch"), false, Refused),
            (S::BAD_REQUEST, Some("BadDigest"), false, Refused),
            (S::NOT_FOUND, Some("NoSuchBucket"), false, Refused),
        ];
        for (status, code, expired, want) in cases {
            assert_eq!(
                judge(status, code, expired),
                want,
                "{status} {code:?} {expired}"
            );
        }
    }

    #[test]
    fn only_refused_urls_call_for_new_ones() {
        let denied = StorageError::Denied {
            key: "k".into(),
            detail: "HTTP 403".into(),
        };
        assert!(denied.needs_new_urls());
        assert!(!StorageError::NotFound("k".into()).needs_new_urls());
        assert!(!StorageError::Refused("k".into()).needs_new_urls());
    }
}
