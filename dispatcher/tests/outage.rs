//! PostgreSQL out of reach: the API answers 503 with `Retry-After` and
//! recovers on its own, and `serve` waits for PostgreSQL at start, within a
//! bound. The database is behind a [`Proxy`] the tests close and open.

mod common;

use common::{settings, start, Proxy, TestApp};
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
