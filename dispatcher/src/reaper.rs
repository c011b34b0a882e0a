//! The lease reaper: a running job whose lease lapsed (its worker stopped
//! sending heartbeats) is retried with backoff, or failed at max_attempts.
//! It waits while worker events cannot reach PostgreSQL, and for one lease
//! after they can again ([`crate::state::EventPath`]): a lease that lapsed
//! during an outage lapsed for want of the heartbeats still in the queue.
//! Each pass also folds the count deltas that `/metrics`, the relay's
//! window, batch views and the active-jobs quota read, and forgets job
//! events older than `KILN_FEED_KEEP`.

use crate::metrics::inc;
use crate::state::AppState;
use crate::store;
use crate::store::jobs::RetryOutcome;
use tokio_util::sync::CancellationToken;

/// Job events forgotten at most per pass.
const FEED_FORGET_PAGE: i64 = 10_000;

pub async fn run(state: AppState, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(state.settings.reaper_interval) => {}
        }
        if let Err(e) = store::jobs::fold_counts(&state.db).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "folding the job counts failed; will try again"
            );
        }
        if let Err(e) =
            store::feed::forget(&state.db, state.settings.feed_keep, FEED_FORGET_PAGE).await
        {
            tracing::warn!(
                error = format!("{e:#}"),
                "forgetting old job events failed; will try again"
            );
        }
        if !state.event_path.working_for(state.settings.lease) {
            tracing::debug!(
                "worker events have not reached PostgreSQL for a whole lease; leases wait"
            );
            continue;
        }
        match reap(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "reaped lapsed leases"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "reaper failed; will try again"),
        }
    }
}

/// One pass; returns how many jobs it retried or failed.
pub async fn reap(state: &AppState) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let mut tx = state.db.begin().await?;
        let lapsed = store::jobs::lapsed(&mut tx, 500).await?;
        if lapsed.is_empty() {
            return Ok(total);
        }
        let n = lapsed.len();
        let ids: Vec<uuid::Uuid> = lapsed.iter().map(|(id, ..)| *id).collect();
        store::webhooks::lock_finishing_batches(&mut tx, &ids).await?;
        for (id, attempt, worker) in lapsed {
            let reason = format!(
                "lease expired: no heartbeat from worker {} within {:?}",
                worker.as_deref().unwrap_or("?"),
                state.settings.lease
            );
            let outcome = store::jobs::retry_or_fail(&mut tx, id, attempt, &reason, |m| {
                state.retry_policy(m)
            })
            .await?;
            inc(&state.metrics.leases_expired);
            tracing::warn!(job_id = %id, attempt, ?outcome, "lease expired");
            if outcome != RetryOutcome::Unchanged {
                total += 1;
            }
        }
        tx.commit().await?;
        state.relay_wake.notify_one();
        if n < 500 {
            return Ok(total);
        }
    }
}
