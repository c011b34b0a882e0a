//! The rescuer: jobs whose messages the broker lost (a purged queue) are
//! published again with the same attempt and succeed; jobs waiting in a
//! healthy queue are left alone however long they wait; an attempt no
//! worker ever starts fails after the rescue limit.

mod common;

use common::{wait_until, TestApp};
use kiln_protocol::{topology, Engine, EventKind, JobState};
use lapin::options::QueuePurgeOptions;
use serde_json::json;
use std::time::Duration;

fn fast_rescue(s: &mut kiln_dispatcher::Settings) {
    s.rescue_after = Duration::from_millis(500);
    s.rescue_interval = Duration::from_millis(100);
    s.lease = Duration::from_millis(300);
}

async fn wait_for_depth(app: &TestApp, n: u32) {
    let q = topology::job_queue(Engine::TestPattern);
    // Until a loop of the dispatcher has declared the queue, it is missing.
    wait_until(&format!("{n} messages in {q}"), || async {
        kiln_tests::queue_depth(&app.amqp_url, &q)
            .await
            .is_ok_and(|depth| depth == n)
    })
    .await;
}

#[tokio::test]
async fn a_purged_queue_is_published_again_and_its_jobs_succeed() {
    let app = TestApp::spawn_with(fast_rescue).await;
    let w = app.worker().await;
    let batch = app.submit(5, json!({})).await;
    wait_for_depth(&app, 5).await;
    let q = topology::job_queue(Engine::TestPattern);
    w.ch.queue_purge(&q, QueuePurgeOptions::default())
        .await
        .unwrap();

    let mut seen = Vec::new();
    for _ in 0..5 {
        let job = w.next_job().await;
        assert_eq!(job.attempt, 1, "the same attempt, published again");
        w.emit(job.job_id, 1, EventKind::Started).await;
        w.emit(job.job_id, 1, EventKind::Succeeded { results: vec![] })
            .await;
        seen.push(job.job_id);
    }
    seen.sort();
    let mut ids = app.job_ids(batch.id).await;
    ids.sort();
    assert_eq!(seen, ids, "every purged job came back once");
    for id in ids {
        let job = app.wait_state(id, JobState::Succeeded).await;
        assert_eq!(job.attempt, 1);
    }
    assert_eq!(app.metric("kiln_jobs_rescued_total").await, 5.0);
    assert!(
        w.drain(Duration::from_millis(800)).await.is_empty(),
        "nothing published a third time"
    );
}

#[tokio::test]
async fn jobs_waiting_in_a_healthy_queue_are_left_alone() {
    let app = TestApp::spawn_with(fast_rescue).await;
    app.submit(3, json!({})).await;
    wait_for_depth(&app, 3).await;
    // Many rescue passes, each long after the jobs' publish.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.metric("kiln_jobs_rescued_total").await, 0.0);
    wait_for_depth(&app, 3).await;
}

#[tokio::test]
async fn an_attempt_no_worker_ever_starts_fails_after_the_rescue_limit() {
    let app = TestApp::spawn_with(|s| {
        fast_rescue(s);
        s.rescue_limit = 1;
    })
    .await;
    let w = app.worker().await;
    let batch = app.submit(1, json!({})).await;
    let id = app.job_ids(batch.id).await[0];
    // A consumer that swallows every delivery and never starts the job.
    for _ in 0..2 {
        let job = w.next_job().await;
        assert_eq!((job.job_id, job.attempt), (id, 1));
    }
    let job = app.wait_state(id, JobState::Failed).await;
    let error = job.error.unwrap_or_default();
    assert!(
        error.contains("published 2 times") && error.contains("kiln.jobs.test-pattern"),
        "{error}"
    );
    assert_eq!(app.metric("kiln_jobs_never_started_total").await, 1.0);
    assert!(w.drain(Duration::from_millis(800)).await.is_empty());
}

/// Publishing an attempt again adds a token and keeps the first: the
/// worker that got the first message may still hold it (waiting for a
/// slot), and speaks for the job as the one with the new message does.
#[tokio::test]
async fn a_republished_attempt_adds_a_token_and_both_count() {
    let app = TestApp::spawn_with(|s| {
        fast_rescue(s);
        // Time to speak for the job before a third publish, and a lease
        // that outlasts the test (the rescuer waits one after start).
        s.rescue_after = Duration::from_secs(2);
        s.lease = Duration::from_secs(3);
    })
    .await;
    let w = app.worker().await;
    let batch = app.submit(1, json!({})).await;
    let id = app.job_ids(batch.id).await[0];
    // Held, not started: the rescuer publishes the attempt again.
    let first = w.next_job().await;
    let again = w.next_job().await;
    assert_eq!((again.job_id, again.attempt), (id, 1));
    assert_ne!(first.token, again.token);

    w.emit_with_token(id, 1, "0000", EventKind::Started).await;
    app.wait_metric("kiln_events_rejected_total", 1.0).await;
    assert_eq!(app.job(id).await.state, JobState::Queued);
    w.emit_with_token(id, 1, &first.token, EventKind::Started)
        .await;
    app.wait_state(id, JobState::Running).await;
    w.emit_with_token(
        id,
        1,
        &again.token,
        EventKind::Succeeded { results: vec![] },
    )
    .await;
    app.wait_state(id, JobState::Succeeded).await;
    assert_eq!(app.metric("kiln_events_rejected_total").await, 1.0);
}
