//! Worker events over the real broker: duplicates, stale attempts and
//! out-of-order events change nothing; retries, lease expiry, dead letters
//! and cancellation.

mod common;

use common::{next_control, TestApp};
use kiln_protocol::message::ControlCommand;
use kiln_protocol::topology::{DEAD_EXCHANGE, EVENTS_EXCHANGE};
use kiln_protocol::{EventKind, FailureKind, ResultImage};
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

#[tokio::test]
async fn duplicate_stale_and_out_of_order_events_change_nothing() {
    let app = TestApp::spawn().await;
    let w = app.worker().await;
    let batch = app.submit(3, json!({})).await;
    let mut jobs = Vec::new();
    for _ in 0..3 {
        jobs.push(w.next_job().await);
    }
    jobs.sort_by_key(|j| j.prompt.text().to_string());
    let (a, b, c) = (&jobs[0], &jobs[1], &jobs[2]);
    let bid: Uuid = batch["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(a.batch_id, bid);
    assert_eq!(a.tenant, app.tenant);
    let ignored = |n: f64| app.wait_metric("kiln_events_ignored_total", n);

    // Job A: started, a duplicate start, progress, a late smaller
    // progress, success; then a second success, a failure and a start.
    w.emit(a.job_id, 1, EventKind::Started).await;
    let ja = app.wait_state(&a.job_id.to_string(), "running").await;
    assert_eq!(ja["worker"], w.name.as_str());
    assert!(!ja["started_at"].is_null());
    w.emit(a.job_id, 1, EventKind::Started).await;
    ignored(1.0).await;
    w.emit(a.job_id, 1, EventKind::Progress { step: 5, total: 10 })
        .await;
    app.wait_job(&a.job_id.to_string(), "progress 5", |j| {
        j["progress"] == json!({"step": 5, "total": 10})
    })
    .await;
    w.emit(a.job_id, 1, EventKind::Progress { step: 3, total: 10 })
        .await;
    ignored(2.0).await;
    assert_eq!(app.job(&a.job_id.to_string()).await["progress"]["step"], 5);
    let first = vec![
        result(&app.tenant, bid, a.job_id, 0, 11),
        result(&app.tenant, bid, a.job_id, 1, 12),
    ];
    w.emit(a.job_id, 1, EventKind::Succeeded { results: first })
        .await;
    let ja = app.wait_state(&a.job_id.to_string(), "succeeded").await;
    let results = ja["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["rank"], 0);
    assert_eq!(results[0]["seed"], 11);
    assert_eq!(results[0]["score"], 30.0);
    assert_eq!(
        results[0]["key"],
        kiln_protocol::keys::image_key(&app.tenant, bid, a.job_id, 0)
    );
    let url = results[0]["url"].as_str().expect("a presigned URL");
    assert!(
        url.contains("X-Amz-Expires=3600") && url.contains("X-Amz-Signature"),
        "{url}"
    );
    assert!(!ja["finished_at"].is_null());
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
    ignored(6.0).await;
    let again = app.job(&a.job_id.to_string()).await;
    assert_eq!(again["state"], "succeeded");
    assert_eq!(again["results"][0]["seed"], 11, "the first success wins");
    assert!(again["error"].is_null());

    // Job B: a retryable failure queues attempt 2, which is published
    // again; events of attempt 1 are stale from then on.
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
        .wait_job(&b.job_id.to_string(), "attempt 2", |j| j["attempt"] == 2)
        .await;
    assert_eq!(jb["state"], "queued");
    assert!(jb["error"]
        .as_str()
        .unwrap()
        .contains("GPU fell off the bus"));
    let retry = w.next_job().await;
    assert_eq!((retry.job_id, retry.attempt), (b.job_id, 2));
    assert_eq!(
        retry.params, b.params,
        "a retry renders the same parameters and seed"
    );
    w.emit(b.job_id, 1, EventKind::Started).await;
    w.emit(b.job_id, 1, EventKind::Succeeded { results: vec![] })
        .await;
    ignored(8.0).await;
    assert_eq!(app.job(&b.job_id.to_string()).await["state"], "queued");
    w.emit(b.job_id, 2, EventKind::Progress { step: 1, total: 1 })
        .await;
    app.wait_state(&b.job_id.to_string(), "running").await;
    w.emit(
        b.job_id,
        2,
        EventKind::Succeeded {
            results: vec![result(&app.tenant, bid, b.job_id, 0, 5)],
        },
    )
    .await;
    let jb = app.wait_state(&b.job_id.to_string(), "succeeded").await;
    assert_eq!(jb["attempt"], 2);

    // Job C: a result key outside the job's prefix is refused.
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
    let jc = app.wait_state(&c.job_id.to_string(), "failed").await;
    assert!(
        jc["error"]
            .as_str()
            .unwrap()
            .contains("outside the job's prefix"),
        "{jc}"
    );
    assert_eq!(jc["results"], json!([]));

    // Unknown jobs and garbage.
    w.emit(Uuid::now_v7(), 1, EventKind::Started).await;
    w.publish_raw(EVENTS_EXCHANGE, "job.started", b"not json")
        .await;
    app.wait_metric("kiln_events_undecodable_total", 1.0).await;
    ignored(9.0).await;

    let (_, batch) = app.get(&format!("/v1/batches/{bid}")).await;
    assert_eq!(
        batch["counts"],
        json!({"queued": 0, "running": 0, "succeeded": 2, "failed": 1, "cancelled": 0})
    );
    assert_eq!(batch["state"], "failed");
    assert_eq!(batch["progress"], 1.0);
    assert!(!batch["finished_at"].is_null());
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
    let f = app.wait_state(&j1.job_id.to_string(), "failed").await;
    assert_eq!(f["error"], "unsupported input");
    assert_eq!(f["attempt"], 1);

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
        app.wait_job(&j2.job_id.to_string(), "next attempt or failure", |j| {
            j["attempt"].as_u64() > Some(attempt as u64) || j["state"] == "failed"
        })
        .await;
    }
    let f = app.wait_state(&j2.job_id.to_string(), "failed").await;
    assert_eq!(f["attempt"], 3);
    let err = f["error"].as_str().unwrap();
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
    let (lost_id, alive_id) = (lost.job_id.to_string(), alive.job_id.to_string());
    w.emit(alive.job_id, 1, EventKind::Started).await;

    // `alive` keeps heartbeating through every lapse of `lost`.
    for attempt in 1..=3u32 {
        if attempt > 1 {
            let m = w.next_job().await;
            assert_eq!((m.job_id, m.attempt), (lost.job_id, attempt));
        }
        w.emit(lost.job_id, attempt, EventKind::Started).await;
        app.wait_job(&lost_id, "running", |j| {
            j["state"] == "running" && j["attempt"] == attempt
        })
        .await;
        let deadline = tokio::time::Instant::now() + common::WAIT;
        loop {
            w.emit(alive.job_id, 1, EventKind::Heartbeat).await;
            let j = app.job(&lost_id).await;
            if j["attempt"].as_u64() > Some(attempt as u64) || j["state"] == "failed" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the lease never lapsed: {j}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let f = app.wait_state(&lost_id, "failed").await;
    assert_eq!(f["attempt"], 3);
    let err = f["error"].as_str().unwrap();
    assert!(
        err.contains("lease expired") && err.contains("no attempts left"),
        "{err}"
    );
    let a = app.job(&alive_id).await;
    assert_eq!(a["state"], "running", "heartbeats kept the lease: {a}");
    assert_eq!(a["attempt"], 1);
    assert!(app.metric("kiln_leases_expired_total").await >= 3.0);
}

#[tokio::test]
async fn dead_lettered_deliveries_end_failed() {
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
    let f = app.wait_state(&poison.job_id.to_string(), "failed").await;
    assert!(f["error"].as_str().unwrap().contains("rejected"), "{f}");

    // A delivery that keeps coming back reaches the delivery limit.
    let mut other = None;
    for _ in 0..=kiln_protocol::topology::DELIVERY_LIMIT {
        let d = w.next_delivery().await;
        let m = kiln_protocol::JobMessage::decode(&d.delivery.data).unwrap();
        other.get_or_insert(m.job_id);
        assert_eq!(Some(m.job_id), other);
        d.delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let f = app.wait_state(&other.unwrap().to_string(), "failed").await;
    assert!(
        f["error"].as_str().unwrap().contains("delivery limit"),
        "{f}"
    );

    // Something that is not a job message is counted and dropped.
    w.publish_raw(DEAD_EXCHANGE, "", b"\x00garbage").await;
    app.wait_metric("kiln_dead_letters_undecodable_total", 1.0)
        .await;
    assert_eq!(app.metric("kiln_dead_letters_total").await, 2.0);
}

#[tokio::test]
async fn cancels_are_broadcast_and_repeated_to_late_starters() {
    let app = TestApp::spawn().await;
    let w = app.worker().await;
    let mut control = w.watch_control().await;
    let batch = app.submit(3, json!({})).await;
    let bid = batch["id"].as_str().unwrap();
    let (j1, j2, j3) = (w.next_job().await, w.next_job().await, w.next_job().await);

    // Running job: cancelled at once, and the workers are told.
    w.emit(j1.job_id, 1, EventKind::Started).await;
    app.wait_state(&j1.job_id.to_string(), "running").await;
    let (s, c) = app
        .post(&format!("/v1/jobs/{}/cancel", j1.job_id), &json!({}))
        .await;
    assert_eq!(s.as_u16(), 200);
    assert_eq!(c["cancelled"], true);
    assert_eq!(c["job"]["state"], "cancelled");
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
    app.wait_state(&j2.job_id.to_string(), "succeeded").await;
    let (_, c) = app
        .post(&format!("/v1/jobs/{}/cancel", j2.job_id), &json!({}))
        .await;
    assert_eq!(c["cancelled"], false);
    assert_eq!(c["job"]["state"], "succeeded");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("already finished (succeeded)"),
        "{c}"
    );

    // A queued job cancelled with its batch, whose worker missed the
    // broadcast and starts it anyway: the cancel is repeated.
    let (_, c) = app
        .post(&format!("/v1/batches/{bid}/cancel"), &json!({}))
        .await;
    assert_eq!(c["cancelled"], 1);
    assert_eq!(c["already_finished"], 2);
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
    assert_eq!(app.job(&j3.job_id.to_string()).await["state"], "cancelled");
    let (_, b) = app.get(&format!("/v1/batches/{bid}")).await;
    assert_eq!(b["state"], "cancelled");
    assert_eq!(
        b["counts"],
        json!({"queued": 0, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 2})
    );
}
