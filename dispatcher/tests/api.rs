//! Submit, poll, list, paginate, cancel, idempotency, NDJSON, tenant
//! isolation, tokens, metrics and the OpenAPI document.

mod common;

use common::{behind_closed_proxy, decode, TestApp};
use kiln_protocol::api::{Batch, BatchPage, Counts, Job, JobPage, Problem};
use kiln_protocol::{Engine, JobState, Priority};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

#[tokio::test]
async fn submit_then_poll_a_batch_and_its_jobs() {
    let app = TestApp::spawn().await;
    let batch = app
        .submit(
            3,
            json!({"name": "foxes", "priority": "high", "metadata": {"project": "p1"}, "params": {"width": 64, "height": 32, "seed": 7}}),
        )
        .await;
    assert_eq!(batch.total, 3);
    assert_eq!(batch.state, JobState::Queued);
    assert_eq!(batch.engine, Engine::TestPattern);
    assert_eq!(batch.priority, Priority::High);
    assert_eq!(batch.name.as_deref(), Some("foxes"));
    assert_eq!(
        batch.metadata,
        BTreeMap::from([("project".to_string(), "p1".to_string())])
    );
    assert_eq!(
        batch.counts,
        Counts {
            queued: 3,
            ..Counts::default()
        }
    );
    assert_eq!(batch.progress, 0.0);
    assert!(batch.finished_at.is_none());
    let id = batch.id;

    let again = app.batch(id).await;
    assert_eq!(again.id, batch.id);
    assert_eq!(again.total, 3);

    let page: JobPage = app.get_ok(&format!("/v1/batches/{id}/jobs")).await;
    assert_eq!(page.items.len(), 3);
    assert!(page.next_cursor.is_none());
    for (i, j) in page.items.iter().enumerate() {
        assert_eq!(j.prompt, format!("prompt {i}"));
        assert_eq!(j.batch_id, batch.id);
        assert_eq!(j.state, JobState::Queued);
        assert_eq!(j.attempt, 1);
        assert_eq!(j.max_attempts, 3);
        assert_eq!(j.params.width, Some(64));
        assert_eq!(j.params.height, Some(32));
        assert_eq!(j.params.seed, Some(7));
        assert_eq!(j.params.steps, Some(1), "engine defaults are filled in");
        assert!(j.progress.is_none());
        assert!(j.results.is_empty());
    }
    // Every field is on the wire, null or not.
    let (s, job) = app.get(&format!("/v1/jobs/{}", page.items[1].id)).await;
    assert_eq!(s, StatusCode::OK, "{job}");
    let typed: Job = decode(&job);
    assert_eq!(typed.prompt, "prompt 1");
    assert_eq!(typed.engine, Engine::TestPattern);
    for key in [
        "id",
        "batch_id",
        "engine",
        "prompt",
        "params",
        "state",
        "attempt",
        "max_attempts",
        "progress",
        "error",
        "worker",
        "created_at",
        "started_at",
        "finished_at",
        "results",
    ] {
        assert!(job.get(key).is_some(), "job lacks {key}: {job}");
    }
}

#[tokio::test]
async fn seeds_are_drawn_per_job_when_not_given() {
    let app = TestApp::spawn().await;
    let batch = app.submit(20, json!({})).await;
    let page: JobPage = app.get_ok(&format!("/v1/batches/{}/jobs", batch.id)).await;
    assert_eq!(page.items.len(), 20);
    let seeds: std::collections::BTreeSet<u64> = page
        .items
        .iter()
        .map(|j| j.params.seed.expect("a stored seed"))
        .collect();
    // 20 draws from about 2^53 values: a collision has odds of about 2e-14.
    assert_eq!(seeds.len(), 20, "every job's seed differs: {seeds:?}");
}

#[tokio::test]
async fn jobs_with_overrides_and_ndjson_streams() {
    let app = TestApp::spawn().await;
    let b = app
        .create(
            &json!({"engine": "test-pattern", "params": {"width": 32}, "jobs": [
                {"prompt": "a"}, {"prompt": "b", "params": {"width": 48, "seed": 3}}
            ]}),
        )
        .await;
    let ids = app.job_ids(b.id).await;
    assert_eq!(app.job(ids[0]).await.params.width, Some(32));
    let j1 = app.job(ids[1]).await;
    assert_eq!((j1.params.width, j1.params.seed), (Some(48), Some(3)));

    let mut body = String::from(
        "{\"engine\":\"test-pattern\",\"name\":\"stream\",\"params\":{\"height\":16}}\n",
    );
    for i in 0..250 {
        body.push_str(&format!("{{\"prompt\":\"line {i}\"}}\n"));
    }
    body.push_str("{\"prompt\":\"last\",\"params\":{\"width\":16}}");
    let (s, b, _) = app
        .send(
            app.http
                .post(app.url("/v1/batches"))
                .bearer_auth(&app.token)
                .header("content-type", "application/x-ndjson")
                .body(body),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let b: Batch = decode(&b);
    assert_eq!(b.total, 251);
    assert_eq!(b.name.as_deref(), Some("stream"));
    let page: JobPage = app
        .get_ok(&format!("/v1/batches/{}/jobs?cursor=249&limit=5", b.id))
        .await;
    let items = &page.items;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].prompt, "last");
    assert_eq!(items[0].params.width, Some(16));
    assert_eq!(items[0].params.height, Some(16));
}

#[tokio::test]
async fn lists_paginate_with_cursors() {
    let app = TestApp::spawn().await;
    let mut made = Vec::new();
    for _ in 0..5 {
        made.push(app.submit(1, json!({})).await.id);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/batches?limit=2&cursor={c}"),
            None => "/v1/batches?limit=2".to_string(),
        };
        let page: BatchPage = app.get_ok(&path).await;
        assert!(page.items.len() <= 2);
        seen.extend(page.items.iter().map(|b| b.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    made.reverse();
    assert_eq!(seen, made, "newest first, each once");

    let id = app.submit(7, json!({})).await.id;
    let mut prompts = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/batches/{id}/jobs?limit=3&cursor={c}"),
            None => format!("/v1/batches/{id}/jobs?limit=3"),
        };
        let page: JobPage = app.get_ok(&path).await;
        prompts.extend(page.items.into_iter().map(|j| j.prompt));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(
        prompts,
        (0..7).map(|i| format!("prompt {i}")).collect::<Vec<_>>()
    );

    let page: JobPage = app
        .get_ok(&format!(
            "/v1/batches/{id}/jobs?state={}",
            JobState::Succeeded
        ))
        .await;
    assert!(page.items.is_empty(), "{:?}", page.items);
    let page: JobPage = app
        .get_ok(&format!(
            "/v1/batches/{id}/jobs?state={}&limit=1000",
            JobState::Queued
        ))
        .await;
    assert_eq!(page.items.len(), 7);
    assert!(page.items.iter().all(|j| j.state == JobState::Queued));
}

#[tokio::test]
async fn idempotency_keys_return_the_same_batch() {
    let app = TestApp::spawn().await;
    let body = json!({"engine": "test-pattern", "prompts": ["a", "b"]});
    let req = |b: &Value| {
        app.http
            .post(app.url("/v1/batches"))
            .bearer_auth(&app.token)
            .header("Idempotency-Key", "k-1")
            .json(b)
    };
    let (s1, b1, _) = app.send(req(&body)).await;
    assert_eq!(s1, StatusCode::CREATED);
    let b1: Batch = decode(&b1);
    app.wait_outbox_empty().await;
    let counts = app.table_counts().await;
    let (s2, b2, h2) = app.send(req(&body)).await;
    assert_eq!(s2, StatusCode::CREATED);
    assert_eq!(decode::<Batch>(&b2).id, b1.id);
    assert_eq!(h2.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(app.table_counts().await, counts, "a replay stores nothing");

    let (s3, p3, _) = app
        .send(req(
            &json!({"engine": "test-pattern", "prompts": ["other"]}),
        ))
        .await;
    assert_eq!(s3, StatusCode::CONFLICT, "{p3}");
    assert!(decode::<Problem>(&p3)
        .detail
        .contains("different request body"));
    assert_eq!(app.table_counts().await, counts);

    // The key belongs to the tenant: another tenant may use it.
    let (_, other) = app.other_tenant().await;
    let (s4, b4, _) = app
        .send(
            app.http
                .post(app.url("/v1/batches"))
                .bearer_auth(&other)
                .header("Idempotency-Key", "k-1")
                .json(&body),
        )
        .await;
    assert_eq!(s4, StatusCode::CREATED);
    assert_ne!(decode::<Batch>(&b4).id, b1.id);
}

#[tokio::test]
async fn concurrent_submits_with_one_key_store_one_batch() {
    let app = TestApp::spawn().await;
    let body = json!({"engine": "test-pattern", "prompts": ["a", "b", "c"]});
    let reqs = (0..6).map(|_| {
        app.http
            .post(app.url("/v1/batches"))
            .bearer_auth(&app.token)
            .header("Idempotency-Key", "same")
            .json(&body)
            .send()
    });
    let answers = futures::future::join_all(reqs).await;
    let mut ids = std::collections::BTreeSet::new();
    for a in answers {
        let a = a.unwrap();
        assert_eq!(a.status(), StatusCode::CREATED);
        ids.insert(a.json::<Batch>().await.unwrap().id);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(app.table_counts().await.0, 1);
    assert_eq!(app.table_counts().await.1, 3);
}

#[tokio::test]
async fn cancel_is_immediate_and_idempotent() {
    // The broker is out of reach until the cancels are done, so the relay
    // cannot publish anything before them.
    let (app, proxy, w) = behind_closed_proxy().await;
    let bid = app.submit(4, json!({})).await.id;
    let ids = app.job_ids(bid).await;
    let kept = app.submit(3, json!({})).await.id;
    let kept_ids = app.job_ids(kept).await;
    assert_eq!(app.outbox_len().await, 7, "nothing published yet");

    let c = app.cancel_job(ids[0]).await;
    assert!(c.cancelled, "{c:?}");
    assert_eq!(c.job.state, JobState::Cancelled);
    let c = app.cancel_job(ids[0]).await;
    assert!(!c.cancelled, "{c:?}");
    assert!(c.message.contains("already finished"), "{c:?}");

    let c = app.cancel_batch(bid).await;
    assert_eq!(c.cancelled, 3, "{c:?}");
    assert_eq!(c.already_finished, 1);
    assert_eq!(c.batch.state, JobState::Cancelled);
    assert_eq!(c.batch.counts.cancelled, 4);
    assert_eq!(c.batch.progress, 1.0);
    assert!(c.batch.finished_at.is_some());
    let c = app.cancel_batch(bid).await;
    assert_eq!(c.cancelled, 0);
    assert_eq!(c.already_finished, 4);
    assert_eq!(
        app.outbox_len().await,
        3,
        "cancelling removes the cancelled jobs' outbox rows"
    );
    // A row left behind for a cancelled job (as a cancel racing an older
    // attempt's row would leave): the relay must drop it, not publish it.
    sqlx::query(
        "INSERT INTO outbox (job_id, attempt, engine, priority) \
         SELECT id, attempt, engine, priority FROM jobs WHERE id = $1",
    )
    .bind(ids[1])
    .execute(&app.db)
    .await
    .unwrap();
    assert_eq!(app.outbox_len().await, 4);

    // Now the relay runs: the queue holds the other batch's jobs, each
    // once, and none of the cancelled ones.
    proxy.open();
    app.wait_outbox_empty().await;
    let published = w.drain(Duration::from_millis(500)).await;
    let got: Vec<Uuid> = published.iter().map(|m| m.job_id).collect();
    for id in &ids {
        assert!(
            !got.contains(id),
            "cancelled job {id} was published: {got:?}"
        );
    }
    let mut want = kept_ids.clone();
    want.sort();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    assert_eq!(got_sorted, want, "the queue holds exactly the live jobs");
}

#[tokio::test]
async fn retry_batches_link_to_their_parent() {
    let app = TestApp::spawn().await;
    let parent = app.submit(1, json!({})).await;
    let child = app.submit(1, json!({"retry_of": parent.id})).await;
    assert_eq!(child.retry_of, Some(parent.id));
    let (s, p) = app
        .post(
            "/v1/batches",
            &json!({"engine": "test-pattern", "prompts": ["a"], "retry_of": Uuid::now_v7()}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(decode::<Problem>(&p).errors[0].pointer, "/retry_of");
}

#[tokio::test]
async fn tenants_see_only_their_own_batches_and_jobs() {
    let app = TestApp::spawn().await;
    let bid = app.submit(2, json!({})).await.id;
    let jid = app.job_ids(bid).await[0];
    let (_, other) = app.other_tenant().await;
    app.wait_outbox_empty().await;
    let before = app.table_counts().await;

    for path in [
        format!("/v1/batches/{bid}"),
        format!("/v1/batches/{bid}/jobs"),
        format!("/v1/jobs/{jid}"),
    ] {
        let (s, p) = app.get_as(&other, &path).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {p}");
        assert_eq!(decode::<Problem>(&p).status, 404);
    }
    for path in [
        format!("/v1/batches/{bid}/cancel"),
        format!("/v1/jobs/{jid}/cancel"),
    ] {
        let (s, _) = app.post_as(&other, &path, &json!({})).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
    }
    let (s, list) = app.get_as(&other, "/v1/batches").await;
    assert_eq!(s, StatusCode::OK);
    let list: BatchPage = decode(&list);
    assert!(list.items.is_empty(), "{list:?}");
    let (s, p) = app
        .post_as(
            &other,
            "/v1/batches",
            &json!({"engine": "test-pattern", "prompts": ["a"], "retry_of": bid}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(app.table_counts().await, before);
    assert_eq!(
        app.job(jid).await.state,
        JobState::Queued,
        "the other tenant's cancel changed nothing"
    );

    // The owner still sees everything.
    let list: BatchPage = app.get_ok("/v1/batches").await;
    assert_eq!(list.items.len(), 1);
}

#[tokio::test]
async fn every_v1_route_needs_a_valid_token() {
    let app = TestApp::spawn().await;
    let bid = app.submit(1, json!({})).await.id;
    let jid = app.job_ids(bid).await[0];
    let routes = [
        ("GET", "/v1/batches".to_string()),
        ("POST", "/v1/batches".to_string()),
        ("GET", format!("/v1/batches/{bid}")),
        ("GET", format!("/v1/batches/{bid}/jobs")),
        ("POST", format!("/v1/batches/{bid}/cancel")),
        ("GET", format!("/v1/jobs/{jid}")),
        ("POST", format!("/v1/jobs/{jid}/cancel")),
        ("POST", "/v1/uploads".to_string()),
    ];
    for (method, path) in &routes {
        for auth in [
            None,
            Some("Bearer kiln_0000"),
            Some("Basic Z3Vlc3Q6Z3Vlc3Q="),
            Some(app.token.as_str()),
        ] {
            let mut req = match *method {
                "GET" => app.http.get(app.url(path)),
                _ => app
                    .http
                    .post(app.url(path))
                    .json(&json!({"engine": "test-pattern", "prompts": ["x"]})),
            };
            let real = auth == Some(app.token.as_str());
            if let Some(a) = auth {
                req = req.header(
                    "authorization",
                    if real {
                        format!("Bearer {a}")
                    } else {
                        a.to_string()
                    },
                );
            }
            let (s, p, h) = app.send(req).await;
            if real {
                assert_ne!(s, StatusCode::UNAUTHORIZED, "{method} {path}");
            } else {
                assert_eq!(
                    s,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} with {auth:?}: {p}"
                );
                assert_eq!(h.get("content-type").unwrap(), "application/problem+json");
                assert_eq!(h.get("www-authenticate").unwrap(), "Bearer");
            }
        }
    }
}

#[tokio::test]
async fn token_commands_create_and_revoke() {
    let app = TestApp::spawn().await;
    let exe = env!("CARGO_BIN_EXE_kiln-dispatcher");
    let tenant = kiln_tests::fresh_tenant();
    let out = std::process::Command::new(exe)
        .args(["token", "create", "--tenant", &tenant])
        .env("KILN_DATABASE_URL", &app.db_url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().last().unwrap().trim().to_string();
    // The whole row, every column as text (bytea as hex): the token shows
    // up nowhere, neither as text nor as the hex of its bytes.
    let row: String =
        sqlx::query_scalar("SELECT row_to_json(t)::text FROM api_tokens t WHERE tenant = $1")
            .bind(&tenant)
            .fetch_one(&app.db)
            .await
            .unwrap();
    let secret = token.strip_prefix("kiln_").expect("a kiln_ token");
    assert_eq!(secret.len(), 64, "{token}");
    for needle in [secret.to_string(), hex::encode(token.as_bytes())] {
        assert!(
            !row.to_lowercase().contains(&needle.to_lowercase()),
            "the token is stored in the clear: {row}"
        );
    }
    // The stored hash is the SHA-256 of the token's bytes, computed here
    // independently of the dispatcher's code.
    let hash: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM api_tokens WHERE tenant = $1")
        .bind(&tenant)
        .fetch_one(&app.db)
        .await
        .unwrap();
    use sha2::Digest;
    assert_eq!(
        hex::encode(&hash),
        hex::encode(sha2::Sha256::digest(token.as_bytes())),
        "the stored hash is SHA-256(token)"
    );
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_tokens WHERE tenant = $1 AND token_hash = sha256($2::bytea)",
    )
    .bind(&tenant)
    .bind(token.as_bytes())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(stored, 1, "only the hash is stored");
    let (s, _) = app.get_as(&token, "/v1/batches").await;
    assert_eq!(s, StatusCode::OK);

    let out = std::process::Command::new(exe)
        .args(["token", "revoke", "--token", &token])
        .env("KILN_DATABASE_URL", &app.db_url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (s, _) = app.get_as(&token, "/v1/batches").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let bad = std::process::Command::new(exe)
        .args(["token", "create", "--tenant", "../etc"])
        .env("KILN_DATABASE_URL", &app.db_url)
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[tokio::test]
async fn health_metrics_and_openapi() {
    // The document states this dispatcher's limits, not the defaults.
    let app = TestApp::spawn_with(|s| {
        s.max_prompt_chars = 50;
        s.max_steps = 300;
    })
    .await;
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (s, ready, _) = app.send(app.http.get(app.url("/readyz"))).await;
    assert_eq!(s, StatusCode::OK, "{ready}");
    assert_eq!(ready, json!({"postgres": true, "rabbitmq": true}));

    app.submit(3, json!({})).await;
    assert_eq!(
        app.metric(&format!(
            "kiln_jobs{{state=\"{}\",engine=\"test-pattern\"}}",
            JobState::Queued
        ))
        .await,
        3.0
    );
    assert_eq!(
        app.metric("kiln_backlog{engine=\"test-pattern\"}").await,
        3.0
    );
    assert_eq!(app.metric("kiln_backlog{engine=\"dalle\"}").await, 0.0);
    // OpenMetrics text, with the process metrics.
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    let kind = r.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    assert!(r.text().await.unwrap().ends_with("# EOF\n"));
    assert!(app.metric("process_resident_memory_bytes").await > 1e6);
    assert!(app.metric("process_open_fds").await >= 3.0);
    app.wait_metric("kiln_published_total", 3.0).await;
    assert!(app.metric("kiln_publish_confirm_seconds_count").await >= 1.0);
    for name in [
        "kiln_event_lag_seconds_count",
        "kiln_dead_letters_total",
        "kiln_outbox_pending",
    ] {
        app.metric(name).await;
    }

    let text = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let spec = oas3::from_json(&text).expect("a valid OpenAPI document");
    assert!(spec.openapi.starts_with("3."), "{}", spec.openapi);
    let paths = spec.paths.expect("paths");
    for (path, methods) in [
        ("/v1/batches", vec!["get", "post"]),
        ("/v1/batches/{id}", vec!["get"]),
        ("/v1/batches/{id}/jobs", vec!["get"]),
        ("/v1/batches/{id}/cancel", vec!["post"]),
        ("/v1/batches/{id}/webhooks", vec!["get"]),
        ("/v1/batches/{id}/events", vec!["get"]),
        ("/v1/events", vec!["get"]),
        ("/v1/jobs/{id}", vec!["get"]),
        ("/v1/jobs/{id}/cancel", vec!["post"]),
        ("/v1/uploads", vec!["post"]),
        ("/v1/workers", vec!["get"]),
        ("/v1/workers/{id}/drain", vec!["post"]),
        ("/healthz", vec!["get"]),
        ("/readyz", vec!["get"]),
        ("/metrics", vec!["get"]),
        ("/openapi.json", vec!["get"]),
    ] {
        let item = paths.get(path).unwrap_or_else(|| panic!("{path} missing"));
        for m in methods {
            let op = match m {
                "get" => item.get.as_ref(),
                _ => item.post.as_ref(),
            };
            assert!(op.is_some(), "{m} {path} missing");
        }
    }
    assert_eq!(paths.len(), 16, "every route and no other");
    let raw: Value = serde_json::from_str(&text).unwrap();
    for schema in [
        "Batch",
        "Job",
        "Problem",
        "BatchRequest",
        "ParamsDto",
        "WorkerList",
        "JobEvent",
        "ProgressEvent",
        "WebhookRequest",
        "WebhookDeliveryPage",
    ] {
        assert!(
            raw["components"]["schemas"].get(schema).is_some(),
            "schema {schema}"
        );
    }
    assert_error_answers_are_problems(&raw);
    for (path, names) in [
        ("/v1/batches", &["limit", "cursor"][..]),
        (
            "/v1/batches/{id}/jobs",
            &["id", "limit", "cursor", "state"][..],
        ),
        ("/v1/batches/{id}/webhooks", &["id", "limit", "cursor"][..]),
    ] {
        let params = raw["paths"][path]["get"]["parameters"].as_array().unwrap();
        let mut got: Vec<&str> = params.iter().filter_map(|p| p["name"].as_str()).collect();
        got.sort_unstable();
        let mut want = names.to_vec();
        want.sort_unstable();
        assert_eq!(got, want, "{path}: its parameters");
        for p in params {
            let expected = if p["name"] == "id" { "path" } else { "query" };
            assert_eq!(p["in"], expected, "{path}: {p}");
        }
    }
    let upload = &raw["paths"]["/v1/uploads"]["post"]["responses"];
    assert!(upload.get("400").is_some(), "an empty upload answers 400");
    assert_request_schemas(&raw);
    assert_links_and_operation_ids(&raw);
}

/// The submit request: one schema per engine with its own closed, bounded
/// parameters (the test app's limits), prompts or jobs, and the NDJSON body
/// as a header line then job lines.
fn assert_request_schemas(doc: &Value) {
    let schemas = &doc["components"]["schemas"];
    let engines: Vec<&str> = schemas["BatchRequest"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["$ref"].as_str().unwrap())
        .collect();
    assert_eq!(
        engines,
        [
            "#/components/schemas/VqganClipBatch",
            "#/components/schemas/DalleBatch",
            "#/components/schemas/TestPatternBatch"
        ]
    );
    let dalle = &schemas["DalleBatch"];
    assert_eq!(dalle["properties"]["engine"]["const"], "dalle");
    assert_eq!(dalle["additionalProperties"], false);
    assert_eq!(
        dalle["oneOf"].as_array().unwrap().len(),
        2,
        "prompts or jobs"
    );
    let params = &schemas["DalleParams"]["properties"];
    assert_eq!(params["width"]["enum"], json!([256, null]));
    assert_eq!(params["steps"]["type"], "null", "DALL·E takes no steps");
    let tp = &schemas["TestPatternParams"]["properties"];
    assert_eq!(tp["steps"]["maximum"], 300, "the dispatcher's max_steps");
    assert_eq!(tp["width"]["multipleOf"], 16);
    assert_eq!(tp["top_k"]["type"], "null");
    assert!(
        schemas.get("JobRequest").is_none(),
        "each engine's job replaces it"
    );
    assert_eq!(
        schemas["Prompt"]["maxLength"], 50,
        "the test app's max_prompt_chars"
    );
    let ndjson = &doc["paths"]["/v1/batches"]["post"]["requestBody"]["content"]
        ["application/x-ndjson"]["schema"]["oneOf"][2];
    assert_eq!(
        ndjson["prefixItems"][0]["$ref"],
        "#/components/schemas/TestPatternBatchHeader"
    );
    assert_eq!(
        ndjson["items"]["$ref"],
        "#/components/schemas/TestPatternJob"
    );
}

/// Operation ids are unique, and a created batch links to its status, its
/// jobs and its cancel; a listed job to its own.
fn assert_links_and_operation_ids(doc: &Value) {
    let mut ids = Vec::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            ids.push(op["operationId"].as_str().unwrap().to_string());
        }
    }
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "operation ids are unique: {ids:?}");
    let created = &doc["paths"]["/v1/batches"]["post"]["responses"]["201"]["links"];
    for (link, to) in [
        ("GetBatch", "getBatch"),
        ("ListBatchJobs", "listBatchJobs"),
        ("CancelBatch", "cancelBatch"),
    ] {
        assert_eq!(created[link]["operationId"], to, "{link}");
        assert_eq!(created[link]["parameters"]["id"], "$response.body#/id");
    }
    let listed = &doc["paths"]["/v1/batches/{id}/jobs"]["get"]["responses"]["200"]["links"];
    assert_eq!(
        listed["CancelJob"]["parameters"]["id"],
        "$response.body#/items/0/id"
    );
}

/// Every 4xx and 5xx answer of every operation is documented as
/// `application/problem+json` with the `Problem` schema, as the server sends them.
fn assert_error_answers_are_problems(doc: &Value) {
    let mut seen = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                if !(status.starts_with('4') || status.starts_with('5')) || path == "/readyz" {
                    continue;
                }
                let content = response["content"].as_object().unwrap();
                let keys: Vec<_> = content.keys().collect();
                assert_eq!(
                    keys,
                    ["application/problem+json"],
                    "{method} {path} {status}"
                );
                assert_eq!(
                    content["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{method} {path} {status}"
                );
                seen += 1;
            }
        }
    }
    assert!(seen >= 20, "only {seen} error answers documented");
}

#[tokio::test]
async fn cancels_racing_the_relay_never_fail() {
    let app = TestApp::spawn_with(|s| s.relay_batch = 20).await;
    let batch = app.submit(200, json!({})).await;
    let ids = app.job_ids(batch.id).await;
    let cancels = ids.iter().map(|id| {
        app.http
            .post(app.url(&format!("/v1/jobs/{id}/cancel")))
            .bearer_auth(&app.token)
            .send()
    });
    for r in futures::future::join_all(cancels).await {
        let r = r.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }
    let b = app.batch(batch.id).await;
    assert_eq!(b.counts.cancelled, 200);
    app.wait_outbox_empty().await;
}
