//! Bad requests: each gets its 4xx problem+json answer and stores nothing.

mod common;

use common::{decode, TestApp};
use kiln_protocol::api::Problem;
use serde_json::{json, Value};

enum Auth {
    Good,
    None,
    Wrong,
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    auth: Auth,
    headers: Vec<(&'static str, String)>,
    status: u16,
    /// The first error's pointer, when the answer lists field errors.
    pointer: Option<&'static str>,
    /// Text the detail or the first error's message must contain.
    says: Option<&'static str>,
}

fn case(
    name: &'static str,
    body: Value,
    status: u16,
    pointer: Option<&'static str>,
    says: Option<&'static str>,
) -> Case {
    Case {
        name,
        method: "POST",
        path: "/v1/batches",
        content_type: Some("application/json"),
        body: serde_json::to_vec(&body).unwrap(),
        auth: Auth::Good,
        headers: vec![],
        status,
        pointer,
        says,
    }
}

fn raw(
    name: &'static str,
    content_type: Option<&'static str>,
    body: &str,
    status: u16,
    pointer: Option<&'static str>,
    says: Option<&'static str>,
) -> Case {
    Case {
        content_type,
        body: body.as_bytes().to_vec(),
        ..case(name, Value::Null, status, pointer, says)
    }
}

fn tp(extra: Value) -> Value {
    let mut b = json!({"engine": "test-pattern", "prompts": ["a red fox"]});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            b.as_object_mut().unwrap().remove(k);
        } else {
            b[k] = v.clone();
        }
    }
    b
}

fn get(name: &'static str, path: &'static str, status: u16) -> Case {
    Case {
        method: "GET",
        path,
        content_type: None,
        body: vec![],
        ..case(name, Value::Null, status, None, None)
    }
}

const ND: Option<&str> = Some("application/x-ndjson");
const HEADER: &str = "{\"engine\":\"test-pattern\"}\n";

/// Bodies that are not JSON, or not a batch request's shape.
fn syntax_cases() -> Vec<Case> {
    vec![
        raw(
            "malformed JSON",
            Some("application/json"),
            "{\"engine\":",
            400,
            None,
            Some("malformed JSON"),
        ),
        raw(
            "trailing characters",
            Some("application/json"),
            "{\"engine\":\"test-pattern\",\"prompts\":[\"a\"]} x",
            400,
            None,
            Some("trailing"),
        ),
        raw(
            "empty body",
            Some("application/json"),
            "",
            400,
            None,
            Some("empty"),
        ),
        case(
            "not an object",
            json!(["a"]),
            422,
            None,
            Some("invalid type"),
        ),
        case(
            "missing engine",
            json!({"prompts": ["a"]}),
            422,
            None,
            Some("engine"),
        ),
        case(
            "unknown engine",
            tp(json!({"engine": "stable-diffusion"})),
            422,
            Some("/engine"),
            Some("unknown engine"),
        ),
        case(
            "engine of the wrong type",
            tp(json!({"engine": 5})),
            422,
            Some("/engine"),
            Some("invalid type"),
        ),
        case(
            "unknown top-level field",
            tp(json!({"promts": ["a"]})),
            422,
            None,
            Some("unknown field"),
        ),
        case(
            "unknown parameter",
            tp(json!({"params": {"widht": 64}})),
            422,
            Some("/params"),
            Some("unknown field `widht`"),
        ),
        case(
            "prompts not a list",
            tp(json!({"prompts": "a"})),
            422,
            Some("/prompts"),
            Some("invalid type"),
        ),
        case(
            "prompt of the wrong type",
            tp(json!({"prompts": ["a", 3]})),
            422,
            Some("/prompts/1"),
            Some("invalid type"),
        ),
    ]
}

/// Prompt lists and prompts that fail their checks.
fn prompt_cases() -> Vec<Case> {
    let long = "x".repeat(51);
    vec![
        case(
            "empty prompt list",
            tp(json!({"prompts": []})),
            422,
            Some("/prompts"),
            Some("empty"),
        ),
        case(
            "empty job list",
            tp(json!({"prompts": null, "jobs": []})),
            422,
            Some("/jobs"),
            Some("empty"),
        ),
        case(
            "prompts and jobs",
            tp(json!({"jobs": [{"prompt": "a"}]})),
            422,
            Some("/jobs"),
            Some("not both"),
        ),
        case(
            "neither prompts nor jobs",
            tp(json!({"prompts": null})),
            422,
            Some("/prompts"),
            None,
        ),
        case(
            "empty prompt",
            tp(json!({"prompts": ["ok", ""]})),
            422,
            Some("/prompts/1"),
            Some("empty"),
        ),
        case(
            "blank prompt",
            tp(json!({"prompts": ["   "]})),
            422,
            Some("/prompts/0"),
            Some("empty"),
        ),
        case(
            "over-long prompt names the limit",
            tp(json!({"prompts": [long]})),
            422,
            Some("/prompts/0"),
            Some("limit is 50"),
        ),
        case(
            "control character",
            tp(json!({"prompts": ["a\u{7}b"]})),
            422,
            Some("/prompts/0"),
            Some("control character"),
        ),
        case(
            "a newline ending a prompt is a control character",
            tp(json!({"prompts": ["a red fox\n"]})),
            422,
            Some("/prompts/0"),
            Some("U+000A"),
        ),
        case(
            "white space around a prompt counts towards its length",
            tp(json!({"prompts": [format!(" {} ", "x".repeat(49))]})),
            422,
            Some("/prompts/0"),
            Some("51 characters"),
        ),
        case(
            "no positive weight",
            tp(json!({"prompts": ["blurry:-1"]})),
            422,
            Some("/prompts/0"),
            Some("positive weight"),
        ),
        case(
            "non-finite weight",
            tp(json!({"prompts": ["fox:nan"]})),
            422,
            Some("/prompts/0"),
            Some("finite"),
        ),
    ]
}

/// Parameters out of bounds, or foreign to the engine.
fn param_cases() -> Vec<Case> {
    vec![
        case(
            "params as an array",
            tp(json!({"params": [64, 64]})),
            422,
            Some("/params"),
            Some("expected a JSON object"),
        ),
        case(
            "a job as an array",
            tp(json!({"prompts": null, "jobs": [["a red fox"]]})),
            422,
            Some("/jobs/0"),
            Some("expected a JSON object"),
        ),
        raw(
            "a job line's params as an array",
            ND,
            "{\"engine\":\"test-pattern\"}\n{\"prompt\":\"a\",\"params\":[null,null]}\n",
            422,
            Some("/jobs/0/params"),
            Some("expected a JSON object"),
        ),
        case(
            "a whole parameter with a fraction",
            tp(json!({"params": {"width": 64.5}})),
            422,
            Some("/params/width"),
            Some("expected a whole number"),
        ),
        case(
            "width not a multiple of 16",
            tp(json!({"params": {"width": 100}})),
            422,
            Some("/params/width"),
            Some("multiple of 16"),
        ),
        case(
            "width over the limit",
            tp(json!({"params": {"width": 2048}})),
            422,
            Some("/params/width"),
            Some("limit of 1024"),
        ),
        case(
            "negative height",
            tp(json!({"params": {"height": -16}})),
            422,
            Some("/params/height"),
            Some("invalid value"),
        ),
        case(
            "zero steps",
            tp(json!({"params": {"steps": 0}})),
            422,
            Some("/params/steps"),
            None,
        ),
        case(
            "keep above candidates",
            tp(json!({"params": {"candidates": 2, "keep": 3}})),
            422,
            Some("/params/keep"),
            None,
        ),
        case(
            "seed beyond exact JSON integers",
            tp(json!({"params": {"seed": 9_007_199_254_740_992u64}})),
            422,
            Some("/params/seed"),
            None,
        ),
        case(
            "parameter of another engine",
            tp(json!({"params": {"lr": 0.1}})),
            422,
            Some("/params/lr"),
            Some("not a parameter"),
        ),
        case(
            "DALL·E size",
            json!({"engine": "dalle", "prompts": ["a"], "params": {"width": 512}}),
            422,
            Some("/params/width"),
            Some("256"),
        ),
        case(
            "bad job override",
            tp(
                json!({"prompts": null, "jobs": [{"prompt": "a"}, {"prompt": "b", "params": {"width": 17}}]}),
            ),
            422,
            Some("/jobs/1/params/width"),
            None,
        ),
        case(
            "unknown job field",
            tp(json!({"prompts": null, "jobs": [{"prompt": "a", "seed": 1}]})),
            422,
            Some("/jobs/0"),
            Some("unknown field"),
        ),
    ]
}

/// Batch fields, init images and size limits.
fn batch_cases() -> Vec<Case> {
    vec![
        case(
            "unknown priority",
            tp(json!({"priority": "urgent"})),
            422,
            Some("/priority"),
            Some("unknown variant"),
        ),
        case(
            "a NUL in metadata",
            tp(json!({"metadata": {"k": "a\u{0}b"}})),
            422,
            Some("/metadata/k"),
            Some("NUL"),
        ),
        case(
            "metadata value not a string",
            tp(json!({"metadata": {"k": 1}})),
            422,
            Some("/metadata/k"),
            Some("invalid type"),
        ),
        case(
            "too much metadata",
            tp(
                json!({"metadata": (0..33).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}),
            ),
            422,
            Some("/metadata"),
            Some("limit is 32"),
        ),
        case(
            "empty name",
            tp(json!({"name": "  "})),
            422,
            Some("/name"),
            Some("empty"),
        ),
        case(
            "retry_of not an id",
            tp(json!({"retry_of": "yesterday"})),
            422,
            Some("/retry_of"),
            None,
        ),
        case(
            "unknown init image",
            json!({"engine": "vqgan-clip", "prompts": ["a"], "params": {"init_image": "up_missing"}}),
            422,
            Some("/params/init_image"),
            Some("no upload"),
        ),
        case(
            "init image that is a URL",
            json!({"engine": "vqgan-clip", "prompts": ["a"], "params": {"init_image": "http://x/y.png"}}),
            422,
            Some("/params/init_image"),
            None,
        ),
        case(
            "too many jobs names the limit",
            tp(json!({"prompts": ["a", "b", "c", "d", "e", "f"]})),
            422,
            Some("/jobs"),
            Some("at most 5"),
        ),
        case(
            "oversize body names the limit",
            tp(json!({"name": "n".repeat(5000)})),
            413,
            None,
            Some("4096 bytes"),
        ),
    ]
}

/// Content types and NDJSON bodies.
fn stream_cases() -> Vec<Case> {
    vec![
        raw(
            "text/plain body",
            Some("text/plain"),
            "a red fox",
            415,
            None,
            Some("text/plain"),
        ),
        raw(
            "no content type",
            None,
            "{}",
            415,
            None,
            Some("Content-Type"),
        ),
        raw(
            "NDJSON malformed line",
            ND,
            &format!("{HEADER}{{\"prompt\":\"a\"}}\n{{\"prompt\":\n"),
            400,
            None,
            Some("line 3"),
        ),
        raw(
            "NDJSON invalid prompt",
            ND,
            &format!("{HEADER}{{\"prompt\":\"a\"}}\n{{\"prompt\":\"\"}}\n"),
            422,
            Some("/jobs/1/prompt"),
            Some("line 3"),
        ),
        raw(
            "NDJSON unknown field",
            ND,
            &format!("{HEADER}{{\"prompt\":\"a\",\"x\":1}}\n"),
            422,
            Some("/jobs/0"),
            Some("line 2"),
        ),
        raw(
            "NDJSON header with prompts",
            ND,
            "{\"engine\":\"test-pattern\",\"prompts\":[\"a\"]}\n",
            422,
            Some("/prompts"),
            Some("line 1"),
        ),
        raw(
            "NDJSON header only",
            ND,
            HEADER,
            422,
            Some("/jobs"),
            Some("no job lines"),
        ),
        raw("NDJSON empty", ND, "\n\n", 400, None, Some("empty")),
        raw(
            "NDJSON bad header",
            ND,
            "{\"engine\":\"nope\"}\n{\"prompt\":\"a\"}\n",
            422,
            Some("/engine"),
            None,
        ),
        raw(
            "NDJSON too many lines",
            ND,
            &format!("{HEADER}{}", "{\"prompt\":\"a\"}\n".repeat(6)),
            422,
            Some("/jobs"),
            Some("at most 5"),
        ),
    ]
}

/// Tokens, headers and GET requests.
fn request_cases() -> Vec<Case> {
    vec![
        Case {
            auth: Auth::None,
            ..case("no token", tp(json!({})), 401, None, None)
        },
        Case {
            auth: Auth::Wrong,
            ..case("wrong token", tp(json!({})), 401, None, None)
        },
        Case {
            headers: vec![("idempotency-key", "k".repeat(201))],
            ..case(
                "over-long idempotency key",
                tp(json!({})),
                400,
                None,
                Some("Idempotency-Key"),
            )
        },
        get("limit zero", "/v1/batches?limit=0", 400),
        get("limit not a number", "/v1/batches?limit=ten", 400),
        get("cursor not ours", "/v1/batches?cursor=abc", 400),
        get("unknown query parameter", "/v1/batches?sort=asc", 400),
        get("malformed batch id", "/v1/batches/not-an-id", 404),
        get(
            "unknown job",
            "/v1/jobs/0196f9a4-0000-7000-8000-000000000000",
            404,
        ),
        get("unknown route", "/v1/nothing", 404),
    ]
}

fn cases() -> Vec<Case> {
    [
        syntax_cases(),
        prompt_cases(),
        param_cases(),
        batch_cases(),
        stream_cases(),
        request_cases(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[tokio::test]
async fn bad_requests_get_4xx_and_store_nothing() {
    let app = TestApp::spawn_with(|s| {
        s.max_prompt_chars = 50;
        s.max_batch_jobs = 5;
        s.max_body_bytes = 4096;
    })
    .await;
    // One good batch, so "unchanged" is not trivially "empty".
    let good = app.submit(2, json!({})).await;
    app.wait_outbox_empty().await;
    let before = app.table_counts().await;
    let cases = cases();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let bid = good.id;
    let mut extra = vec![
        get("unknown job state filter", "", 400),
        get("job cursor not ours", "", 400),
    ];
    extra[0].path = Box::leak(format!("/v1/batches/{bid}/jobs?state=done").into_boxed_str());
    extra[1].path = Box::leak(format!("/v1/batches/{bid}/jobs?cursor=-4").into_boxed_str());
    let mut names = std::collections::BTreeSet::new();
    for c in cases.into_iter().chain(extra) {
        assert!(names.insert(c.name), "duplicate case {}", c.name);
        let mut req = match c.method {
            "GET" => app.http.get(app.url(c.path)),
            _ => app.http.post(app.url(c.path)).body(c.body.clone()),
        };
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        for (k, v) in &c.headers {
            req = req.header(*k, v);
        }
        req = match c.auth {
            Auth::Good => req.bearer_auth(&app.token),
            Auth::Wrong => req.bearer_auth("kiln_00ff"),
            Auth::None => req,
        };
        let (status, body, headers) = app.send(req).await;
        assert_eq!(status.as_u16(), c.status, "{}: {body:#}", c.name);
        assert_eq!(
            headers.get("content-type").unwrap(),
            "application/problem+json",
            "{}",
            c.name
        );
        for field in ["type", "title", "status", "detail"] {
            assert!(
                body.get(field).is_some(),
                "{}: no {field} in {body}",
                c.name
            );
        }
        let problem: Problem = decode(&body);
        assert_eq!(problem.status, c.status, "{}", c.name);
        if let Some(p) = c.pointer {
            let got = &problem
                .errors
                .first()
                .unwrap_or_else(|| panic!("{}: no errors in {body:#}", c.name))
                .pointer;
            assert!(
                got.starts_with(p),
                "{}: pointer {got} is not under {p}",
                c.name
            );
        }
        if let Some(text) = c.says {
            let all = std::iter::once(problem.detail.as_str())
                .chain(problem.errors.iter().map(|e| e.message.as_str()))
                .collect::<Vec<_>>()
                .join(" ");
            assert!(all.contains(text), "{}: {text:?} not in {all}", c.name);
        }
        assert_eq!(
            app.table_counts().await,
            before,
            "{} changed the tables",
            c.name
        );
    }
    assert!(names.len() >= 30);
}

#[tokio::test]
async fn many_invalid_jobs_are_all_reported_up_to_a_cap() {
    let app = TestApp::spawn().await;
    let prompts: Vec<String> = (0..300)
        .map(|i| {
            if i % 2 == 0 {
                String::new()
            } else {
                format!("ok {i}")
            }
        })
        .collect();
    let (s, p) = app
        .post(
            "/v1/batches",
            &json!({"engine": "test-pattern", "prompts": prompts}),
        )
        .await;
    assert_eq!(s.as_u16(), 422);
    let problem: Problem = decode(&p);
    let errors = &problem.errors;
    assert_eq!(errors.len(), 100);
    assert_eq!(errors[0].pointer, "/prompts/0");
    assert_eq!(errors[1].pointer, "/prompts/2");
    assert!(problem.detail.contains("150 fields are invalid"), "{p}");
    assert_eq!(app.table_counts().await, (0, 0, 0, 0));
}

/// JSON Schema counts `64.0` as an integer, and so does intake: whole
/// parameters written with a zero fraction are taken as whole numbers.
#[tokio::test]
async fn whole_numbers_with_a_zero_fraction_are_accepted() {
    let app = TestApp::spawn().await;
    let batch = app
        .create(&json!({
            "engine": "test-pattern",
            "params": {"width": 64.0, "steps": 2.0, "seed": 7.0},
            "prompts": ["a red fox"],
        }))
        .await;
    let ids = app.job_ids(batch.id).await;
    let job = app.job(ids[0]).await;
    assert_eq!(
        (job.params.width, job.params.steps, job.params.seed),
        (Some(64), Some(2), Some(7))
    );
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408_within_the_body_timeout() {
    let app = TestApp::spawn_with(|s| s.body_timeout = std::time::Duration::from_millis(500)).await;
    // A few bytes, then nothing more, the connection left open.
    let first = futures::stream::once(async {
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(br#"{"engine":"test-pattern","#))
    });
    let stalled = futures::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
    let body = reqwest::Body::wrap_stream(futures::StreamExt::chain(first, stalled));
    let started = std::time::Instant::now();
    let resp = app
        .http
        .post(app.url("/v1/batches"))
        .bearer_auth(&app.token)
        .header("content-type", "application/json")
        .timeout(std::time::Duration::from_secs(10))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 408);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let problem: Problem = decode(&resp.json::<Value>().await.unwrap());
    assert!(problem.detail.contains("KILN_BODY_TIMEOUT"), "{problem:?}");
    assert_eq!(app.table_counts().await, (0, 0, 0, 0), "nothing stored");
}
