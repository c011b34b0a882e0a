//! The worker registry's consumer: applies the workers' reports about
//! themselves (`kiln.workers`, see [`kiln_protocol::WorkerReport`]) to the
//! `workers` table, whatever is buffered in one statement and one
//! `multiple` ack, and forgets workers not heard for
//! `KILN_WORKER_FORGET_AFTER`. `GET /v1/workers` reads the table.
//!
//! While PostgreSQL is out of reach a set is handed back to the broker and
//! taken again after a pause. A set PostgreSQL refuses for what it holds is
//! applied one report at a time, and a report refused alone is dropped:
//! it is a snapshot the worker's next report replaces.

use crate::broker;
use crate::error::database_unreachable;
use crate::metrics::inc;
use crate::state::AppState;
use crate::store;
use kiln_protocol::topology::WORKERS_QUEUE;
use kiln_protocol::WorkerReport;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use std::collections::HashMap;
use tokio_util::sync::CancellationToken;

/// Reports taken in one set at most.
const PREFETCH: u16 = 256;

pub async fn run(state: AppState, stop: CancellationToken) {
    let url = state.settings.connections.amqp_url.clone();
    let delay = state.settings.reconnect_delay;
    broker::consume_forever("worker registry", delay, stop, || consume(&state, &url)).await
}

async fn consume(state: &AppState, url: &str) -> anyhow::Result<()> {
    let timeout = state.settings.broker_timeout;
    let conn = broker::connect(url, "kiln-dispatcher workers", timeout).await?;
    let (_ch, mut consumer) = broker::consumer(&conn, WORKERS_QUEUE, PREFETCH, timeout).await?;
    while let Some(set) = broker::next_set(&mut consumer).await {
        let set = set?;
        let last = set.last().expect("a set has a first delivery");
        if apply(state, latest(state, &set)).await {
            last.ack(BasicAckOptions { multiple: true }).await?;
        } else {
            broker::hand_back_set(last, state.settings.reconnect_delay).await?;
        }
    }
    anyhow::bail!("the worker registry's consumer was cancelled by the broker")
}

/// The reports of a set, the last to arrive of each worker only; what is
/// not a report is counted and dropped.
fn latest(state: &AppState, set: &[Delivery]) -> Vec<WorkerReport> {
    let mut by_worker: HashMap<String, WorkerReport> = HashMap::new();
    for d in set {
        match WorkerReport::decode(&d.data) {
            Ok(r) => {
                by_worker.insert(r.worker.clone(), r);
            }
            Err(e) => {
                inc(&state.metrics.worker_reports_dropped);
                tracing::warn!(error = %e, bytes = d.data.len(), "dropping a message in the worker reports' queue that is not a worker report");
            }
        }
    }
    by_worker.into_values().collect()
}

/// Applies `reports`; answers `false` when PostgreSQL is out of reach (the
/// set goes back to the broker).
async fn apply(state: &AppState, reports: Vec<WorkerReport>) -> bool {
    let forget = state.settings.worker_forget_after;
    let refused = match store::workers::apply(&state.db, &reports, forget).await {
        Ok(()) => {
            state.metrics.worker_reports.inc_by(reports.len() as u64);
            return true;
        }
        Err(e) if database_unreachable(&e) => return false,
        Err(e) => e,
    };
    tracing::warn!(error = %refused, reports = reports.len(), "PostgreSQL refused a set of worker reports; applying them one at a time");
    for r in reports {
        match store::workers::apply(&state.db, std::slice::from_ref(&r), forget).await {
            Ok(()) => inc(&state.metrics.worker_reports),
            Err(e) if database_unreachable(&e) => return false,
            Err(e) => {
                inc(&state.metrics.worker_reports_dropped);
                tracing::warn!(worker = %r.worker, error = %e, "dropping a worker report PostgreSQL refused");
            }
        }
    }
    true
}
