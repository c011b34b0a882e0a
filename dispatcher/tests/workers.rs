//! The worker registry: workers' reports applied to `GET /v1/workers` (the
//! latest of each worker process kept, a silent one shown as lost, a
//! forgotten one gone), operator tokens only, and `POST /v1/workers/{id}/drain` sent on
//! the control exchange.

mod common;

use chrono::{DateTime, Duration as Span, Utc};
use common::{next_control, wait_until, TestApp};
use kiln_protocol::api::{Problem, Worker, WorkerDrain, WorkerList, WorkerState};
use kiln_protocol::message::ControlCommand;
use kiln_protocol::topology::EVENTS_EXCHANGE;
use kiln_protocol::{Engine, WorkerPhase, WorkerReport, PROTOCOL_VERSION};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

/// When the reporting processes started.
fn start() -> DateTime<Utc> {
    "2026-11-30T08:00:00Z".parse().unwrap()
}

/// Report `seq` of the process of `worker` that started at [`start`].
fn report(worker: &str, phase: WorkerPhase, seq: u64, interval_ms: u64) -> WorkerReport {
    WorkerReport {
        v: PROTOCOL_VERSION,
        worker: worker.into(),
        host: "gpu-node-7".into(),
        version: "9.9.9".into(),
        // An engine this dispatcher does not know is left out, not fatal.
        engines: vec![
            "dalle".into(),
            "test-pattern".into(),
            "some-future-engine".into(),
        ],
        devices: vec!["cuda:0".into(), "cuda:1".into()],
        slots: 2,
        capacity: 32,
        jobs_in_hand: 5,
        phase,
        started_at: start(),
        seq,
        at: Utc::now(),
        interval_ms,
    }
}

async fn operator(app: &TestApp) -> String {
    kiln_dispatcher::auth::issue_token(&app.db, "ops", true)
        .await
        .unwrap()
}

async fn workers(app: &TestApp, token: &str) -> Vec<Worker> {
    let (s, body) = app.get_as(token, "/v1/workers").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    common::decode::<WorkerList>(&body).items
}

async fn wait_for(app: &TestApp, token: &str, what: &str, ok: impl Fn(&[Worker]) -> bool) {
    wait_until(what, || async { ok(&workers(app, token).await) }).await;
}

fn find<'a>(list: &'a [Worker], id: &str) -> Option<&'a Worker> {
    list.iter().find(|w| w.id == id)
}

#[tokio::test]
async fn reports_make_the_registry_and_only_operators_read_it() {
    let app = TestApp::spawn().await;
    let ops = operator(&app).await;
    assert!(workers(&app, &ops).await.is_empty());

    // A tenant's token is not enough, and no token is refused first.
    let (s, body) = app.get("/v1/workers").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let problem: Problem = common::decode(&body);
    assert_eq!(problem.kind, "urn:kiln:problem:forbidden");
    assert!(problem.detail.contains("--operator"), "{problem:?}");
    let (s, _, _) = app.send(app.http.get(app.url("/v1/workers"))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let w = app.worker().await;
    let key = WorkerReport::ROUTING_KEY;
    let r = report("w-1", WorkerPhase::Ready, 1, 60_000);
    w.publish_raw(EVENTS_EXCHANGE, key, &r.encode()).await;
    // Not a report: dropped and counted, and the reports after it still apply.
    w.publish_raw(EVENTS_EXCHANGE, key, b"{\"v\":1,\"worker\":3}")
        .await;
    // A report PostgreSQL refuses (a count past its integer) is dropped
    // alone; the others beside it apply.
    let huge = WorkerReport {
        jobs_in_hand: u32::MAX,
        ..report("w-bad", WorkerPhase::Ready, 1, 60_000)
    };
    w.publish_raw(EVENTS_EXCHANGE, key, &huge.encode()).await;
    let quick = report("w-2", WorkerPhase::Ready, 1, 200);
    w.publish_raw(EVENTS_EXCHANGE, key, &quick.encode()).await;
    wait_for(&app, &ops, "two workers", |l| l.len() == 2).await;
    app.wait_metric("kiln_worker_reports_dropped_total", 2.0)
        .await;
    assert!(find(&workers(&app, &ops).await, "w-bad").is_none());

    let list = workers(&app, &ops).await;
    let one = find(&list, "w-1").unwrap();
    assert_eq!(one.host, "gpu-node-7");
    assert_eq!(one.version, "9.9.9");
    assert_eq!(one.engines, vec![Engine::Dalle, Engine::TestPattern]);
    assert_eq!(one.devices, vec!["cuda:0", "cuda:1"]);
    assert_eq!((one.slots, one.capacity, one.jobs_in_hand), (2, 32, 5));
    assert_eq!(one.state, WorkerState::Ready);
    // PostgreSQL keeps microseconds, rounded.
    let off = (one.started_at - r.started_at).num_microseconds().unwrap();
    assert!(
        off.abs() <= 1,
        "{} against {}",
        one.started_at,
        r.started_at
    );
    assert!((Utc::now() - one.last_seen).num_seconds() < 10, "{one:?}");

    // A newer report replaces the one held; an older one (a late
    // redelivery) changes nothing: the marker behind it in the queue shows
    // it was read.
    let newer = WorkerReport {
        jobs_in_hand: 1,
        ..report("w-1", WorkerPhase::Draining, 3, 60_000)
    };
    w.publish_raw(EVENTS_EXCHANGE, key, &newer.encode()).await;
    wait_for(&app, &ops, "w-1 draining", |l| {
        find(l, "w-1").is_some_and(|w| w.state == WorkerState::Draining && w.jobs_in_hand == 1)
    })
    .await;
    let old = report("w-1", WorkerPhase::Stopped, 2, 60_000);
    w.publish_raw(EVENTS_EXCHANGE, key, &old.encode()).await;
    let marker = report("w-3", WorkerPhase::Ready, 1, 60_000);
    w.publish_raw(EVENTS_EXCHANGE, key, &marker.encode()).await;
    wait_for(&app, &ops, "w-3 listed", |l| find(l, "w-3").is_some()).await;
    let one = find(&workers(&app, &ops).await, "w-1").unwrap().clone();
    assert_eq!(
        (one.state, one.jobs_in_hand),
        (WorkerState::Draining, 1),
        "the older stopped report was not applied"
    );
    // A new process under the same id replaces it, whatever it counts.
    let restarted = WorkerReport {
        started_at: start() + Span::hours(1),
        ..report("w-1", WorkerPhase::Ready, 1, 60_000)
    };
    w.publish_raw(EVENTS_EXCHANGE, key, &restarted.encode())
        .await;
    wait_for(&app, &ops, "w-1 ready again", |l| {
        find(l, "w-1").is_some_and(|w| w.state == WorkerState::Ready && w.jobs_in_hand == 5)
    })
    .await;

    // w-2 reports every 200 ms and said nothing more: lost after three.
    wait_for(&app, &ops, "w-2 lost", |l| {
        find(l, "w-2").is_some_and(|w| w.state == WorkerState::Lost)
    })
    .await;
    // A stopped worker is stopped, never lost.
    let stopped = report("w-2", WorkerPhase::Stopped, 2, 200);
    w.publish_raw(EVENTS_EXCHANGE, key, &stopped.encode()).await;
    wait_for(&app, &ops, "w-2 stopped", |l| {
        find(l, "w-2").is_some_and(|w| w.state == WorkerState::Stopped)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        find(&workers(&app, &ops).await, "w-2").unwrap().state,
        WorkerState::Stopped
    );
}

#[tokio::test]
async fn a_drain_goes_to_the_named_worker_on_the_control_exchange() {
    let app = TestApp::spawn().await;
    let ops = operator(&app).await;
    let w = app.worker().await;
    let mut control = w.watch_control().await;
    let key = WorkerReport::ROUTING_KEY;
    for (id, phase, interval) in [
        ("gpu/a b", WorkerPhase::Ready, 60_000),
        ("gone", WorkerPhase::Stopped, 60_000),
        ("silent", WorkerPhase::Ready, 100),
    ] {
        let r = report(id, phase, 1, interval);
        w.publish_raw(EVENTS_EXCHANGE, key, &r.encode()).await;
    }
    wait_for(&app, &ops, "three workers, one lost", |l| {
        l.len() == 3 && find(l, "silent").is_some_and(|w| w.state == WorkerState::Lost)
    })
    .await;

    // Ids travel percent-encoded in the path.
    let path = "/v1/workers/gpu%2Fa%20b/drain";
    let (s, body) = app.post_as(&app.token, path, &json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a tenant may not drain: {body}");
    let (s, body) = app.post_as(&ops, path, &json!({})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let answer: WorkerDrain = common::decode(&body);
    assert_eq!(answer.worker.id, "gpu/a b");
    assert!(answer.message.contains("asked to drain"), "{answer:?}");
    let sent = next_control(&mut control).await;
    assert_eq!(
        sent.command,
        ControlCommand::Drain {
            worker: Some("gpu/a b".into())
        }
    );

    // Nothing is sent for a worker that is unknown, stopped or lost.
    for (id, status, says) in [
        ("nobody", StatusCode::NOT_FOUND, "worker not found"),
        ("gone", StatusCode::CONFLICT, "has stopped"),
        ("silent", StatusCode::CONFLICT, "is lost"),
    ] {
        let (s, body) = app
            .post_as(&ops, &format!("/v1/workers/{id}/drain"), &json!({}))
            .await;
        assert_eq!(s, status, "{id}: {body}");
        let problem: Problem = common::decode(&body);
        assert!(problem.detail.contains(says), "{id}: {problem:?}");
    }
    let more = tokio::time::timeout(Duration::from_millis(500), next_control(&mut control)).await;
    assert!(more.is_err(), "no other control message: {more:?}");
}

#[tokio::test]
async fn workers_not_heard_for_the_forget_setting_leave_the_registry() {
    let app = TestApp::spawn_with(|s| s.worker_forget_after = Duration::from_secs(1)).await;
    let ops = operator(&app).await;
    let w = app.worker().await;
    let key = WorkerReport::ROUTING_KEY;
    let first = report("old", WorkerPhase::Stopped, 1, 60_000);
    w.publish_raw(EVENTS_EXCHANGE, key, &first.encode()).await;
    wait_for(&app, &ops, "old listed", |l| find(l, "old").is_some()).await;
    // Not listed once forgotten, though no report came to delete it.
    wait_for(&app, &ops, "old forgotten", |l| l.is_empty()).await;
    let (s, _) = app.post_as(&ops, "/v1/workers/old/drain", &json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The next report deletes it.
    let second = report("new", WorkerPhase::Ready, 1, 60_000);
    w.publish_raw(EVENTS_EXCHANGE, key, &second.encode()).await;
    wait_for(&app, &ops, "only new listed", |l| {
        l.len() == 1 && find(l, "new").is_some()
    })
    .await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM workers")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}
