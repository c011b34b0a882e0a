//! Outages: with PostgreSQL out of reach the API answers 503 with
//! `Retry-After` and recovers on its own, and `serve` waits for PostgreSQL
//! at start, within a bound; with the broker out of the dispatcher's reach
//! for longer than a lease, no running job is retried for it. The service
//! is behind a [`Proxy`] the tests close and open.

mod common;

use common::{settings, start, FakeWorker, Proxy, TestApp};
use kiln_protocol::{Event, EventKind, JobState};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn the_api_answers_503_while_postgres_is_out_of_reach_then_recovers() {
    let db = kiln_tests::fresh_database().await.unwrap();
    let vhost = kiln_tests::fresh_vhost().await.unwrap();
    let proxy = Proxy::start(Proxy::target_of(&db)).await;
    proxy.open();
    let app = TestApp::spawn_on(&proxy.url(&db), &vhost, |_| {}).await;
    let before = app.submit(2, json!({})).await;

    proxy.close();
    let r = app
        .http
        .get(app.url(&format!("/v1/batches/{}", before.id)))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let doc: serde_json::Value = reqwest::get(app.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let documented = &doc["paths"]["/v1/batches/{id}"]["get"]["responses"]["503"];
    assert!(
        documented["headers"].get("Retry-After").is_some(),
        "{documented}"
    );
    let problem: serde_json::Value = r.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("database"),
        "{problem}"
    );

    // Back again: the same process serves and publishes, nothing restarted.
    proxy.open();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _) = app.get(&format!("/v1/batches/{}", before.id)).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = app.submit(3, json!({})).await;
    assert_eq!(app.batch(after.id).await.total, 3);
    app.wait_outbox_empty().await;
    assert!(!app.handle.is_finished(), "the dispatcher is still running");
}

#[tokio::test]
async fn serve_waits_for_postgres_at_start_within_its_bound() {
    let db = kiln_tests::fresh_database().await.unwrap();
    let vhost = kiln_tests::fresh_vhost().await.unwrap();
    let proxy = Proxy::start(Proxy::target_of(&db)).await;

    let mut s = settings(&proxy.url(&db), &vhost);
    s.connections.database_wait = Duration::from_secs(1);
    let gave_up = kiln_dispatcher::Application::build(s).await.err().unwrap();
    assert!(
        format!("{gave_up:#}").contains("gave up waiting for PostgreSQL"),
        "{gave_up:#}"
    );

    let mut s = settings(&proxy.url(&db), &vhost);
    s.connections.database_wait = Duration::from_secs(60);
    let starting = tokio::spawn(start(s));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !starting.is_finished(),
        "serve waits while PostgreSQL is away"
    );
    proxy.open();
    let (base, stop, _handle) = tokio::time::timeout(Duration::from_secs(30), starting)
        .await
        .expect("serve starts once PostgreSQL is back")
        .unwrap();
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    stop.cancel();
}

/// Heartbeats that wait in the events queue while the dispatcher cannot
/// read it renew no lease; the reaper must not take that for a lost worker.
#[tokio::test]
async fn an_event_path_outage_longer_than_the_lease_retries_nothing() {
    let db = kiln_tests::fresh_database().await.unwrap();
    let real = kiln_tests::fresh_vhost().await.unwrap();
    let proxy = Proxy::start(Proxy::target_of(&real)).await;
    proxy.open();
    let lease = Duration::from_secs(2);
    let app = TestApp::spawn_on(&db, &proxy.url(&real), |s| s.lease = lease).await;
    let w = FakeWorker::connect(&real).await;
    app.submit(1, json!({})).await;
    let id = w.next_job().await.job_id;
    w.emit(id, 1, EventKind::Started).await;
    app.wait_state(id, JobState::Running).await;

    // The worker heartbeats on, into the events queue, through an outage
    // of twice the lease and as long again after it.
    let beat = |n| {
        let w = &w;
        async move {
            for _ in 0..n {
                w.emit(id, 1, EventKind::Heartbeat).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    proxy.close();
    beat(16).await;
    proxy.open();
    beat(16).await;
    let j = app.job(id).await;
    assert_eq!((j.state, j.attempt), (JobState::Running, 1), "{j:?}");

    // A worker that really stops is still found out.
    let j = app.wait_job(id, "a retry", |j| j.attempt == 2).await;
    assert!(
        j.error.as_deref().unwrap().contains("lease expired"),
        "{j:?}"
    );
}

/// An event that PostgreSQL refuses every time (here a worker name holding
/// a NUL) is not an outage: leases go on lapsing while it is retried.
#[tokio::test]
async fn an_event_that_always_fails_does_not_hold_leases_back() {
    let app = TestApp::spawn_with(|s| s.lease = Duration::from_millis(500)).await;
    let w = app.worker().await;
    app.submit(2, json!({})).await;
    let (a, b) = (w.next_job().await, w.next_job().await);
    w.emit(a.job_id, 1, EventKind::Started).await;
    app.wait_state(a.job_id, JobState::Running).await;
    let poison = Event {
        worker: "bad\0worker".into(),
        ..w.event(b.job_id, 1, EventKind::Started)
    };
    w.send(&poison).await;
    // The first job's worker is gone: its lease lapses and it is retried.
    let j = app.wait_job(a.job_id, "a retry", |j| j.attempt == 2).await;
    assert!(
        j.error.as_deref().unwrap().contains("lease expired"),
        "{j:?}"
    );
    assert_eq!(app.job(b.job_id).await.state, JobState::Queued);
}

/// A bogus token costs no database work: a malformed one is refused by its
/// form, and a well-formed unknown one, once looked up, is refused from
/// memory. Shown with PostgreSQL out of reach, where any query answers 503.
#[tokio::test]
async fn bogus_tokens_are_refused_without_a_query() {
    let db = kiln_tests::fresh_database().await.unwrap();
    let vhost = kiln_tests::fresh_vhost().await.unwrap();
    let proxy = Proxy::start(Proxy::target_of(&db)).await;
    proxy.open();
    let app = TestApp::spawn_on(&proxy.url(&db), &vhost, |_| {}).await;
    let unknown = format!("kiln_{}", "0a".repeat(32));
    let status_with = |token: String| {
        let (http, url) = (app.http.clone(), app.url("/v1/batches"));
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status_with(unknown.clone()).await, StatusCode::UNAUTHORIZED);

    proxy.close();
    assert_eq!(
        status_with(app.token.clone()).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "a real token needs the database"
    );
    for bogus in [
        "kiln_nope".to_string(),
        format!("kiln_{}", "0A".repeat(32)),
        "x".repeat(10_000),
        unknown,
    ] {
        assert_eq!(
            status_with(bogus.clone()).await,
            StatusCode::UNAUTHORIZED,
            "{bogus:.40}"
        );
    }
}

/// `serve`'s pool asks PostgreSQL to cancel any statement that runs past
/// KILN_STATEMENT_TIMEOUT, so a stuck query frees its connection.
#[tokio::test]
async fn statements_past_the_statement_timeout_are_cancelled() {
    let db = kiln_tests::fresh_database().await.unwrap();
    let pool = kiln_dispatcher::connect_db_waiting(
        &db,
        2,
        Duration::from_secs(5),
        Duration::from_millis(200),
    )
    .await
    .unwrap();
    let e = sqlx::query("SELECT pg_sleep(2)")
        .execute(&pool)
        .await
        .unwrap_err();
    let code = e
        .as_database_error()
        .and_then(|d| d.code())
        .unwrap_or_default();
    assert_eq!(code, "57014", "query_canceled: {e}");
    sqlx::query("SELECT pg_sleep(0.05)")
        .execute(&pool)
        .await
        .unwrap();
}
