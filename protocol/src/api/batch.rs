//! Batches: the submit request, the batch as the API answers it, its counts,
//! pages of batches and the answer to a batch cancel.

use super::state::JobState;
use super::webhook::{Webhook, WebhookRequest};
use super::{bounds, object};
use crate::spec::{Engine, ParamsDto, Priority};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A batch to submit. Give `prompts` (each with the batch's `params`) or
/// `jobs` (each may override `params`), not both. As NDJSON
/// (`application/x-ndjson`), the first line is this object without
/// `prompts` and `jobs`, then one job object per line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// `vqgan-clip`, `dalle` or `test-pattern`.
    pub engine: String,
    /// Defaults for every job of the batch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "object::optional"
    )]
    pub params: Option<ParamsDto>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "bounds::prompts"
    )]
    pub prompts: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "object::optional_list"
    )]
    pub jobs: Option<Vec<JobRequest>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// A small map of strings, kept with the batch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "bounds::metadata"
    )]
    pub metadata: Option<BTreeMap<String, String>>,
    /// The batch this one retries (for example its failed jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<Uuid>,
    /// A URL told when the batch's jobs finish and when it finishes, with
    /// signed posts (see [`super::webhook`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "object::optional"
    )]
    pub webhook: Option<WebhookRequest>,
}

/// One job of a batch request (a line of an NDJSON body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    #[serde(deserialize_with = "bounds::prompt")]
    pub prompt: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "object::optional"
    )]
    pub params: Option<ParamsDto>,
}

/// Jobs per state in a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Counts {
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl Counts {
    /// Jobs in a terminal state.
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.cancelled
    }

    /// The count of jobs in `state`.
    pub fn of(&self, state: JobState) -> u64 {
        match state {
            JobState::Queued => self.queued,
            JobState::Running => self.running,
            JobState::Succeeded => self.succeeded,
            JobState::Failed => self.failed,
            JobState::Cancelled => self.cancelled,
        }
    }

    /// A batch's state from its counts; `cancelled` when the batch itself
    /// was cancelled.
    pub fn batch_state(&self, cancelled: bool) -> JobState {
        if self.queued + self.running > 0 {
            if self.running == 0 && self.finished() == 0 {
                JobState::Queued
            } else {
                JobState::Running
            }
        } else if cancelled {
            JobState::Cancelled
        } else if self.failed > 0 {
            JobState::Failed
        } else if self.cancelled > 0 && self.succeeded == 0 {
            JobState::Cancelled
        } else {
            JobState::Succeeded
        }
    }
}

/// A batch. `state` is `queued` (nothing started), `running`, or, once
/// every job is finished, `succeeded` (all succeeded), `cancelled` (the
/// batch was cancelled) or `failed` (some job failed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Batch {
    pub id: Uuid,
    pub name: Option<String>,
    pub engine: Engine,
    pub priority: Priority,
    pub state: JobState,
    pub total: u64,
    pub counts: Counts,
    /// Finished jobs over total, 0..1.
    pub progress: f64,
    pub metadata: BTreeMap<String, String>,
    pub retry_of: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The batch's webhook, when it has one (its secret is not answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,
}

impl Batch {
    /// Every job has reached a terminal state.
    pub fn is_finished(&self) -> bool {
        self.finished_at.is_some() || self.counts.finished() >= self.total
    }
}

/// A page of batches, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct BatchPage {
    pub items: Vec<Batch>,
    /// Give it as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// What a batch cancel did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct BatchCancel {
    /// Jobs cancelled by this request.
    pub cancelled: u64,
    /// Jobs that had already finished and stay as they were.
    pub already_finished: u64,
    pub message: String,
    pub batch: Batch,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structs_are_read_from_objects_only() {
        for body in [
            r#"{"engine":"dalle","params":[256,256],"prompts":["a"]}"#,
            r#"{"engine":"dalle","jobs":[["a"]]}"#,
            r#"{"engine":"dalle","jobs":[{"prompt":"a","params":[null]}]}"#,
        ] {
            let e = serde_json::from_str::<BatchRequest>(body).unwrap_err();
            assert!(
                e.to_string().contains("expected a JSON object"),
                "{body}: {e}"
            );
        }
        let ok: BatchRequest = serde_json::from_str(
            r#"{"engine":"dalle","params":null,"jobs":[{"prompt":"a","params":{"seed":1}}]}"#,
        )
        .unwrap();
        assert_eq!(ok.params, None);
        assert_eq!(ok.jobs.unwrap()[0].params.as_ref().unwrap().seed, Some(1));
    }

    fn c(q: u64, r: u64, s: u64, f: u64, x: u64) -> Counts {
        Counts {
            queued: q,
            running: r,
            succeeded: s,
            failed: f,
            cancelled: x,
        }
    }

    #[test]
    fn batch_states_follow_the_counts() {
        use JobState::*;
        assert_eq!(c(3, 0, 0, 0, 0).batch_state(false), Queued);
        assert_eq!(c(2, 1, 0, 0, 0).batch_state(false), Running);
        assert_eq!(c(2, 0, 1, 0, 0).batch_state(false), Running);
        assert_eq!(c(0, 0, 3, 0, 0).batch_state(false), Succeeded);
        assert_eq!(c(0, 0, 2, 1, 0).batch_state(false), Failed);
        assert_eq!(c(0, 0, 2, 0, 1).batch_state(true), Cancelled);
        assert_eq!(c(0, 0, 0, 0, 3).batch_state(false), Cancelled);
    }

    #[test]
    fn a_request_serializes_only_what_it_sets() {
        let r = BatchRequest {
            engine: "dalle".into(),
            prompts: Some(vec!["a".into()]),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"engine": "dalle", "prompts": ["a"]})
        );
    }
}
