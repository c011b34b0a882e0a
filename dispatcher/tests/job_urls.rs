//! The URLs a published job carries, and what the dispatcher does when a
//! worker reports them refused (`expired`): the same attempt is published
//! again, with a fresh token and fresh URLs, spending none of the job's
//! attempts, up to the republish limit; past it the attempt is spent. The
//! refused publish's token is revoked.

mod common;

use common::{FakeWorker, TestApp};
use kiln_protocol::keys::{image_key, metadata_key, upload_key};
use kiln_protocol::{Event, EventKind, FailureKind, JobMessage, JobState};
use serde_json::json;

fn expired() -> EventKind {
    EventKind::Failed {
        kind: FailureKind::Expired,
        reason: "storage refused the URL for t/b/j/0.png (expired?): HTTP 403".into(),
    }
}

/// Asserts that `m` carries a PUT URL for each of its `keep` images and one
/// for its metadata, each for its own key, signed to live `ttl_secs`.
fn assert_urls(m: &JobMessage, keep: u32, ttl_secs: u64) {
    let urls = m.urls.as_ref().expect("a published job carries URLs");
    let s3 = kiln_tests::S3::from_env();
    let at = |key: &str| format!("{}/{}/{key}?", s3.endpoint.trim_end_matches('/'), s3.bucket);
    assert_eq!(urls.images.len(), keep as usize, "{urls:?}");
    for (rank, url) in urls.images.iter().enumerate() {
        let key = image_key(&m.tenant, m.batch_id, m.job_id, rank as u32);
        assert!(url.starts_with(&at(&key)), "{url}");
        assert!(url.contains(&format!("X-Amz-Expires={ttl_secs}&")), "{url}");
        assert!(
            url.contains("X-Amz-SignedHeaders=content-type%3Bhost&"),
            "{url}"
        );
    }
    let meta = metadata_key(&m.tenant, m.batch_id, m.job_id);
    assert!(urls.metadata.starts_with(&at(&meta)), "{}", urls.metadata);
}

#[tokio::test]
async fn published_jobs_carry_urls_for_their_own_objects_only() {
    let app =
        TestApp::spawn_with(|s| s.connections.s3.job_url_ttl = std::time::Duration::from_secs(900))
            .await;
    let w = app.worker().await;
    app.submit(2, json!({"params": {"candidates": 4, "keep": 3}}))
        .await;
    for _ in 0..2 {
        let m = w.next_job().await;
        assert_urls(&m, 3, 900);
        assert!(m.urls.unwrap().init_image.is_none());
    }
}

/// The next job on the vqgan-clip queue.
async fn next_vqgan_job(w: &FakeWorker) -> JobMessage {
    use lapin::options::BasicGetOptions;
    let q = kiln_protocol::topology::job_queue(kiln_protocol::Engine::VqganClip);
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        if let Some(m) =
            w.ch.basic_get(&q, BasicGetOptions { no_ack: true })
                .await
                .unwrap()
        {
            return w.take(&m.delivery.data);
        }
        assert!(tokio::time::Instant::now() < deadline, "no job delivered");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_init_image_is_handed_over_as_a_get_url() {
    let app = TestApp::spawn().await;
    let w = app.worker().await;
    let mut png = Vec::new();
    image::RgbImage::new(8, 8)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let (status, up) = app.upload_as(&app.token, png).await;
    assert_eq!(status, 201, "{up}");
    let id = up["id"].as_str().unwrap().to_string();
    app.create(&json!({
        "engine": "vqgan-clip",
        "prompts": ["from an upload"],
        "params": {"init_image": id, "steps": 1, "width": 16, "height": 16},
    }))
    .await;
    let m = next_vqgan_job(&w).await;
    assert_urls(&m, 1, 24 * 3600);
    let urls = m.urls.expect("URLs");
    let s3 = kiln_tests::S3::from_env();
    let key = upload_key(&app.tenant, &id);
    let url = urls.init_image.expect("a GET URL for the init image");
    assert!(
        url.starts_with(&format!(
            "{}/{}/{key}?",
            s3.endpoint.trim_end_matches('/'),
            s3.bucket
        )),
        "{url}"
    );
    assert!(url.contains("X-Amz-SignedHeaders=host&"), "{url}");
}

#[tokio::test]
async fn refused_urls_publish_the_same_attempt_again_then_spend_it() {
    let app = TestApp::spawn_with(|s| s.rescue_limit = 2).await;
    let w = app.worker().await;
    app.submit(1, json!({})).await;
    let mut m = w.next_job().await;
    let id = m.job_id;
    for n in 1..=2u32 {
        w.emit(id, 1, EventKind::Started).await;
        w.emit(id, 1, expired()).await;
        let again = w.next_job().await;
        assert_eq!((again.job_id, again.attempt), (id, 1), "the same attempt");
        assert_ne!(again.token, m.token, "a fresh token");
        assert_urls(&again, 1, 24 * 3600);
        let j = app.job(id).await;
        assert_eq!((j.state, j.attempt), (JobState::Queued, 1), "{j:?}");
        assert!(
            j.error.as_deref().unwrap().contains("refused the URL"),
            "{j:?}"
        );
        assert_eq!(app.metric("kiln_jobs_reissued_total").await, n as f64);
        // The refused publish's token is revoked: a copy of its message
        // (a redelivery) can no longer report, nor send the attempt back.
        let stale = Event {
            token: m.token.clone(),
            ..Event::new(id, 1, &w.name, expired())
        };
        w.send(&stale).await;
        app.wait_metric("kiln_events_rejected_total", n as f64)
            .await;
        assert_eq!(app.metric("kiln_events_rejected_total").await, n as f64);
        assert_eq!(app.metric("kiln_jobs_reissued_total").await, n as f64);
        m = again;
    }
    // Past the limit, a refusal spends the attempt like any retryable
    // failure, with a reason that says why.
    w.emit(id, 1, EventKind::Started).await;
    w.emit(id, 1, expired()).await;
    let next = w.next_job().await;
    assert_eq!((next.job_id, next.attempt), (id, 2));
    let j = app.job(id).await;
    let err = j.error.as_deref().unwrap();
    assert!(
        err.contains("published again with fresh URLs 2 times"),
        "{err}"
    );
    assert_eq!(app.metric("kiln_jobs_reissued_total").await, 2.0);

    // The new attempt starts afresh and succeeds.
    w.emit(id, 2, EventKind::Started).await;
    w.emit(
        id,
        2,
        EventKind::Succeeded {
            results: vec![kiln_protocol::ResultImage {
                rank: 0,
                score: None,
                seed: 1,
                width: 64,
                height: 64,
                key: image_key(&next.tenant, next.batch_id, id, 0),
            }],
        },
    )
    .await;
    let j = app.wait_state(id, JobState::Succeeded).await;
    assert_eq!(j.attempt, 2);
}

#[tokio::test]
async fn a_stale_refusal_changes_nothing() {
    let app = TestApp::spawn().await;
    let w: FakeWorker = app.worker().await;
    app.submit(1, json!({})).await;
    let m = w.next_job().await;
    w.emit(m.job_id, 1, EventKind::Started).await;
    w.emit(
        m.job_id,
        1,
        EventKind::Failed {
            kind: FailureKind::Retryable,
            reason: "device lost".into(),
        },
    )
    .await;
    let next = w.next_job().await;
    assert_eq!(next.attempt, 2);
    // A refusal for attempt 1, late: attempt 2 stays as it is.
    w.emit(m.job_id, 1, expired()).await;
    w.emit(m.job_id, 2, EventKind::Started).await;
    let j = app
        .wait_job(m.job_id, "attempt 2 running", |j| {
            j.state == JobState::Running
        })
        .await;
    assert_eq!(j.attempt, 2);
    assert_eq!(app.metric("kiln_jobs_reissued_total").await, 0.0);
    assert!(w
        .drain(std::time::Duration::from_millis(200))
        .await
        .is_empty());
}
