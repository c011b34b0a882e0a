//! What the event streams send (`GET /v1/batches/{id}/events`,
//! `GET /v1/events`), as server-sent events:
//!
//! - `event: job` ([`JobEvent`]), with an `id`: a job entered a state. A
//!   client that reconnects with that id as `Last-Event-ID` gets every
//!   later one, once.
//! - `event: batch` ([`crate::api::Batch`]): a batch's counts, sent when a
//!   stream opens on a batch and after the job events that moved it.
//! - `event: progress` ([`ProgressEvent`]): a running job's step, sent as
//!   it moves (not replayed: the next one says more).
//! - `event: reset`: the `Last-Event-ID` given is older than the events
//!   kept; read the batch and its jobs again.

use super::job::{Job, Progress};
use super::state::JobState;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The SSE event names.
pub const JOB_EVENT: &str = "job";
pub const BATCH_EVENT: &str = "batch";
pub const PROGRESS_EVENT: &str = "progress";
pub const RESET_EVENT: &str = "reset";

/// A job entered `state` in `attempt` at `at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct JobEvent {
    pub state: JobState,
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// The job as it is when the event is sent: its prompt, parameters,
    /// results (with their URLs) or error. Its `state` may be later than
    /// this event's.
    pub job: Job,
}

/// Where a running job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ProgressEvent {
    pub job_id: Uuid,
    pub batch_id: Uuid,
    pub progress: Progress,
}
