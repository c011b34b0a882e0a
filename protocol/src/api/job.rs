//! Jobs as the API answers them: a job with its results and progress, pages
//! of jobs and the answer to a job cancel.

use super::state::JobState;
use crate::spec::{Engine, ParamsDto};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a running job is: `step` of `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Progress {
    pub step: u32,
    pub total: u32,
}

/// One kept image; `url` is a presigned GET that expires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct JobResult {
    /// 0 is the best.
    pub rank: u32,
    /// CLIP score against the prompt, when reranked.
    pub score: Option<f32>,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    /// Object key in the bucket.
    pub key: String,
    /// A presigned GET; this server always signs one (optional on the wire
    /// for servers that could not).
    pub url: Option<String>,
}

/// A job with its resolved parameters and results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Job {
    pub id: Uuid,
    pub batch_id: Uuid,
    pub engine: Engine,
    pub prompt: String,
    /// Resolved parameters: defaults and seed filled in.
    pub params: ParamsDto,
    pub state: JobState,
    pub attempt: u32,
    pub max_attempts: u32,
    pub progress: Option<Progress>,
    pub error: Option<String>,
    pub worker: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub results: Vec<JobResult>,
}

/// A page of a batch's jobs, in submission order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct JobPage {
    pub items: Vec<Job>,
    /// Give it as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// What a job cancel did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct JobCancel {
    /// True when this request cancelled the job; false when it had already
    /// finished (it stays as it was) or was cancelled before.
    pub cancelled: bool,
    pub message: String,
    pub job: Job,
}
