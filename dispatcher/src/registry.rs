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
use futures::{FutureExt, StreamExt};
use kiln_protocol::topology::WORKERS_QUEUE;
use kiln_protocol::WorkerReport;
use lapin::options::{BasicAckOptions, BasicNackOptions};
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
    while let Some(first) = consumer.next().await {
        let mut set = vec![first?];
        while let Some(Some(next)) = consumer.next().now_or_never() {
            set.push(next?);
        }
        let mut reports = Vec::with_capacity(set.len());
        for d in &set {
            match WorkerReport::decode(&d.data) {
                Ok(r) => reports.push(r),
                Err(e) => {
                    inc(&state.metrics.worker_reports_dropped);
                    tracing::warn!(error = %e, bytes = d.data.len(), "dropping a message in the worker reports' queue that is not a worker report");
                }
            }
        }
        let last = set.last().expect("a set has a first delivery");
        if apply(state, reports).await {
            last.ack(BasicAckOptions { multiple: true }).await?;
        } else {
            let again = BasicNackOptions {
                multiple: true,
                requeue: true,
            };
            last.nack(again).await?;
            tokio::time::sleep(state.settings.reconnect_delay).await;
        }
    }
    anyhow::bail!("the worker registry's consumer was cancelled by the broker")
}

/// Applies `reports`; answers `false` when PostgreSQL is out of reach (the
/// set goes back to the broker).
async fn apply(state: &AppState, reports: Vec<WorkerReport>) -> bool {
    let forget = state.settings.worker_forget_after;
    let refused = match store::workers::apply(&state.db, &reports, forget).await {
        Ok(()) => {
            for _ in &reports {
                inc(&state.metrics.worker_reports);
            }
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
