//! Per-tenant quotas: over its jobs-queued-or-running quota or its submits
//! per minute, a tenant's submit answers 429 with `Retry-After` and a
//! problem saying which quota, and stores nothing; other tenants are not
//! held back; `kiln-dispatcher tenant set-limits` sets them.

mod common;

use common::TestApp;
use kiln_dispatcher::quotas::{self, Quotas};
use kiln_protocol::api::Problem;
use kiln_protocol::EventKind;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn submit_raw(app: &TestApp, token: &str, n: usize) -> (StatusCode, Option<u64>, Value) {
    let body = json!({
        "engine": "test-pattern",
        "prompts": (0..n).map(|i| format!("prompt {i}")).collect::<Vec<_>>(),
    });
    let r = app
        .http
        .post(app.url("/v1/batches"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, retry, r.json().await.unwrap())
}

#[tokio::test]
async fn over_its_active_jobs_quota_a_tenant_gets_429_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let own = Quotas {
        max_active_jobs: Some(5),
        submits_per_minute: None,
    };
    quotas::set(&app.db, &app.tenant, own).await.unwrap();
    let first = app.submit(3, json!({})).await;
    let before = app.table_counts().await;

    let (status, retry, body) = submit_raw(&app, &app.token, 3).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(retry, Some(30));
    let problem: Problem = common::decode(&body);
    assert_eq!(problem.kind, "urn:kiln:problem:too-many-requests");
    assert!(
        problem.detail.contains("has 3 jobs queued or running")
            && problem.detail.contains("limit is 5"),
        "{problem:?}"
    );
    assert_eq!(app.table_counts().await, before, "nothing stored");
    // Another tenant is not held back by this one's quota.
    let (_, other) = app.other_tenant().await;
    assert_eq!(submit_raw(&app, &other, 3).await.0, StatusCode::CREATED);

    // Within the quota, and again once jobs finish.
    assert_eq!(submit_raw(&app, &app.token, 2).await.0, StatusCode::CREATED);
    let w = app.worker().await;
    w.drain(std::time::Duration::from_millis(300)).await;
    for id in app.job_ids(first.id).await {
        w.emit(id, 1, EventKind::Started).await;
        w.emit(id, 1, EventKind::Succeeded { results: vec![] })
            .await;
        app.wait_state(id, kiln_protocol::JobState::Succeeded).await;
    }
    assert_eq!(submit_raw(&app, &app.token, 3).await.0, StatusCode::CREATED);
    // A batch larger than the quota itself can never fit: 422, not 429.
    let (status, retry, body) = submit_raw(&app, &app.token, 6).await;
    assert_eq!((status, retry), (StatusCode::UNPROCESSABLE_ENTITY, None));
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("this batch has 6 jobs"),
        "{body}"
    );
}

#[tokio::test]
async fn over_its_submits_per_minute_a_tenant_waits_as_retry_after_says() {
    let app = TestApp::spawn_with(|s| s.tenant_submits_per_minute = 2).await;
    assert_eq!(submit_raw(&app, &app.token, 1).await.0, StatusCode::CREATED);
    assert_eq!(submit_raw(&app, &app.token, 1).await.0, StatusCode::CREATED);
    let before = app.table_counts().await;
    let (status, retry, body) = submit_raw(&app, &app.token, 1).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let retry = retry.expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(
        body["detail"].as_str().unwrap().contains("2 per minute"),
        "{body}"
    );
    assert_eq!(app.table_counts().await, before, "nothing stored");
    // A tenant's own value overrides the default.
    let own = Quotas {
        max_active_jobs: None,
        submits_per_minute: Some(10),
    };
    quotas::set(&app.db, &app.tenant, own).await.unwrap();
    assert_eq!(submit_raw(&app, &app.token, 1).await.0, StatusCode::CREATED);
}

#[tokio::test]
async fn the_tenant_command_sets_and_shows_quotas() {
    let app = TestApp::spawn().await;
    let bin = kiln_tests::bin("kiln-dispatcher");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .arg("tenant")
            .args(args)
            .args(["--tenant", &app.tenant])
            .env("KILN_DATABASE_URL", &app.db_url)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = run(&["set-limits", "--max-active-jobs", "1"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("max active jobs 1, submits per minute the default"),
        "{text}"
    );
    assert_eq!(submit_raw(&app, &app.token, 1).await.0, StatusCode::CREATED);
    assert_eq!(
        submit_raw(&app, &app.token, 1).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    let (ok, text) = run(&["set-limits", "--submits-per-minute", "7"]);
    assert!(
        ok && text.contains("max active jobs 1, submits per minute 7"),
        "{text}"
    );
    let (ok, text) = run(&["set-limits", "--max-active-jobs", "default"]);
    assert!(
        ok && text.contains("max active jobs the default, submits per minute 7"),
        "{text}"
    );
    assert_eq!(submit_raw(&app, &app.token, 2).await.0, StatusCode::CREATED);
    let (ok, text) = run(&["show"]);
    assert!(ok && text.contains("submits per minute 7"), "{text}");
    let (ok, text) = run(&["set-limits", "--max-active-jobs", "lots"]);
    assert!(!ok && text.contains("not a count"), "{text}");
}
