//! A client for the dispatcher's HTTP API (`/v1`): it sends and decodes the
//! shared contract types of [`kiln_protocol::api`], retries what is safe to
//! repeat, and turns error answers into [`CliError::Api`].

use crate::config::Settings;
use crate::error::{CliError, Result};
use kiln_protocol::api::{
    Batch, BatchCancel, BatchPage, BatchRequest, FieldProblem, Job, JobCancel, JobPage, Problem,
    WorkerDrain, WorkerList,
};
use kiln_protocol::backoff::Backoff;
use kiln_protocol::JobState;
use serde::de::DeserializeOwned;
use std::time::Duration;
use uuid::Uuid;

/// How a request that is safe to repeat is tried again: three tries in
/// all, after about 0.3 s and 0.6 s.
pub const RETRY: Backoff =
    Backoff::new(Duration::from_millis(300), Duration::from_secs(5)).tries(3);

pub struct Client {
    http: reqwest::Client,
    /// For event streams: no limit on the whole answer, but one on the
    /// wait for each read (the server sends a keep-alive every 15 s).
    streams: reqwest::Client,
    base: String,
    token: String,
}

/// A batch's server-sent events.
pub type Events = eventsource_stream::EventStream<
    futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
>;

impl Client {
    pub fn new(settings: &Settings) -> Result<Client> {
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        };
        let built = |b: reqwest::ClientBuilder| b.build().map_err(|e| CliError::Other(e.into()));
        let http = built(builder().timeout(Duration::from_secs(120)))?;
        let streams = built(builder().read_timeout(Duration::from_secs(60)))?;
        Ok(Client {
            http,
            streams,
            base: settings.api_url.clone(),
            token: settings.token.clone(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, e: &reqwest::Error) -> CliError {
        CliError::Unreachable {
            url: self.base.clone(),
            reason: kiln_protocol::error_chain(e),
        }
    }

    /// Sends a request that is safe to repeat (a read, a cancel), trying
    /// again after a transient failure (no connection, or a 5xx answer).
    async fn send_idempotent<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<T> {
        RETRY
            .retry(
                || self.send(method.clone(), path, |r| r),
                |e: &CliError, _| e.is_transient(),
            )
            .await
    }

    /// Sends a request once and decodes the JSON answer; an error answer
    /// becomes [`CliError::Api`] with the server's problem details.
    async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<T> {
        let req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        let resp = build(req).send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        if !status.is_success() {
            let problem = problem_of(status, &bytes);
            return Err(CliError::Api {
                method: method.to_string(),
                path: path.to_string(),
                problem: Box::new(problem),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            CliError::Other(anyhow::anyhow!(
                "{method} {path}: the server's answer is not what this kiln expects: {e}"
            ))
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send_idempotent(reqwest::Method::GET, path).await
    }

    /// Creates a batch from a JSON body. The same `idempotency_key` on a
    /// retried request returns the same batch.
    pub async fn create_batch(&self, body: &BatchRequest, idempotency_key: Uuid) -> Result<Batch> {
        self.send(reqwest::Method::POST, "/v1/batches", |r| {
            r.header("Idempotency-Key", idempotency_key.to_string())
                .json(body)
        })
        .await
    }

    /// Creates a batch from an NDJSON stream (a header line, then one job
    /// per line).
    pub async fn create_batch_ndjson(
        &self,
        body: reqwest::Body,
        idempotency_key: Uuid,
    ) -> Result<Batch> {
        self.send(reqwest::Method::POST, "/v1/batches", |r| {
            r.header("Idempotency-Key", idempotency_key.to_string())
                .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
                .body(body)
        })
        .await
    }

    pub async fn batch(&self, id: Uuid) -> Result<Batch> {
        self.get(&format!("/v1/batches/{id}")).await
    }

    /// The event stream of batch `id`, resumed after the event `last`;
    /// `None` when this server has none (a 404: no such route, or no such
    /// batch, which the caller's next read reports).
    pub async fn batch_events(&self, id: Uuid, last: Option<&str>) -> Result<Option<Events>> {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let path = format!("/v1/batches/{id}/events");
        let mut req = self
            .streams
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(last) = last {
            req = req.header("last-event-id", last);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(Some(resp.bytes_stream().boxed().eventsource()));
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        Err(CliError::Api {
            method: "GET".into(),
            path,
            problem: Box::new(problem_of(status, &bytes)),
        })
    }

    pub async fn batches(&self, limit: u32, cursor: Option<&str>) -> Result<BatchPage> {
        let mut path = format!("/v1/batches?limit={limit}");
        if let Some(c) = cursor {
            path.push_str(&format!("&cursor={}", encode(c)));
        }
        self.get(&path).await
    }

    pub async fn job(&self, id: Uuid) -> Result<Job> {
        self.get(&format!("/v1/jobs/{id}")).await
    }

    /// One page of a batch's jobs, optionally only those in `state`.
    pub async fn jobs_page(
        &self,
        batch: Uuid,
        state: Option<JobState>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<JobPage> {
        let mut path = format!("/v1/batches/{batch}/jobs?limit={limit}");
        if let Some(s) = state {
            path.push_str(&format!("&state={}", s.as_str()));
        }
        if let Some(c) = cursor {
            path.push_str(&format!("&cursor={}", encode(c)));
        }
        self.get(&path).await
    }

    /// Every job of a batch (following the cursor), optionally only those in `state`.
    pub async fn all_jobs(&self, batch: Uuid, state: Option<JobState>) -> Result<Vec<Job>> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.jobs_page(batch, state, 500, cursor.as_deref()).await?;
            let empty = page.items.is_empty();
            all.extend(page.items);
            match page.next_cursor {
                Some(c) if !empty && Some(&c) != cursor.as_ref() => cursor = Some(c),
                _ => return Ok(all),
            }
        }
    }

    pub async fn cancel_batch(&self, id: Uuid) -> Result<BatchCancel> {
        self.send_idempotent(reqwest::Method::POST, &format!("/v1/batches/{id}/cancel"))
            .await
    }

    pub async fn cancel_job(&self, id: Uuid) -> Result<JobCancel> {
        self.send_idempotent(reqwest::Method::POST, &format!("/v1/jobs/{id}/cancel"))
            .await
    }

    /// The worker registry (operator tokens only).
    pub async fn workers(&self) -> Result<WorkerList> {
        self.get("/v1/workers").await
    }

    /// Asks a worker to drain (operator tokens only); safe to repeat.
    pub async fn drain_worker(&self, id: &str) -> Result<WorkerDrain> {
        let id = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
        self.send_idempotent(reqwest::Method::POST, &format!("/v1/workers/{id}/drain"))
            .await
    }

    /// The HTTP client, for downloads from presigned URLs.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// The problem details of an error answer. A body that is not complete
/// problem details (a proxy's page, an empty body, a partial object) still
/// gives what it has: the title and detail it names, else the status's
/// reason and the start of the text.
fn problem_of(status: reqwest::StatusCode, bytes: &[u8]) -> Problem {
    let reason = || status.canonical_reason().unwrap_or("error").to_string();
    if let Ok(mut problem) = serde_json::from_slice::<Problem>(bytes) {
        problem.status = status.as_u16();
        if problem.title.is_empty() {
            problem.title = reason();
        }
        return problem;
    }
    let body: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let field = |name: &str| {
        body.get(name)
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let errors: Vec<FieldProblem> = body
        .get("errors")
        .and_then(|e| serde_json::from_value(e.clone()).ok())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(bytes);
    let detail = field("detail").unwrap_or_else(|| {
        if errors.is_empty() && !text.trim_start().starts_with('{') {
            text.chars().take(500).collect()
        } else {
            String::new()
        }
    });
    Problem {
        kind: field("type").unwrap_or_else(|| "about:blank".into()),
        title: field("title").unwrap_or_else(reason),
        status: status.as_u16(),
        detail,
        errors,
    }
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn problem_details_are_read_whole() {
        let body = serde_json::json!({
            "type": "https://kiln.dev/problems/invalid-request", "title": "Invalid request",
            "status": 422, "detail": "2 invalid fields",
            "errors": [{"pointer": "/prompts/3", "message": "is empty"},
                       {"pointer": "/jobs/0/params/seed", "message": "too big", "line": 2}],
        });
        let p = problem_of(
            StatusCode::UNPROCESSABLE_ENTITY,
            &serde_json::to_vec(&body).unwrap(),
        );
        assert_eq!(serde_json::to_value(&p).unwrap(), body);
        assert_eq!(
            p.to_string(),
            "422 Invalid request: 2 invalid fields\n  /prompts/3: is empty\n  /jobs/0/params/seed: too big"
        );
    }

    #[test]
    fn other_error_bodies_still_say_what_they_can() {
        let p = problem_of(StatusCode::BAD_GATEWAY, b"<html>upstream down</html>");
        assert_eq!((p.status, p.title.as_str()), (502, "Bad Gateway"));
        assert_eq!(p.detail, "<html>upstream down</html>");
        assert_eq!(p.to_string(), "502 Bad Gateway: <html>upstream down</html>");
        let p = problem_of(
            StatusCode::BAD_REQUEST,
            br#"{"title": "Bad engine", "errors": [{"pointer": "/engine", "message": "unknown"}]}"#,
        );
        assert_eq!(
            (p.status, p.title.as_str(), p.detail.as_str()),
            (400, "Bad engine", "")
        );
        assert_eq!(p.errors[0].pointer, "/engine");
        let p = problem_of(StatusCode::SERVICE_UNAVAILABLE, b"");
        assert_eq!(p.to_string(), "503 Service Unavailable");
    }
}
