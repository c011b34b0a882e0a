//! Worker events over the real broker: duplicates, stale attempts and
//! out-of-order events change nothing; retries, lease expiry, dead letters
//! and cancellation.

mod common;

use common::{next_control, FakeWorker, TestApp};
use kiln_protocol::api::{Counts, Progress};
use kiln_protocol::message::ControlCommand;
use kiln_protocol::topology::{DEAD_EXCHANGE, EVENTS_EXCHANGE};
use kiln_protocol::{EventKind, FailureKind, JobMessage, JobState, ResultImage};
use lapin::options::{BasicNackOptions, BasicRejectOptions};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

fn result(tenant: &str, batch: Uuid, job: Uuid, rank: u32, seed: u64) -> ResultImage {
    ResultImage {
        rank,
        score: Some(30.0 - rank as f32),
        seed,
        width: 64,
        height: 64,
        key: kiln_protocol::keys::image_key(tenant, batch, job, rank),
    }
}

/// Waits until the dispatcher has ignored `n` events in all.
async fn ignored(app: &TestApp, n: f64) {
    app.wait_metric("kiln_events_ignored_total", n).await;
}

/// Waits until the dispatcher has rejected `n` events in all (their
/// attempt token was wrong or missing).
async fn rejected(app: &TestApp, n: f64) {
    app.wait_metric("kiln_events_rejected_total", n).await;
}

#[tokio::test]
async fn duplicate_stale_and_out_of_order_events_change_nothing() {
    let app = TestApp::spawn().await;
    let w = app.worker().await;
    let batch = app.submit(3, json!({})).await;
    let mut jobs = Vec::new();
    for _ in 0..3 {
        jobs.push(w.next_job().await);
    }
    jobs.sort_by_key(|j| j.spec.prompt().text().to_string());
    let (a, b, c) = (&jobs[0], &jobs[1], &jobs[2]);
    let bid = batch.id;
    assert_eq!(a.batch_id, bid);
    assert_eq!(a.tenant, app.tenant);

    // Each step counts on the ignored events of the steps before it.
    the_first_success_wins(&app, &w, bid, a).await;
    a_retry_makes_the_earlier_attempt_stale(&app, &w, bid, b).await;
    a_result_outside_the_prefix_fails_the_job(&app, &w, bid, c).await;

    // Unknown jobs (which no token can match) and garbage.
    w.emit(Uuid::now_v7(), 1, EventKind::Started).await;
    w.publish_raw(EVENTS_EXCHANGE, "job.started", b"not json")
        .await;
    app.wait_metric("kiln_events_undecodable_total", 1.0).await;
    rejected(&app, 2.0).await;
    assert_eq!(app.metric("kiln_events_ignored_total").await, 7.0);

    let batch = app.batch(bid).await;
    assert_eq!(
        batch.counts,
        Counts {
            queued: 0,
            running: 0,
            succeeded: 2,
            failed: 1,
            cancelled: 0
        }
    );
    assert_eq!(batch.state, JobState::Failed);
    assert_eq!(batch.progress, 1.0);
    assert!(batch.finished_at.is_some());
}

/// Job A: started, a duplicate start, progress, a late smaller progress,
/// success; then a second success, a failure and a start (5 ignored), and
/// a start of an attempt that was never made (no token for it: rejected).
async fn the_first_success_wins(app: &TestApp, w: &FakeWorker, bid: Uuid, a: &JobMessage) {
    w.emit(a.job_id, 1, EventKind::Started).await;
    let ja = app.wait_state(a.job_id, JobState::Running).await;
    assert_eq!(ja.worker.as_deref(), Some(w.name.as_str()));
    assert!(ja.started_at.is_some());
    w.emit(a.job_id, 1, EventKind::Started).await;
    ignored(app, 1.0).await;
    w.emit(a.job_id, 1, EventKind::Progress { step: 5, total: 10 })
        .await;
    app.wait_job(a.job_id, "progress 5", |j| {
        j.progress == Some(Progress { step: 5, total: 10 })
    })
    .await;
    w.emit(a.job_id, 1, EventKind::Progress { step: 3, total: 10 })
        .await;
    ignored(app, 2.0).await;
    assert_eq!(app.job(a.job_id).await.progress.map(|p| p.step), Some(5));
    let first = vec![
        result(&app.tenant, bid, a.job_id, 0, 11),
        result(&app.tenant, bid, a.job_id, 1, 12),
    ];
    w.emit(a.job_id, 1, EventKind::Succeeded { results: first })
        .await;
    let ja = app.wait_state(a.job_id, JobState::Succeeded).await;
    let results = &ja.results;
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].rank, 0);
    assert_eq!(results[0].seed, 11);
    assert_eq!(results[0].score, Some(30.0));
    assert_eq!(
        results[0].key,
        kiln_protocol::keys::image_key(&app.tenant, bid, a.job_id, 0)
    );
    let url = results[0].url.as_deref().expect("a presigned URL");
    assert!(
        url.contains("X-Amz-Expires=3600") && url.contains("X-Amz-Signature"),
        "{url}"
    );
    assert!(ja.finished_at.is_some());
    w.emit(
        a.job_id,
        1,
        EventKind::Succeeded {
            results: vec![result(&app.tenant, bid, a.job_id, 0, 99)],
        },
    )
    .await;
    w.emit(
        a.job_id,
        1,
        EventKind::Failed {
            kind: FailureKind::Permanent,
            reason: "late".into(),
        },
    )
    .await;
    w.emit(a.job_id, 1, EventKind::Started).await;
    w.emit(a.job_id, 2, EventKind::Started).await;
    ignored(app, 5.0).await;
    rejected(app, 1.0).await;
    let again = app.job(a.job_id).await;
    assert_eq!(again.state, JobState::Succeeded);
    assert_eq!(again.results[0].seed, 11, "the first success wins");
    assert!(again.error.is_none());
}

/// Job B: a retryable failure queues attempt 2, which is published again;
/// events of attempt 1 are stale from then on (2 ignored).
async fn a_retry_makes_the_earlier_attempt_stale(
    app: &TestApp,
    w: &FakeWorker,
    bid: Uuid,
    b: &JobMessage,
) {
    w.emit(b.job_id, 1, EventKind::Started).await;
    w.emit(
        b.job_id,
        1,
        EventKind::Failed {
            kind: FailureKind::Retryable,
            reason: "GPU fell off the bus".into(),
        },
    )
    .await;
    let jb = app
        .wait_job(b.job_id, "attempt 2", |j| j.attempt == 2)
        .await;
    assert_eq!(jb.state, JobState::Queued);
    assert!(jb
        .error
        .as_deref()
        .unwrap()
        .contains("GPU fell off the bus"));
    let retry = w.next_job().await;
    assert_eq!((retry.job_id, retry.attempt), (b.job_id, 2));
    assert_eq!(
        retry.spec, b.spec,
        "a retry renders the same prompt, parameters and seed"
    );
    w.emit(b.job_id, 1, EventKind::Started).await;
    w.emit(b.job_id, 1, EventKind::Succeeded { results: vec![] })
        .await;
    ignored(app, 7.0).await;
    assert_eq!(app.job(b.job_id).await.state, JobState::Queued);
    w.emit(b.job_id, 2, EventKind::Progress { step: 1, total: 1 })
        .await;
    app.wait_state(b.job_id, JobState::Running).await;
    w.emit(
        b.job_id,
        2,
        EventKind::Succeeded {
            results: vec![result(&app.tenant, bid, b.job_id, 0, 5)],
        },
    )
    .await;
    let jb = app.wait_state(b.job_id, JobState::Succeeded).await;
    assert_eq!(jb.attempt, 2);
}

/// Job C: a result key outside the job's prefix is refused.
async fn a_result_outside_the_prefix_fails_the_job(
    app: &TestApp,
    w: &FakeWorker,
    bid: Uuid,
    c: &JobMessage,
) {
    let foreign = ResultImage {
        key: "someone-else/x/y/0.png".into(),
        ..result(&app.tenant, bid, c.job_id, 0, 1)
    };
    w.emit(
        c.job_id,
        1,
        EventKind::Succeeded {
            results: vec![foreign],
        },
    )
    .await;
    let jc = app.wait_state(c.job_id, JobState::Failed).await;
    assert!(
        jc.error
            .as_deref()
            .unwrap()
            .contains("outside the job's prefix"),
        "{jc:?}"
    );
    assert!(jc.results.is_empty(), "{jc:?}");
}

/// Only the worker handed an attempt speaks for it: an event whose token is
/// wrong, missing or another job's changes nothing and is counted, and the
/// genuine events still apply.
#[tokio::test]
async fn events_without_their_attempt_token_change_nothing() {
    let app = TestApp::spawn().await;
    let w = app.worker().await;
    app.submit(2, json!({})).await;
    let (a, b) = (w.next_job().await, w.next_job().await);
    assert_eq!(a.token.len(), 64, "a 256-bit token in hex: {}", a.token);
    assert_ne!(a.token, b.token);
    let id = a.job_id;
    let done = || EventKind::Succeeded {
        results: vec![result(&app.tenant, a.batch_id, id, 0, 1)],
    };
    let mut wrong = a.token.clone();
    wrong.replace_range(..1, if wrong.starts_with('0') { "1" } else { "0" });

    w.emit_with_token(id, 1, &wrong, EventKind::Started).await;
    w.emit_with_token(id, 1, "", done()).await;
    w.emit_with_token(id, 1, &b.token, EventKind::Progress { step: 1, total: 2 })
        .await;
    let failed = EventKind::Failed {
        kind: FailureKind::Permanent,
        reason: "forged".into(),
    };
    w.emit_with_token(id, 1, &wrong, failed).await;
    rejected(&app, 4.0).await;
    let j = app.job(id).await;
    assert_eq!(
        (j.state, j.progress, j.worker.as_deref(), j.error.as_deref()),
        (JobState::Queued, None, None, None)
    );
    assert_eq!(app.metric("kiln_events_applied_total").await, 0.0);
    assert_eq!(app.metric("kiln_events_ignored_total").await, 0.0);

    // The genuine worker's events apply; forged ones still do not.
    w.emit(id, 1, EventKind::Started).await;
    app.wait_state(id, JobState::Running).await;
    w.emit_with_token(id, 1, &wrong, done()).await;
    rejected(&app, 5.0).await;
    assert_eq!(app.job(id).await.state, JobState::Running);
    w.emit(id, 1, done()).await;
    let j = app.wait_state(id, JobState::Succeeded).await;
    assert_eq!(j.results.len(), 1);
    assert_eq!(app.metric("kiln_events_rejected_total").await, 5.0);

    // An attempt published before tokens existed (no token kept for it)
    // takes events without one, and only those.
    sqlx::query("DELETE FROM attempt_tokens WHERE job_id = $1")
        .bind(b.job_id)
        .execute(&app.db)
        .await
        .unwrap();
    w.emit_with_token(b.job_id, 1, &b.token, EventKind::Started)
        .await;
    rejected(&app, 6.0).await;
    w.emit_with_token(b.job_id, 1, "", EventKind::Started).await;
    app.wait_state(b.job_id, JobState::Running).await;
}

#[tokio::test]
async fn permanent_failures_and_exhausted_retries_fail() {
    let app = TestApp::spawn().await;
    let w = app.worker().await;
    app.submit(2, json!({})).await;
    let (j1, j2) = (w.next_job().await, w.next_job().await);
    w.emit(
        j1.job_id,
        1,
        EventKind::Failed {
            kind: FailureKind::Permanent,
            reason: "unsupported input".into(),
        },
    )
    .await;
    let f = app.wait_state(j1.job_id, JobState::Failed).await;
    assert_eq!(f.error.as_deref(), Some("unsupported input"));
    assert_eq!(f.attempt, 1);

    for attempt in 1..=3 {
        if attempt > 1 {
            let m = w.next_job().await;
            assert_eq!((m.job_id, m.attempt), (j2.job_id, attempt));
        }
        w.emit(j2.job_id, attempt, EventKind::Started).await;
        w.emit(
            j2.job_id,
            attempt,
            EventKind::Failed {
                kind: FailureKind::Retryable,
                reason: "out of memory".into(),
            },
        )
        .await;
        app.wait_job(j2.job_id, "next attempt or failure", |j| {
            j.attempt > attempt || j.state == JobState::Failed
        })
        .await;
    }
    let f = app.wait_state(j2.job_id, JobState::Failed).await;
    assert_eq!(f.attempt, 3);
    let err = f.error.as_deref().unwrap();
    assert!(
        err.contains("out of memory") && err.contains("no attempts left"),
        "{err}"
    );
    assert!(
        w.drain(Duration::from_millis(200)).await.is_empty(),
        "no fourth attempt"
    );
}

#[tokio::test]
async fn lapsed_leases_retry_then_fail_at_max_attempts() {
    let app = TestApp::spawn_with(|s| s.lease = Duration::from_millis(300)).await;
    let w = app.worker().await;
    app.submit(2, json!({})).await;
    let (lost, alive) = (w.next_job().await, w.next_job().await);
    let (lost_id, alive_id) = (lost.job_id, alive.job_id);
    w.emit(alive.job_id, 1, EventKind::Started).await;

    // `alive` keeps heartbeating through every lapse of `lost`.
    for attempt in 1..=3u32 {
        if attempt > 1 {
            let m = w.next_job().await;
            assert_eq!((m.job_id, m.attempt), (lost.job_id, attempt));
        }
        w.emit(lost.job_id, attempt, EventKind::Started).await;
        app.wait_job(lost_id, &format!("attempt {attempt} to run"), |j| {
            j.state == JobState::Running && j.attempt == attempt
        })
        .await;
        let deadline = tokio::time::Instant::now() + common::WAIT;
        loop {
            w.emit(alive.job_id, 1, EventKind::Heartbeat).await;
            let j = app.job(lost_id).await;
            if j.attempt > attempt || j.state == JobState::Failed {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the lease never lapsed: {j:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let f = app.wait_state(lost_id, JobState::Failed).await;
    assert_eq!(f.attempt, 3);
    let err = f.error.as_deref().unwrap();
    assert!(
        err.contains("lease expired") && err.contains("no attempts left"),
        "{err}"
    );
    let a = app.job(alive_id).await;
    assert_eq!(
        a.state,
        JobState::Running,
        "heartbeats kept the lease: {a:?}"
    );
    assert_eq!(a.attempt, 1);
    assert!(app.metric("kiln_leases_expired_total").await >= 3.0);
}

#[tokio::test]
async fn dead_letters_fail_poison_and_retry_what_hit_the_delivery_limit() {
    let app = TestApp::spawn().await;
    let w = app.worker().await;
    app.submit(2, json!({})).await;

    // A worker rejects a poison message.
    let d = w.next_delivery().await;
    let poison = kiln_protocol::JobMessage::decode(&d.delivery.data).unwrap();
    d.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let f = app.wait_state(poison.job_id, JobState::Failed).await;
    assert!(f.error.as_deref().unwrap().contains("rejected"), "{f:?}");

    // A delivery that keeps coming back (drains, restarts, broker outages)
    // reaches the delivery limit. That is not the job's failure: it is
    // retried with a new attempt, and fails only when none are left.
    let mut other = None;
    for attempt in 1..=3 {
        for _ in 0..=kiln_protocol::topology::DELIVERY_LIMIT {
            let d = w.next_delivery().await;
            let m = kiln_protocol::JobMessage::decode(&d.delivery.data).unwrap();
            other.get_or_insert(m.job_id);
            assert_eq!((Some(m.job_id), m.attempt), (other, attempt));
            d.delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        if attempt < 3 {
            let j = app
                .wait_job(other.unwrap(), "a new attempt", |j| j.attempt > attempt)
                .await;
            assert_eq!(j.state, JobState::Queued, "{j:?}");
        }
    }
    let f = app.wait_state(other.unwrap(), JobState::Failed).await;
    assert_eq!(f.attempt, 3);
    let err = f.error.as_deref().unwrap();
    assert!(
        err.contains("delivery limit") && err.contains("no attempts left"),
        "{err}"
    );

    // Something that is not a job message is counted and dropped.
    w.publish_raw(DEAD_EXCHANGE, "", b"\x00garbage").await;
    app.wait_metric("kiln_dead_letters_undecodable_total", 1.0)
        .await;
    assert_eq!(app.metric("kiln_dead_letters_total").await, 4.0);
}

#[tokio::test]
async fn cancels_are_broadcast_and_repeated_to_late_starters() {
    let app = TestApp::spawn().await;
    let w = app.worker().await;
    let mut control = w.watch_control().await;
    let bid = app.submit(3, json!({})).await.id;
    let (j1, j2, j3) = (w.next_job().await, w.next_job().await, w.next_job().await);

    // Running job: cancelled at once, and the workers are told.
    w.emit(j1.job_id, 1, EventKind::Started).await;
    app.wait_state(j1.job_id, JobState::Running).await;
    let c = app.cancel_job(j1.job_id).await;
    assert!(c.cancelled, "{c:?}");
    assert_eq!(c.job.state, JobState::Cancelled);
    let msg = next_control(&mut control).await;
    assert_eq!(
        msg.command,
        ControlCommand::Cancel {
            job_ids: vec![j1.job_id]
        }
    );
    // The worker stops and reports it; nothing changes.
    w.emit(
        j1.job_id,
        1,
        EventKind::Failed {
            kind: FailureKind::Cancelled,
            reason: "cancelled".into(),
        },
    )
    .await;
    app.wait_metric("kiln_events_ignored_total", 1.0).await;

    // Finished job: unchanged, and the answer says so.
    w.emit(j2.job_id, 1, EventKind::Succeeded { results: vec![] })
        .await;
    app.wait_state(j2.job_id, JobState::Succeeded).await;
    let c = app.cancel_job(j2.job_id).await;
    assert!(!c.cancelled, "{c:?}");
    assert_eq!(c.job.state, JobState::Succeeded);
    assert!(c.message.contains("already finished (succeeded)"), "{c:?}");

    // A queued job cancelled with its batch, whose worker missed the
    // broadcast and starts it anyway: the cancel is repeated.
    let c = app.cancel_batch(bid).await;
    assert_eq!(c.cancelled, 1, "{c:?}");
    assert_eq!(c.already_finished, 2);
    assert_eq!(
        next_control(&mut control).await.command,
        ControlCommand::Cancel {
            job_ids: vec![j3.job_id]
        }
    );
    w.emit(j3.job_id, 1, EventKind::Started).await;
    assert_eq!(
        next_control(&mut control).await.command,
        ControlCommand::Cancel {
            job_ids: vec![j3.job_id]
        }
    );
    assert_eq!(app.job(j3.job_id).await.state, JobState::Cancelled);
    let b = app.batch(bid).await;
    assert_eq!(b.state, JobState::Cancelled);
    assert_eq!(
        b.counts,
        Counts {
            queued: 0,
            running: 0,
            succeeded: 1,
            failed: 0,
            cancelled: 2
        }
    );
}

/// An attempt the job has moved past learns it at its next `started`,
/// progress or heartbeat: the dispatcher answers `stop_attempt` for that
/// attempt only, and the same for a run of a job that has already ended.
#[tokio::test]
async fn stale_attempts_are_told_to_stop() {
    let app = TestApp::spawn().await;
    let w = app.worker().await;
    let mut control = w.watch_control().await;
    let bid = app.submit(1, json!({})).await.id;
    let first = w.next_job().await;
    let id = first.job_id;
    w.emit(id, 1, EventKind::Started).await;
    w.emit(
        id,
        1,
        EventKind::Failed {
            kind: FailureKind::Retryable,
            reason: "lease lapsed".into(),
        },
    )
    .await;
    let second = w.next_job().await;
    assert_eq!((second.job_id, second.attempt), (id, 2));
    w.emit(id, 2, EventKind::Started).await;
    app.wait_state(id, JobState::Running).await;

    // A repeated `started` of the attempt that counts is not stale; the
    // old attempt is, and only it is told to stop.
    w.emit(id, 2, EventKind::Started).await;
    w.emit(id, 1, EventKind::Started).await;
    let stop = next_control(&mut control).await;
    assert_eq!(
        stop.command,
        ControlCommand::StopAttempt {
            job_id: id,
            attempt: 1
        }
    );

    // A run of a job that has ended (a redelivery after a lost ack).
    w.emit(
        id,
        2,
        EventKind::Succeeded {
            results: vec![result(&app.tenant, bid, id, 0, 5)],
        },
    )
    .await;
    app.wait_state(id, JobState::Succeeded).await;
    w.emit(id, 2, EventKind::Heartbeat).await;
    let stop = next_control(&mut control).await;
    assert_eq!(
        stop.command,
        ControlCommand::StopAttempt {
            job_id: id,
            attempt: 2
        }
    );
    assert_eq!(app.job(id).await.state, JobState::Succeeded);
    app.wait_metric("kiln_stale_attempts_total", 2.0).await;
    assert_eq!(app.metric("kiln_stale_attempts_total").await, 2.0);
}

/// A burst of events is applied in sets (one transaction and one ack per
/// set), and an event PostgreSQL refuses (a NUL in its worker name) is
/// handed back alone: every other event of its set is applied.
#[tokio::test]
async fn a_burst_of_events_is_applied_in_sets_and_a_refused_one_holds_no_other() {
    let db = kiln_tests::fresh_database().await.unwrap();
    let real = kiln_tests::fresh_vhost().await.unwrap();
    let proxy = common::Proxy::start(common::Proxy::target_of(&real)).await;
    proxy.open();
    let app = TestApp::spawn_on(&db, &proxy.url(&real), |_| {}).await;
    let w = FakeWorker::connect(&real).await;
    let batch = app.submit(60, json!({})).await;
    let mut ids = Vec::new();
    for _ in 0..60 {
        ids.push(w.next_job().await.job_id);
    }
    let sets_before = app.metric("kiln_event_sets_total").await;

    // Held by the stalled proxy, the deliveries reach the dispatcher at
    // once when it resumes.
    proxy.stall();
    for id in &ids[1..] {
        w.emit(*id, 1, EventKind::Started).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.resume();
    for id in &ids[1..] {
        app.wait_state(*id, JobState::Running).await;
    }
    let sets = app.metric("kiln_event_sets_total").await - sets_before;
    assert!(sets < 59.0 / 2.0, "{sets} sets for 59 events");

    // A refused event among them: the rest of its set is applied.
    proxy.stall();
    let poison = kiln_protocol::Event {
        worker: "bad\0worker".into(),
        ..w.event(ids[0], 1, EventKind::Started)
    };
    w.send(&poison).await;
    for id in &ids[1..] {
        w.emit(*id, 1, EventKind::Succeeded { results: vec![] })
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.resume();
    for id in &ids[1..] {
        app.wait_state(*id, JobState::Succeeded).await;
    }
    assert_eq!(app.job(ids[0]).await.state, JobState::Queued);
    assert_eq!(app.metric("kiln_events_applied_total").await, 118.0);
    assert_eq!(app.batch(batch.id).await.counts.succeeded, 59);
}

/// A job's result URLs are presigned once and reused while they keep at
/// least half their lifetime: reading the job again later (past the
/// second the signature's date holds) answers the same URL.
#[tokio::test]
async fn result_urls_are_reused_while_they_keep_half_their_lifetime() {
    let app = TestApp::spawn().await;
    let w = app.worker().await;
    let batch = app.submit(1, json!({})).await;
    let j = w.next_job().await;
    let results = vec![
        result(&app.tenant, batch.id, j.job_id, 0, 1),
        result(&app.tenant, batch.id, j.job_id, 1, 2),
    ];
    w.emit(j.job_id, 1, EventKind::Started).await;
    w.emit(j.job_id, 1, EventKind::Succeeded { results }).await;
    let first = app.wait_state(j.job_id, JobState::Succeeded).await;
    let urls = |job: &kiln_protocol::api::Job| -> Vec<String> {
        job.results
            .iter()
            .map(|r| r.url.clone().expect("a URL"))
            .collect()
    };
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = app.job(j.job_id).await;
    assert_eq!(urls(&again), urls(&first));
    let listed = app
        .get_ok::<kiln_protocol::api::JobPage>(&format!("/v1/batches/{}/jobs", batch.id))
        .await;
    assert_eq!(urls(&listed.items[0]), urls(&first));
    assert!(app.metric("kiln_presign_reused_total").await >= 4.0);
}
