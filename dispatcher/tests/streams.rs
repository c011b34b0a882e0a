//! The event streams (SSE) against the real database and broker: every
//! terminal event once, resumed exactly with `Last-Event-ID` (on another
//! dispatcher too), progress, the tenant's stream, limits and bad ids.

mod common;

use common::{FakeWorker, TestApp, WAIT};
use eventsource_stream::{Event, EventStream, Eventsource};
use futures::stream::BoxStream;
use futures::StreamExt;
use kiln_protocol::api::stream::{BATCH_EVENT, JOB_EVENT, PROGRESS_EVENT, RESET_EVENT};
use kiln_protocol::api::{Batch, JobEvent, ProgressEvent};
use kiln_protocol::{EventKind, FailureKind, JobMessage, JobState, ResultImage};
use reqwest::StatusCode;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

type Sse = EventStream<BoxStream<'static, reqwest::Result<bytes::Bytes>>>;

/// Opens `path` as an event stream with `token`, resuming after `last`.
async fn open(base: &str, token: &str, path: &str, last: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .header("accept", "text/event-stream");
    if let Some(id) = last {
        req = req.header("last-event-id", id);
    }
    req.send().await.unwrap()
}

async fn stream(base: &str, token: &str, path: &str, last: Option<&str>) -> Sse {
    let r = open(base, token, path, last).await;
    assert_eq!(r.status(), StatusCode::OK);
    let kind = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(kind.starts_with("text/event-stream"), "{kind}");
    r.bytes_stream().boxed().eventsource()
}

async fn next(s: &mut Sse) -> Event {
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("an event within the wait")
        .expect("the stream goes on")
        .expect("a well-formed event")
}

/// Reads `s` until `enough` says so; answers every event read.
async fn read_until(s: &mut Sse, mut enough: impl FnMut(&[Event]) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    while !enough(&seen) {
        seen.push(next(s).await);
    }
    seen
}

fn terminal_jobs(events: &[Event]) -> Vec<(Uuid, JobState)> {
    events
        .iter()
        .filter(|e| e.event == JOB_EVENT)
        .map(|e| serde_json::from_str::<JobEvent>(&e.data).unwrap())
        .filter(|e| e.state.is_terminal())
        .map(|e| (e.job.id, e.state))
        .collect()
}

fn result(tenant: &str, batch: Uuid, job: Uuid) -> ResultImage {
    ResultImage {
        rank: 0,
        score: Some(28.5),
        seed: 7,
        width: 64,
        height: 64,
        key: kiln_protocol::keys::image_key(tenant, batch, job, 0),
    }
}

/// Runs `job` to its end: success, except every fourth fails for good.
async fn finish(w: &FakeWorker, tenant: &str, job: &JobMessage, i: usize) {
    w.emit(job.job_id, 1, EventKind::Started).await;
    let kind = if i % 4 == 3 {
        EventKind::Failed {
            kind: FailureKind::Permanent,
            reason: "bad prompt".into(),
        }
    } else {
        EventKind::Succeeded {
            results: vec![result(tenant, job.batch_id, job.job_id)],
        }
    };
    w.emit(job.job_id, 1, kind).await;
}

#[tokio::test]
async fn every_terminal_event_arrives_once_across_a_cut_and_a_restart() {
    let app = TestApp::spawn().await;
    let w = app.worker().await;
    let batch = app.submit(20, json!({})).await;
    let path = format!("/v1/batches/{}/events", batch.id);
    let mut s = stream(&app.base, &app.token, &path, None).await;
    // The stream opens with the batch as it is.
    let first = next(&mut s).await;
    assert_eq!(first.event, BATCH_EVENT);
    let b: Batch = serde_json::from_str(&first.data).unwrap();
    assert_eq!((b.id, b.counts.queued), (batch.id, 20));

    let jobs = w.drain(Duration::from_millis(300)).await;
    assert_eq!(jobs.len(), 20);
    // A running job's progress shows.
    w.emit(jobs[0].job_id, 1, EventKind::Started).await;
    w.emit(jobs[0].job_id, 1, EventKind::Progress { step: 3, total: 8 })
        .await;
    let early = read_until(&mut s, |seen| {
        seen.iter().any(|e| e.event == PROGRESS_EVENT)
    })
    .await;
    let p: ProgressEvent = serde_json::from_str(&early.last().unwrap().data).unwrap();
    assert_eq!(
        (p.job_id, p.progress.step, p.progress.total),
        (jobs[0].job_id, 3, 8)
    );

    for (i, job) in jobs.iter().enumerate().take(10) {
        finish(&w, &app.tenant, job, i).await;
    }
    let mut seen = early;
    seen.extend(read_until(&mut s, |seen| terminal_jobs(seen).len() == 10).await);
    let last = seen
        .iter()
        .rev()
        .find(|e| e.event == JOB_EVENT)
        .unwrap()
        .id
        .clone();
    // A success carries its results with URLs; a failure its error.
    for e in seen.iter().filter(|e| e.event == JOB_EVENT) {
        let je: JobEvent = serde_json::from_str(&e.data).unwrap();
        assert!(!e.id.is_empty(), "a job event has an id");
        match je.state {
            JobState::Succeeded => {
                assert!(je.job.results[0]
                    .url
                    .as_deref()
                    .unwrap()
                    .starts_with("http"))
            }
            JobState::Failed => assert_eq!(je.job.error.as_deref(), Some("bad prompt")),
            _ => {}
        }
    }
    drop(s);

    // The cut stream's dispatcher stops; the rest of the jobs finish while
    // no dispatcher runs, and a second one on the same database applies
    // their events.
    app.stop.cancel();
    for (i, job) in jobs.iter().enumerate().skip(10) {
        finish(&w, &app.tenant, job, i).await;
    }
    let second = TestApp::spawn_on(&app.db_url, &app.amqp_url, |_| {}).await;
    // Every job has ended before the stream resumes: what it then sends
    // comes from the stored events after the cursor, not from watching.
    let batch_url = format!("{}/v1/batches/{}", second.base, batch.id);
    common::wait_until("every job finished on the second dispatcher", || async {
        let b: Batch = reqwest::Client::new()
            .get(&batch_url)
            .bearer_auth(&app.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        b.counts.finished() == 20
    })
    .await;
    let mut s = stream(&second.base, &app.token, &path, Some(&last)).await;
    let rest = read_until(&mut s, |seen| terminal_jobs(seen).len() == 10).await;
    assert!(rest.iter().all(|e| e.event != RESET_EVENT), "{rest:?}");

    let all: Vec<(Uuid, JobState)> = terminal_jobs(&seen)
        .into_iter()
        .chain(terminal_jobs(&rest))
        .collect();
    let distinct: HashSet<Uuid> = all.iter().map(|(id, _)| *id).collect();
    assert_eq!(all.len(), 20, "{all:?}");
    assert_eq!(
        distinct.len(),
        20,
        "every job's terminal event once: {all:?}"
    );
    let states: HashMap<Uuid, JobState> = all.into_iter().collect();
    for (i, job) in jobs.iter().enumerate() {
        let want = if i % 4 == 3 {
            JobState::Failed
        } else {
            JobState::Succeeded
        };
        assert_eq!(states[&job.job_id], want);
    }
    // No event id is sent twice.
    let ids: Vec<&String> = seen
        .iter()
        .chain(&rest)
        .filter(|e| !e.id.is_empty() && e.event == JOB_EVENT)
        .map(|e| &e.id)
        .collect();
    assert_eq!(
        ids.len(),
        ids.iter().collect::<HashSet<_>>().len(),
        "{ids:?}"
    );
    // The batch's counts follow, up to the end.
    let b = read_until(&mut s, |seen| {
        seen.iter().any(|e| {
            e.event == BATCH_EVENT
                && serde_json::from_str::<Batch>(&e.data)
                    .unwrap()
                    .counts
                    .succeeded
                    == 15
        })
    })
    .await;
    let b: Batch = serde_json::from_str(&b.last().unwrap().data).unwrap();
    assert_eq!((b.counts.succeeded, b.counts.failed), (15, 5));
}

#[tokio::test]
async fn the_tenant_stream_sees_every_batch_and_no_other_tenant() {
    let app = TestApp::spawn().await;
    let w = app.worker().await;
    let (_, other_token) = app.other_tenant().await;
    // An empty Last-Event-ID says no event was received yet.
    let mut mine = stream(&app.base, &app.token, "/v1/events", Some("")).await;
    let mut theirs = stream(&app.base, &other_token, "/v1/events", None).await;
    let a = app.submit(2, json!({})).await;
    let b = app.submit(1, json!({})).await;
    let jobs = w.drain(Duration::from_millis(300)).await;
    assert_eq!(jobs.len(), 3);
    for (i, job) in jobs.iter().enumerate() {
        finish(&w, &app.tenant, job, i).await;
    }
    let seen = read_until(&mut mine, |seen| terminal_jobs(seen).len() == 3).await;
    let batches: HashSet<Uuid> = seen
        .iter()
        .filter(|e| e.event == JOB_EVENT)
        .map(|e| {
            serde_json::from_str::<JobEvent>(&e.data)
                .unwrap()
                .job
                .batch_id
        })
        .collect();
    assert_eq!(batches, HashSet::from([a.id, b.id]));
    // The other tenant's stream stays quiet (keep-alives are not events).
    let quiet = tokio::time::timeout(Duration::from_secs(2), theirs.next()).await;
    assert!(quiet.is_err(), "another tenant saw {quiet:?}");
}

#[tokio::test]
async fn streams_are_limited_and_bad_or_forgotten_ids_are_answered() {
    let app = TestApp::spawn_with(|s| {
        s.tenant_max_streams = 2;
        s.max_streams = 3;
        s.stream_poll = Duration::from_millis(50);
    })
    .await;
    let w = app.worker().await;
    let batch = app.submit(1, json!({})).await;
    let path = format!("/v1/batches/{}/events", batch.id);

    let one = stream(&app.base, &app.token, "/v1/events", None).await;
    let _two = stream(&app.base, &app.token, &path, None).await;
    let r = open(&app.base, &app.token, &path, None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    // Another tenant has its own allowance.
    let (_, other_token) = app.other_tenant().await;
    let r = open(&app.base, &other_token, "/v1/events", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    // The server's own limit (3 in all here) holds for every tenant.
    let full = open(&app.base, &other_token, "/v1/events", None).await;
    assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(full.headers().contains_key("retry-after"));
    drop(r);
    // A closed stream frees its place.
    drop(one);
    common::wait_until("a freed stream place", || async {
        open(&app.base, &app.token, "/v1/events", None)
            .await
            .status()
            == StatusCode::OK
    })
    .await;

    let r = open(&app.base, &app.token, &path, Some("not-an-id")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = open(&app.base, &other_token, &path, None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "another tenant's batch");

    // A job runs; its events are forgotten past KILN_FEED_KEEP (24 h), and
    // a stream resumed from one of them is told to read again.
    let job = w.next_job().await;
    finish(&w, &app.tenant, &job, 0).await;
    app.wait_state(job.job_id, JobState::Succeeded).await;
    let (id, tx): (i64, String) =
        sqlx::query_as("SELECT id, tx::text FROM job_feed WHERE job_id = $1 ORDER BY id LIMIT 1")
            .bind(job.job_id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    sqlx::query("UPDATE job_feed SET at = now() - interval '2 days'")
        .execute(&app.db)
        .await
        .unwrap();
    common::wait_until("old job events forgotten", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM job_feed")
            .fetch_one(&app.db)
            .await
            .unwrap()
            == 0
    })
    .await;
    drop(_two);
    // The places of the streams dropped above free within a poll.
    let cursor = format!("{tx}-{id}");
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut s = loop {
        let r = open(&app.base, &app.token, &path, Some(&cursor)).await;
        if r.status() == StatusCode::OK {
            break r.bytes_stream().boxed().eventsource();
        }
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            tokio::time::Instant::now() < deadline,
            "no stream place freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let first = next(&mut s).await;
    assert_eq!(first.event, RESET_EVENT, "{first:?}");
    assert_eq!(next(&mut s).await.event, BATCH_EVENT);
}

/// A change whose transaction commits after a later one's is still sent,
/// and in the order of the transactions: the stream holds back what a
/// transaction still running may yet precede.
#[tokio::test]
async fn a_change_that_commits_late_is_not_skipped() {
    let app = TestApp::spawn().await;
    let w = app.worker().await;
    let batch = app.submit(2, json!({})).await;
    let path = format!("/v1/batches/{}/events", batch.id);
    let mut s = stream(&app.base, &app.token, &path, None).await;
    assert_eq!(next(&mut s).await.event, BATCH_EVENT);
    let jobs = w.drain(Duration::from_millis(300)).await;
    assert_eq!(jobs.len(), 2);

    // Transaction A cancels the first job and stays open; meanwhile the
    // second job runs to success in transactions that commit first.
    let mut a = app.db.begin().await.unwrap();
    sqlx::query(
        "UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now() WHERE id = $1",
    )
    .bind(jobs[0].job_id)
    .execute(&mut *a)
    .await
    .unwrap();
    finish(&w, &app.tenant, &jobs[1], 0).await;
    app.wait_state(jobs[1].job_id, JobState::Succeeded).await;
    let early = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let e = next(&mut s).await;
            if e.event == JOB_EVENT {
                return e;
            }
        }
    })
    .await;
    assert!(
        early.is_err(),
        "sent while an earlier transaction runs: {early:?}"
    );

    a.commit().await.unwrap();
    let seen = read_until(&mut s, |seen| terminal_jobs(seen).len() == 2).await;
    let ended = terminal_jobs(&seen);
    assert_eq!(
        ended,
        [
            (jobs[0].job_id, JobState::Cancelled),
            (jobs[1].job_id, JobState::Succeeded)
        ],
        "both, the earlier transaction's first"
    );
}

/// A dispatcher that stops ends its streams: its HTTP server's graceful
/// shutdown, which waits for every answer to end, is not held by them.
#[tokio::test]
async fn stopping_the_dispatcher_ends_its_streams() {
    let mut app = TestApp::spawn().await;
    let batch = app.submit(1, json!({})).await;
    let path = format!("/v1/batches/{}/events", batch.id);
    let mut s = stream(&app.base, &app.token, &path, None).await;
    let _tenant = stream(&app.base, &app.token, "/v1/events", None).await;
    assert_eq!(next(&mut s).await.event, BATCH_EVENT);
    app.stop.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), &mut app.handle).await;
    assert!(
        stopped.is_ok(),
        "the dispatcher did not stop with streams open"
    );
    let end = tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("the stream ends");
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
}
