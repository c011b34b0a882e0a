//! The worker registry as the API answers it (`/v1/workers`, operator
//! tokens only): each worker's latest report, and whether it is still heard.

use crate::spec::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a worker stands: `ready` (taking jobs), `draining` (finishing its
/// jobs, taking no new ones), `stopped` (it said so as it exited) or `lost`
/// (not heard for three of its report intervals: killed, partitioned, or
/// its host is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    Ready,
    Draining,
    Stopped,
    Lost,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Ready => "ready",
            WorkerState::Draining => "draining",
            WorkerState::Stopped => "stopped",
            WorkerState::Lost => "lost",
        }
    }
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One worker process, as its latest report described it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Worker {
    /// The worker's id (`KILN_WORKER_ID`, else `{hostname}-{pid}`).
    pub id: String,
    pub host: String,
    /// The `kiln-worker` version.
    pub version: String,
    pub engines: Vec<Engine>,
    /// Its devices (`cpu`, `cuda:0`, ...).
    pub devices: Vec<String>,
    /// Render threads per device.
    pub slots: u32,
    /// Deliveries it holds at most at once.
    pub capacity: u32,
    /// Deliveries it holds now (rendering or waiting for a render thread).
    pub jobs_in_hand: u32,
    pub state: WorkerState,
    pub started_at: DateTime<Utc>,
    /// When the dispatcher last heard from it.
    pub last_seen: DateTime<Utc>,
}

/// `GET /v1/workers`: every worker heard from within the registry's memory
/// (`KILN_WORKER_FORGET_AFTER`), by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct WorkerList {
    pub items: Vec<Worker>,
}

/// The answer to `POST /v1/workers/{id}/drain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct WorkerDrain {
    /// The worker as it stood when the drain was sent.
    pub worker: Worker,
    pub message: String,
}
