//! The job and outbox counts `/metrics` reads are kept by triggers as rows
//! are written: after submits, starts, successes, failures, a retry and
//! cancels they equal what a full count of the tables gives, before and
//! after the deltas are folded.

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
