//! The counts kept by triggers as rows are written (jobs per engine and
//! state and the outbox for `/metrics`, jobs in the broker for the relay's
//! window, jobs per batch and state for batch views, active jobs per tenant
//! for the quota): after submits, publishes, starts, successes, failures, a
//! retry and cancels they equal what a full count of the tables gives,
//! before and after the deltas are folded.

mod common;

use common::TestApp;
use kiln_protocol::{EventKind, FailureKind, JobState};
use serde_json::json;

async fn truth(app: &TestApp) -> Vec<(String, String, i64)> {
    sqlx::query_as("SELECT engine, state, count(*) FROM jobs GROUP BY 1, 2 ORDER BY 1, 2")
        .fetch_all(&app.db)
        .await
        .unwrap()
}

async fn kept(app: &TestApp) -> Vec<(String, String, i64)> {
    sqlx::query_as(
        "SELECT engine, state, sum(n)::bigint FROM job_counts GROUP BY 1, 2 HAVING sum(n) <> 0 ORDER BY 1, 2",
    )
        .fetch_all(&app.db)
        .await
        .unwrap()
}

/// Every other kept count against a full count of the jobs, and batch
/// views (one and the list) against the jobs of each batch.
async fn check_other_counts(app: &TestApp, when: &str) {
    let q = |sql: &'static str| async move {
        sqlx::query_as::<_, (String, i64)>(sql)
            .fetch_all(&app.db)
            .await
            .unwrap()
    };
    assert_eq!(
        q("SELECT engine, sum(n)::bigint FROM broker_counts GROUP BY 1 HAVING sum(n) <> 0 ORDER BY 1").await,
        q("SELECT engine, count(*) FROM jobs WHERE state = 'queued' AND published_attempt = attempt GROUP BY 1 ORDER BY 1").await,
        "jobs in the broker, {when}"
    );
    assert_eq!(
        q("SELECT tenant, sum(n)::bigint FROM (SELECT tenant, n FROM tenant_active UNION ALL SELECT tenant, n FROM tenant_active_deltas) t GROUP BY 1 HAVING sum(n) <> 0 ORDER BY 1").await,
        q("SELECT tenant, count(*) FROM jobs WHERE state IN ('queued', 'running') GROUP BY 1 ORDER BY 1").await,
        "active jobs per tenant, {when}"
    );
    let listed: kiln_protocol::api::BatchPage = app.get_ok("/v1/batches?limit=100").await;
    assert!(!listed.items.is_empty());
    for listed in listed.items {
        let truth: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM jobs WHERE batch_id = $1 GROUP BY 1")
                .bind(listed.id)
                .fetch_all(&app.db)
                .await
                .unwrap();
        let n = |state: &str| {
            truth
                .iter()
                .find(|(s, _)| s == state)
                .map_or(0, |(_, n)| *n as u64)
        };
        let c = &listed.counts;
        let kept = [c.queued, c.running, c.succeeded, c.failed, c.cancelled];
        let full = ["queued", "running", "succeeded", "failed", "cancelled"].map(n);
        assert_eq!(kept, full, "batch {} in the list, {when}", listed.id);
        let one = app.batch(listed.id).await;
        assert_eq!(one.counts, listed.counts, "batch {}, {when}", listed.id);
    }
}

#[tokio::test]
async fn kept_counts_equal_full_counts_after_every_kind_of_write() {
    let app = TestApp::spawn().await;
    let w = app.worker().await;
    let a = app.submit(6, json!({})).await;
    let b = app.submit(3, json!({})).await;
    assert_eq!(kept(&app).await, truth(&app).await, "after the submits");
    let ids = app.job_ids(a.id).await;
    w.drain(std::time::Duration::from_millis(500)).await;

    for id in &ids[..4] {
        w.emit(*id, 1, EventKind::Started).await;
    }
    for id in &ids[..2] {
        w.emit(*id, 1, EventKind::Succeeded { results: vec![] })
            .await;
    }
    let failed = |kind| EventKind::Failed {
        kind,
        reason: "a test failure".into(),
    };
    w.emit(ids[2], 1, failed(FailureKind::Permanent)).await;
    w.emit(ids[3], 1, failed(FailureKind::Retryable)).await;
    app.wait_state(ids[1], JobState::Succeeded).await;
    app.wait_state(ids[2], JobState::Failed).await;
    app.wait_job(ids[3], "a retry", |j| j.attempt == 2).await;
    app.cancel_job(ids[4]).await;
    app.cancel_batch(b.id).await;
    app.wait_outbox_empty().await;

    let full = truth(&app).await;
    assert_eq!(kept(&app).await, full);
    check_other_counts(&app, "before the fold").await;
    // Folded (the reaper folds every pass), they still agree, in fewer rows.
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM job_counts")
            .fetch_one(&app.db)
            .await
            .unwrap()
    };
    common::wait_until("the deltas folded", || async {
        rows().await <= full.len() as i64
    })
    .await;
    assert_eq!(kept(&app).await, full);
    check_other_counts(&app, "after the fold").await;
    let n = |state: &str| {
        full.iter()
            .find(|(_, s, _)| s == state)
            .map_or(0.0, |(_, _, n)| *n as f64)
    };
    for state in ["queued", "succeeded", "failed", "cancelled"] {
        let name = format!("kiln_jobs{{state=\"{state}\",engine=\"test-pattern\"}}");
        assert_eq!(app.metric(&name).await, n(state), "{name}");
    }
    assert_eq!(
        (n("succeeded"), n("failed"), n("cancelled")),
        (2.0, 1.0, 4.0)
    );
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(app.metric("kiln_outbox_pending").await, outbox as f64);
}
