//! A typed client for the dispatcher's HTTP API (`/v1`).

use crate::config::Settings;
use crate::error::{CliError, Problem, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

/// Jobs per state in a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    #[serde(default)]
    pub queued: u64,
    #[serde(default)]
    pub running: u64,
    #[serde(default)]
    pub succeeded: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub cancelled: u64,
}

impl Counts {
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.cancelled
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch {
    pub id: Uuid,
    #[serde(default)]
    pub name: Option<String>,
    pub engine: String,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub state: String,
    pub total: u64,
    #[serde(default)]
    pub counts: Counts,
    #[serde(default)]
    pub progress: f64,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub retry_of: Option<Uuid>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
}

impl Batch {
    /// Every job has reached a terminal state.
    pub fn is_finished(&self) -> bool {
        self.finished_at.is_some() || self.counts.finished() >= self.total
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct JobProgress {
    pub step: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobResult {
    pub rank: u32,
    #[serde(default)]
    pub score: Option<f64>,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub key: String,
    /// A presigned GET that expires; absent when the server could not sign one.
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: Uuid,
    pub batch_id: Uuid,
    pub engine: String,
    pub prompt: String,
    #[serde(default)]
    pub params: serde_json::Value,
    pub state: String,
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub max_attempts: u32,
    #[serde(default)]
    pub progress: Option<JobProgress>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub worker: Option<String>,
    #[serde(default)]
    pub results: Vec<JobResult>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// The answer to a cancel request: a batch or a job, as the server sends it.
pub type CancelAnswer = serde_json::Value;

/// Tries of a request that is safe to repeat, and the first pause between them.
pub const ATTEMPTS: u32 = 3;
pub const RETRY_DELAY: Duration = Duration::from_millis(300);

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(settings: &Settings) -> Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Other(e.into()))?;
        Ok(Client {
            http,
            base: settings.api_url.clone(),
            token: settings.token.clone(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, e: &reqwest::Error) -> CliError {
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            reason.push_str(": ");
            reason.push_str(&s.to_string());
            src = s.source();
        }
        CliError::Unreachable {
            url: self.base.clone(),
            reason,
        }
    }

    /// Sends a request that is safe to repeat (a read, a cancel), trying
    /// again after a transient failure (no connection, or a 5xx answer).
    async fn send_idempotent<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<T> {
        let mut delay = RETRY_DELAY;
        for attempt in 1.. {
            match self.send(method.clone(), path, |r| r).await {
                Err(e) if attempt < ATTEMPTS && e.is_transient() => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                other => return other,
            }
        }
        unreachable!("the loop returns")
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
            let mut problem: Problem = serde_json::from_slice(&bytes).unwrap_or_default();
            problem.status = status.as_u16();
            if problem.title.is_empty() {
                problem.title = status.canonical_reason().unwrap_or("error").to_string();
            }
            if problem.detail.is_none() && !bytes.is_empty() && problem.errors.is_empty() {
                let text = String::from_utf8_lossy(&bytes);
                if !text.trim_start().starts_with('{') {
                    problem.detail = Some(text.chars().take(500).collect());
                }
            }
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
    pub async fn create_batch(
        &self,
        body: &serde_json::Value,
        idempotency_key: Uuid,
    ) -> Result<Batch> {
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

    pub async fn batches(&self, limit: u32, cursor: Option<&str>) -> Result<Page<Batch>> {
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
        state: Option<&str>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<Job>> {
        let mut path = format!("/v1/batches/{batch}/jobs?limit={limit}");
        if let Some(s) = state {
            path.push_str(&format!("&state={}", encode(s)));
        }
        if let Some(c) = cursor {
            path.push_str(&format!("&cursor={}", encode(c)));
        }
        self.get(&path).await
    }

    /// Every job of a batch (following the cursor), optionally only those in `state`.
    pub async fn all_jobs(&self, batch: Uuid, state: Option<&str>) -> Result<Vec<Job>> {
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

    pub async fn cancel_batch(&self, id: Uuid) -> Result<CancelAnswer> {
        self.send_idempotent(reqwest::Method::POST, &format!("/v1/batches/{id}/cancel"))
            .await
    }

    pub async fn cancel_job(&self, id: Uuid) -> Result<CancelAnswer> {
        self.send_idempotent(reqwest::Method::POST, &format!("/v1/jobs/{id}/cancel"))
            .await
    }

    /// The HTTP client, for downloads from presigned URLs.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
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
