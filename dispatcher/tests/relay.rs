//! The outbox relay: outages, exactly-once publication across replicas,
//! priorities through the bounded window, and cancels that never wait for
//! a broker that stopped confirming.

mod common;

use common::{behind_closed_proxy, FakeWorker, Proxy, TestApp};
use kiln_protocol::{EventKind, JobMessage, JobState, Priority};
use reqwest::StatusCode;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use uuid::Uuid;

fn ids(msgs: &[JobMessage]) -> BTreeSet<Uuid> {
    msgs.iter().map(|m| m.job_id).collect()
}

async fn all_job_ids(app: &TestApp) -> BTreeSet<Uuid> {
    sqlx::query_scalar::<_, Uuid>("SELECT id FROM jobs")
        .fetch_all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test]
async fn submits_succeed_while_the_broker_is_down_and_each_job_is_published_once() {
    let (app, proxy, w) = behind_closed_proxy().await;

    // Unreachable from the start.
    app.submit(25, json!({})).await;
    app.submit(25, json!({"priority": "low"})).await;
    let (s, ready, _) = app.send(app.http.get(app.url("/readyz"))).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready, json!({"postgres": true, "rabbitmq": false}));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.outbox_len().await, 50);
    assert!(w.drain(Duration::from_millis(100)).await.is_empty());

    proxy.open();
    app.wait_outbox_empty().await;
    let first = w.drain(Duration::from_millis(300)).await;
    assert_eq!(first.len(), 50, "every job once");
    assert_eq!(ids(&first), all_job_ids(&app).await);

    // The connection is cut while the dispatcher is connected.
    proxy.close();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b3 = app.submit(30, json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.outbox_len().await, 30);
    proxy.open();
    app.wait_outbox_empty().await;
    let second = w.drain(Duration::from_millis(300)).await;
    assert_eq!(second.len(), 30);
    assert!(second.iter().all(|m| m.batch_id == b3.id));
    assert_eq!(
        ids(&first).len() + ids(&second).len(),
        all_job_ids(&app).await.len()
    );

    // The event consumer reconnected too.
    let m = &second[0];
    w.emit(m.job_id, 1, EventKind::Started).await;
    app.wait_state(m.job_id, JobState::Running).await;
    let (s, _, _) = app.send(app.http.get(app.url("/readyz"))).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn two_dispatchers_on_one_database_publish_each_job_once() {
    let db = kiln_tests::fresh_database().await.unwrap();
    let vhost = kiln_tests::fresh_vhost().await.unwrap();
    let small = |s: &mut kiln_dispatcher::Settings| s.relay_batch = 7;
    let a = TestApp::spawn_on(&db, &vhost, small).await;
    let mut s = common::settings(&db, &vhost);
    small(&mut s);
    let (b_base, b_stop, _b) = common::start(s).await;
    let w = a.worker().await;

    let submits = (0..8).map(|i| {
        let base = if i % 2 == 0 { a.base.clone() } else { b_base.clone() };
        a.http
            .post(format!("{base}/v1/batches"))
            .bearer_auth(&a.token)
            .json(&json!({"engine": "test-pattern", "prompts": (0..40).map(|j| format!("p{i}-{j}")).collect::<Vec<_>>()}))
            .send()
    });
    for r in futures::future::join_all(submits).await {
        assert_eq!(r.unwrap().status(), StatusCode::CREATED);
    }
    a.wait_outbox_empty().await;
    let msgs = w.drain(Duration::from_millis(400)).await;
    let mut seen: BTreeMap<Uuid, usize> = BTreeMap::new();
    for m in &msgs {
        *seen.entry(m.job_id).or_default() += 1;
    }
    let dupes: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "published twice: {dupes:?}");
    assert_eq!(msgs.len(), 320);
    assert_eq!(ids(&msgs), all_job_ids(&a).await);
    b_stop.cancel();
}

#[tokio::test]
async fn a_high_priority_batch_overtakes_a_normal_backlog() {
    let window = 4;
    let app = TestApp::spawn_with(|s| {
        s.relay_window = window;
        s.relay_batch = window;
    })
    .await;
    let w = app.worker().await;
    let backlog = app.submit(40, json!({})).await;
    // The broker holds one window of the backlog, the rest waits in PostgreSQL.
    common::wait_until("one window published", || async {
        app.outbox_len().await == 40 - window
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        app.outbox_len().await,
        40 - window,
        "the window bounds the broker"
    );
    let high_id = app.submit(4, json!({"priority": "high"})).await.id;

    let mut order = Vec::new();
    for _ in 0..44 {
        let m = w.next_job().await;
        order.push(m.batch_id == high_id);
        w.emit(m.job_id, m.attempt, EventKind::Started).await;
        w.emit(
            m.job_id,
            m.attempt,
            EventKind::Succeeded { results: vec![] },
        )
        .await;
    }
    let positions: Vec<usize> = order
        .iter()
        .enumerate()
        .filter(|(_, h)| **h)
        .map(|(i, _)| i)
        .collect();
    println!("high-priority jobs started at positions {positions:?} of 44 (window {window})");
    assert_eq!(positions.len(), 4);
    assert!(
        *positions.last().unwrap() < 2 * window as usize + 4,
        "the high batch waited for more than a window: {positions:?}"
    );
    let b = app.batch(high_id).await;
    app.wait_job(app.job_ids(backlog.id).await[39], "last", |j| {
        j.state == JobState::Succeeded
    })
    .await;
    assert_eq!(b.priority, Priority::High);
}

#[tokio::test]
async fn cancels_do_not_wait_for_a_relay_whose_broker_stopped_confirming() {
    let db = kiln_tests::fresh_database().await.unwrap();
    let real = kiln_tests::fresh_vhost().await.unwrap();
    let proxy = Proxy::start(Proxy::target_of(&real)).await;
    proxy.open();
    let app = TestApp::spawn_on(&db, &proxy.url(&real), |s| {
        s.broker_timeout = Duration::from_secs(10);
    })
    .await;
    let w = FakeWorker::connect(&real).await;
    app.submit(1, json!({})).await;
    w.next_job().await; // the relay is connected

    proxy.stall();
    let batch = app.submit(3, json!({})).await;
    // The relay takes the rows and waits for confirms that do not come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cancelled = tokio::time::timeout(Duration::from_secs(2), app.cancel_batch(batch.id))
        .await
        .expect("the cancel waited for the relay's confirms");
    assert_eq!(cancelled.cancelled, 3, "{cancelled:?}");
    proxy.resume();
    for id in app.job_ids(batch.id).await {
        assert_eq!(app.job(id).await.state, JobState::Cancelled);
    }
    // The relay relays on once the broker answers again.
    // (The publishes held by the stall may reach the queue first.)
    let later = app.submit(1, json!({})).await;
    loop {
        let job = w.next_job().await;
        if job.batch_id == later.id {
            break;
        }
        assert_eq!(job.batch_id, batch.id, "{job:?}");
    }
}
