//! Worker events applied in sets give what the same events applied one at
//! a time give: one script of events (starts, progress forwards and
//! backwards, heartbeats, duplicates, successes with results, a second
//! success, a result outside the job's prefix, permanent, cancelled and
//! retryable failures, stale attempts, an unknown job) is applied by one
//! dispatcher as a single burst (its deliveries held back by a stalled
//! proxy, then released at once) and by another with an event prefetch of
//! one (every event in a transaction of its own). Every job ends the same
//! on both: state, attempt, progress, error, worker and results.

mod common;

use common::{FakeWorker, Proxy, TestApp};
use kiln_protocol::{EventKind, FailureKind, ResultImage};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

const JOBS: usize = 8;

/// `(job index, attempt, event)`; index `JOBS` is a job that does not exist.
fn script(res: &dyn Fn(usize, u32) -> ResultImage) -> Vec<(usize, u32, EventKind)> {
    use EventKind::*;
    let failed = |kind, reason: &str| Failed {
        kind,
        reason: reason.into(),
    };
    let progress = |step| Progress { step, total: 4 };
    vec![
        // 0: a full run, with a duplicate start, progress out of order and a
        // second success that changes nothing.
        (0, 1, Started),
        (0, 1, Started),
        (0, 1, progress(2)),
        (0, 1, progress(1)),
        (0, 1, Heartbeat),
        (0, 1, progress(3)),
        (
            0,
            1,
            Succeeded {
                results: vec![res(0, 0), res(0, 1)],
            },
        ),
        (
            0,
            1,
            Succeeded {
                results: vec![res(0, 0)],
            },
        ),
        (0, 1, failed(FailureKind::Permanent, "too late")),
        // 1: success without a start.
        (
            1,
            1,
            Succeeded {
                results: vec![res(1, 0)],
            },
        ),
        // 2: a result outside its prefix fails it.
        (2, 1, Started),
        (
            2,
            1,
            Succeeded {
                results: vec![res(2, 0), res(7, 1)],
            },
        ),
        // 3: a permanent failure, then events of the ended attempt.
        (3, 1, Started),
        (3, 1, failed(FailureKind::Permanent, "bad prompt")),
        (3, 1, Heartbeat),
        (3, 1, progress(2)),
        // 4: the worker cancelled it.
        (4, 1, Started),
        (
            4,
            1,
            failed(FailureKind::Cancelled, "cancelled by the worker"),
        ),
        // 5: a retry; the first attempt's later events are stale, and the
        // second attempt's are rejected: it waits out its delay unpublished,
        // so no worker holds its token.
        (5, 1, Started),
        (5, 1, failed(FailureKind::Retryable, "out of memory")),
        (5, 1, progress(1)),
        (
            5,
            1,
            Succeeded {
                results: vec![res(5, 0)],
            },
        ),
        (5, 2, Started),
        (5, 2, progress(2)),
        // 6: events of an attempt never made (rejected), then a real
        // heartbeat.
        (6, 3, Started),
        (6, 1, Heartbeat),
        // 7: only progress.
        (7, 1, progress(1)),
        // An unknown job.
        (JOBS, 1, Started),
    ]
}

/// A job's state, attempt, progress step and total, error and worker.
type Row = (
    String,
    i32,
    Option<i32>,
    Option<i32>,
    Option<String>,
    Option<String>,
);

/// What a job ended as (its row and its results' ranks and keys), with the
/// run's own names taken out.
type Outcome = (Row, Vec<(i32, String)>);

async fn run(burst: bool) -> (Vec<Outcome>, f64) {
    let db = kiln_tests::fresh_database().await.unwrap();
    let real = kiln_tests::fresh_vhost().await.unwrap();
    let proxy = Proxy::start(Proxy::target_of(&real)).await;
    proxy.open();
    let app = TestApp::spawn_on(&db, &proxy.url(&real), |s| {
        if !burst {
            s.event_prefetch = 1;
        }
        s.retry_base = Duration::from_secs(3600);
    })
    .await;
    let w = FakeWorker::connect(&real).await;
    let batch = app.submit(JOBS, json!({})).await;
    let ids = app.job_ids(batch.id).await;
    w.drain(Duration::from_millis(300)).await;
    let prefix = |i: usize| kiln_protocol::keys::job_prefix(&app.tenant, batch.id, ids[i]);
    let res = |i: usize, rank: u32| ResultImage {
        rank,
        score: Some(1.0 + rank as f32),
        seed: 40 + rank as u64,
        width: 64,
        height: 64,
        key: format!("{}{rank}.png", prefix(i)),
    };
    let events = script(&res);
    let sets_before = app.metric("kiln_event_sets_total").await;
    if burst {
        proxy.stall();
    }
    for (i, attempt, kind) in &events {
        let id = ids.get(*i).copied().unwrap_or_else(Uuid::now_v7);
        w.emit(id, *attempt, kind.clone()).await;
    }
    if burst {
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.resume();
    }
    let n = events.len() as f64;
    common::wait_until("every event applied, ignored or rejected", || async {
        app.metric("kiln_events_applied_total").await
            + app.metric("kiln_events_ignored_total").await
            + app.metric("kiln_events_rejected_total").await
            >= n
    })
    .await;
    let sets = app.metric("kiln_event_sets_total").await - sets_before;

    let mut out = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (state, attempt, step, total, error, worker): Row = sqlx::query_as(
            "SELECT state, attempt, progress_step, progress_total, error, worker FROM jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
        let results: Vec<(i32, String)> =
            sqlx::query_as("SELECT rank, key FROM results WHERE job_id = $1 ORDER BY rank")
                .bind(id)
                .fetch_all(&app.db)
                .await
                .unwrap();
        let own = |s: String| s.replace(&w.name, "WORKER").replace(&prefix(i), "PREFIX/");
        let others =
            |s: String| (0..JOBS).fold(own(s), |s, k| s.replace(&prefix(k), &format!("JOB{k}/")));
        out.push((
            (
                state,
                attempt,
                step,
                total,
                error.map(others),
                worker.map(own),
            ),
            results.into_iter().map(|(r, k)| (r, own(k))).collect(),
        ));
    }
    (out, sets)
}

#[tokio::test]
async fn a_burst_applied_in_sets_ends_as_the_same_events_one_at_a_time() {
    let (alone, sets_alone) = run(false).await;
    let (burst, sets_burst) = run(true).await;
    let n = script(&|_, _| ResultImage {
        rank: 0,
        score: None,
        seed: 0,
        width: 1,
        height: 1,
        key: String::new(),
    })
    .len() as f64;
    println!("{n} events: {sets_alone} sets one at a time, {sets_burst} in a burst");
    assert_eq!(sets_alone, n, "prefetch 1 applies every event alone");
    assert!(sets_burst < n / 2.0, "{sets_burst} sets for a burst of {n}");
    for (i, (a, b)) in alone.iter().zip(&burst).enumerate() {
        assert_eq!(a, b, "job {i}: one at a time vs in a set");
    }
    // The script's outcomes themselves.
    let states: Vec<&str> = alone.iter().map(|o| o.0 .0.as_str()).collect();
    assert_eq!(
        states,
        [
            "succeeded",
            "succeeded",
            "failed",
            "failed",
            "cancelled",
            "queued",
            "running",
            "running"
        ]
    );
    assert_eq!(alone[0].0 .2, Some(4), "success completes the progress");
    assert_eq!(
        alone[0].1,
        [
            (0, "PREFIX/0.png".to_string()),
            (1, "PREFIX/1.png".to_string())
        ],
        "the first success's results are kept"
    );
    let refused = alone[2].0 .4.as_deref().unwrap();
    assert!(
        refused.contains("outside the job's prefix: JOB7/1.png"),
        "{refused}"
    );
    assert!(alone[2].1.is_empty());
    assert_eq!(
        (alone[5].0 .1, alone[5].0 .2),
        (2, None),
        "attempt 2 waits, unpublished: its events were rejected"
    );
    assert_eq!(alone[7].0 .2, Some(1));
}
