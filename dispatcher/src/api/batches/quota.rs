//! Per-tenant quotas on submits: jobs queued or running, and submits per
//! minute. Each tenant's own values are stored with it (`kiln-dispatcher
//! tenant set-limits`); unset, the dispatcher's defaults hold
//! (`KILN_TENANT_MAX_ACTIVE_JOBS`, `KILN_TENANT_SUBMITS_PER_MINUTE`). Over a
//! quota a submit answers 429 with `Retry-After` and stores nothing.
//!
//! The check runs in the submit's transaction under a per-tenant lock, so
//! two concurrent submits of one tenant cannot both slip under a quota.

use crate::config::Settings;
use crate::error::ApiError;
use crate::store;
use std::time::Duration;
use uuid::Uuid;

/// The window of `submits_per_minute`.
const MINUTE: Duration = Duration::from_secs(60);
/// How long a client over its active-jobs quota is asked to wait.
const ACTIVE_RETRY: Duration = Duration::from_secs(30);

/// The smallest UUIDv7 of the millisecond `at` (batch ids are UUIDv7, so
/// the batches submitted since `at` are those with an id at least this).
fn first_id_at(at: chrono::DateTime<chrono::Utc>) -> Uuid {
    let ms = at.timestamp_millis().max(0) as u64;
    uuid::Builder::from_unix_timestamp_millis(ms, &[0; 10]).into_uuid()
}

/// Checks that `tenant` may submit `jobs` more jobs now; holds the tenant's
/// quota lock until `tx` ends.
pub async fn check(
    tx: &mut store::Tx<'_>,
    settings: &Settings,
    tenant: &str,
    jobs: usize,
) -> Result<(), ApiError> {
    let Some(own) = store::tenants::lock_quotas(tx, tenant).await? else {
        return Ok(());
    };
    let max_active = own
        .max_active_jobs
        .unwrap_or(settings.tenant_max_active_jobs as i64);
    let per_minute = own
        .submits_per_minute
        .map(i64::from)
        .unwrap_or(settings.tenant_submits_per_minute as i64);
    let now = chrono::Utc::now();
    let since = first_id_at(now - chrono::Duration::from_std(MINUTE).expect("a minute"));
    let usage = store::tenants::usage(tx, tenant, since).await?;
    if usage.recent >= per_minute {
        let retry = usage
            .oldest_recent
            .and_then(|id| id.get_timestamp())
            .map(|ts| {
                let (s, n) = ts.to_unix();
                let oldest = chrono::DateTime::from_timestamp(s as i64, n).unwrap_or(now);
                (oldest + chrono::Duration::from_std(MINUTE).expect("a minute") - now)
                    .to_std()
                    .unwrap_or(Duration::ZERO)
            })
            .unwrap_or(MINUTE);
        return Err(ApiError::TooManyRequests {
            detail: format!(
                "tenant {tenant} submitted {} batches in the last minute; its limit is {per_minute} per minute (kiln-dispatcher tenant set-limits)",
                usage.recent
            ),
            // Rounded up: a client that waits as told is not refused again.
            retry_after: retry.as_millis().div_ceil(1000).max(1) as u64,
        });
    }
    let jobs = jobs as i64;
    if jobs > max_active {
        // Waiting cannot help: not a 429.
        return Err(ApiError::validation(vec![crate::error::FieldProblem::new(
            "/jobs",
            format!("this batch has {jobs} jobs; tenant {tenant} may have at most {max_active} queued or running (kiln-dispatcher tenant set-limits)"),
        )]));
    }
    if usage.active.saturating_add(jobs) > max_active {
        return Err(ApiError::TooManyRequests {
            detail: format!(
                "tenant {tenant} has {} jobs queued or running and this batch adds {jobs}; its limit is {max_active} (kiln-dispatcher tenant set-limits)",
                usage.active
            ),
            retry_after: ACTIVE_RETRY.as_secs(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_sorts_before_every_id_of_its_millisecond_and_after_earlier_ones() {
        let at = chrono::Utc::now();
        let bound = first_id_at(at);
        assert_eq!(bound.get_version_num(), 7);
        let ts = bound.get_timestamp().unwrap().to_unix();
        assert_eq!(
            ts.0 as i64 * 1000 + ts.1 as i64 / 1_000_000,
            at.timestamp_millis()
        );
        for _ in 0..100 {
            assert!(Uuid::now_v7() >= bound);
        }
        let earlier = first_id_at(at - chrono::Duration::milliseconds(1));
        assert!(earlier < bound);
    }
}
