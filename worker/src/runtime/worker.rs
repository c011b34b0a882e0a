//! What every delivery handler shares, and the timing knobs of a job.

use crate::runtime::config::RunArgs;
use crate::runtime::control::Cancels;
use crate::runtime::drain::Shutdown;
use crate::runtime::events::Events;
use crate::runtime::metrics::Metrics;
use crate::runtime::recent::Recent;
use crate::runtime::slots::Slots;
use crate::runtime::storage::Storage;
use kiln_protocol::Engine as EngineKind;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Timers need a period above zero.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Timing knobs of a job.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub time_limits: HashMap<EngineKind, Duration>,
    pub default_time_limit: Duration,
    pub heartbeat: Duration,
    pub progress: Duration,
}

impl JobSettings {
    /// The knobs of `args` for the served `engines`.
    pub fn new(args: &RunArgs, engines: &[EngineKind]) -> JobSettings {
        JobSettings {
            time_limits: engines.iter().map(|e| (*e, args.time_limit(*e))).collect(),
            default_time_limit: args.default_time_limit,
            heartbeat: args.heartbeat_interval.max(MIN_INTERVAL),
            progress: args.progress_interval.max(MIN_INTERVAL),
        }
    }

    pub fn time_limit(&self, e: EngineKind) -> Duration {
        self.time_limits
            .get(&e)
            .copied()
            .unwrap_or(self.default_time_limit)
    }
}

/// What every delivery handler shares.
pub struct Worker {
    pub events: Events,
    pub storage: Storage,
    pub slots: Slots,
    /// One permit per slot: a delivery renders only while it holds one.
    pub permits: Arc<Semaphore>,
    pub cancels: Arc<Cancels>,
    /// Attempts handled here, so a second delivery of one is recognised.
    pub recent: Arc<Recent>,
    pub metrics: Arc<Metrics>,
    pub settings: JobSettings,
    /// Tells a delivery waiting for a slot that the worker drains.
    pub shutdown: Shutdown,
}
