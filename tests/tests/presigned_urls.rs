//! Workers hold no bucket credentials: each job message carries presigned
//! URLs for exactly the objects its attempt may write (its images by rank,
//! its metadata) and for its init image. Held to the real Garage here: a
//! worker with no bucket settings, and wrong ones in its environment,
//! renders and uploads; a URL allows its one key, method and content type
//! and nothing else; an expired URL ends the attempt as `expired`, and the
//! same attempt with fresh URLs succeeds on the same worker.
//!
//! Needs the local stack (`deploy/local/stack up`) and the workspace
//! binaries (`cargo build --workspace --bins`).

use anyhow::{ensure, Result};
use kiln_protocol::keys::{image_key, metadata_key, IMAGE_CONTENT_TYPE, METADATA_CONTENT_TYPE};
use kiln_protocol::{Event, EventKind, FailureKind, ParamsDto};
use kiln_tests::e2e::{get_png, held, list_keys, terminal, Events, Rig, Worker};
use kiln_tests::S3;
use std::time::{Duration, SystemTime};
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(90);

async fn content_type(s3: &S3, key: &str) -> Result<Option<String>> {
    let head = s3
        .client()
        .head_object()
        .bucket(&s3.bucket)
        .key(key)
        .send()
        .await?;
    Ok(head.content_type().map(str::to_string))
}

/// Waits for `job`'s end, which must be an `expired` failure: its reason,
/// and the event.
async fn expired(events: &mut Events, job: Uuid) -> Result<(String, Event)> {
    let done = events.wait(LONG, "the job's end", terminal(job)).await?;
    match &done.kind {
        EventKind::Failed {
            kind: FailureKind::Expired,
            reason,
        } => Ok((reason.clone(), done.clone())),
        _ => anyhow::bail!("{done:?}"),
    }
}

async fn exists(s3: &S3, key: &str) -> Result<bool> {
    Ok(list_keys(s3, key).await?.iter().any(|k| k == key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_bucket_credentials_uploads_through_its_jobs_urls() -> Result<()> {
    let rig = Rig::new().await?;
    let mut events = rig.broker.events().await?;
    let mut o = rig.opts("w-no-keys");
    // Whatever bucket settings its environment holds, the worker uses only
    // the URLs its jobs carry.
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "GKnot-a-key"),
        ("AWS_SECRET_ACCESS_KEY", "not-a-secret"),
        ("KILN_S3_ENDPOINT", "http://127.0.0.1:9"),
        ("KILN_S3_BUCKET", "elsewhere"),
    ] {
        o.env.push((k.into(), v.into()));
    }
    let _w = Worker::start(&o).await?;
    let j = rig.job(
        "no keys needed",
        ParamsDto {
            candidates: Some(3),
            keep: Some(2),
            ..held(2, 10)
        },
    );
    rig.broker.publish_job(&j).await?;
    let done = events
        .wait(LONG, "the job's end", terminal(j.job_id))
        .await?;
    let EventKind::Succeeded { results } = &done.kind else {
        anyhow::bail!("{done:?}")
    };
    ensure!(results.len() == 2, "{results:?}");
    for (rank, r) in results.iter().enumerate() {
        ensure!(r.key == image_key(&rig.tenant, j.batch_id, j.job_id, rank as u32));
        let png = get_png(&rig.s3, &r.key).await?;
        ensure!((png.width, png.height) == (32, 32));
        let ct = content_type(&rig.s3, &r.key).await?;
        ensure!(ct.as_deref() == Some(IMAGE_CONTENT_TYPE), "{ct:?}");
    }
    let meta = metadata_key(&rig.tenant, j.batch_id, j.job_id);
    let ct = content_type(&rig.s3, &meta).await?;
    ensure!(ct.as_deref() == Some(METADATA_CONTENT_TYPE), "{ct:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_allows_its_one_key_method_and_content_type_until_it_expires() -> Result<()> {
    let s3 = S3::from_env();
    let tenant = kiln_tests::fresh_tenant();
    let (batch, job) = (Uuid::new_v4(), Uuid::new_v4());
    let key = image_key(&tenant, batch, job, 0);
    let signer = s3.presigner(Duration::from_secs(600));
    let now = SystemTime::now();
    let url = signer.put(&key, IMAGE_CONTENT_TYPE, now);
    let http = reqwest::Client::new();
    let put = |url: String, ct: &'static str, body: &'static [u8]| {
        let http = http.clone();
        async move {
            let r = http
                .put(url)
                .header("content-type", ct)
                .body(body)
                .send()
                .await?;
            anyhow::Ok(r.status().as_u16())
        }
    };

    // Its own key, method and type: accepted.
    ensure!(put(url.clone(), IMAGE_CONTENT_TYPE, b"first").await? == 200);
    ensure!(exists(&s3, &key).await?);

    // Another rank of the job, another job, another tenant: the signature
    // covers the path, so each is refused and nothing is written.
    let others = [
        image_key(&tenant, batch, job, 1),
        image_key(&tenant, batch, Uuid::new_v4(), 0),
        image_key("someone-else", batch, job, 0),
    ];
    for other in &others {
        let forged = url.replacen(&key, other, 1);
        ensure!(forged != url);
        let status = put(forged, IMAGE_CONTENT_TYPE, b"forged").await?;
        ensure!(status == 403, "PUT {other} with the URL of {key}: {status}");
        ensure!(!exists(&s3, other).await?, "{other} was written");
    }
    // Another content type (it is signed), another method.
    let status = put(url.clone(), "text/html", b"<script>").await?;
    ensure!(status == 403, "another content type: {status}");
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let status = http.request(method.clone(), &url).send().await?.status();
        ensure!(
            status.is_client_error(),
            "{method} with a PUT URL: {status}"
        );
    }
    ensure!(exists(&s3, &key).await?, "the object is still there");

    // A URL whose lifetime has passed is refused (AWS and MinIO answer
    // 403, Garage 400).
    let stale = signer.put(&key, IMAGE_CONTENT_TYPE, now - Duration::from_secs(3600));
    let status = put(stale, IMAGE_CONTENT_TYPE, b"late").await?;
    ensure!(status == 403 || status == 400, "an expired URL: {status}");
    let body = kiln_tests::e2e::get_object(&s3, &key).await?;
    ensure!(body == b"first", "{:?}", String::from_utf8_lossy(&body));
    s3.delete_prefix(&format!("{tenant}/")).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_expires_during_the_render_ends_the_attempt_as_expired_and_fresh_urls_render_it(
) -> Result<()> {
    let rig = Rig::new().await?;
    let mut events = rig.broker.events().await?;
    let w = Worker::start(&rig.opts("w-expired")).await?;
    // About 12 s of rendering, with URLs that expire 8 s after the publish:
    // the upload is refused (Garage answers 400 "Date is too old").
    let j = rig.job("outlived its URLs", held(40, 300));
    let ttl = Duration::from_secs(3600);
    let signed = SystemTime::now() - ttl + Duration::from_secs(8);
    rig.broker
        .publish_job(&rig.s3.sign_at(j.clone(), ttl, signed))
        .await?;
    let (reason, first) = expired(&mut events, j.job_id).await?;
    ensure!(reason.contains("refused the URL"), "{reason}");
    ensure!(list_keys(&rig.s3, &rig.job_prefix(&j)).await?.is_empty());

    // The dispatcher publishes the same attempt again with fresh URLs: this
    // worker renders it (it does not take it for a duplicate).
    rig.broker.publish_job(&j).await?;
    let done = events
        .wait(LONG, "the second end", |e| {
            e.job_id == j.job_id && e.kind.is_terminal() && e.at > first.at
        })
        .await?;
    ensure!(
        matches!(done.kind, EventKind::Succeeded { .. }),
        "{done:?}\n{}",
        w.log_tail(20)
    );
    let key = image_key(&rig.tenant, j.batch_id, j.job_id, 0);
    ensure!(get_png(&rig.s3, &key).await?.width == 32);
    Ok(())
}

/// A job whose URLs expired before it started, or that carries none, is
/// neither reported started nor rendered: the attempt ends as `expired` at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_without_live_urls_is_not_rendered() -> Result<()> {
    let rig = Rig::new().await?;
    let mut events = rig.broker.events().await?;
    let _w = Worker::start(&rig.opts("w-no-urls")).await?;
    let ttl = Duration::from_secs(3600);
    let stale = rig.job("signed two hours ago", held(2, 10));
    let stale = rig.s3.sign_at(stale, ttl, SystemTime::now() - 2 * ttl);
    rig.broker.publish_job(&stale).await?;
    let none = rig.job("no URLs", held(2, 10));
    rig.broker
        .publish_raw(none.spec.engine(), &none.encode())
        .await?;
    for (j, why) in [(&stale, "expired at"), (&none, "carries no URLs")] {
        let (reason, _) = expired(&mut events, j.job_id).await?;
        ensure!(reason.contains(why), "{reason}");
        // Not started, not rendered: the job stays queued at the dispatcher.
        let seen: Vec<_> = events.of(j.job_id).iter().map(|e| e.kind.name()).collect();
        ensure!(seen == ["failed"], "{seen:?}");
    }
    Ok(())
}

/// Through the dispatcher: URLs that expired while the job waited in the
/// queue (no worker ran) end its first delivery as `expired`; the
/// dispatcher publishes the same attempt again with fresh URLs, and the
/// job succeeds on its first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_that_expired_in_the_queue_are_renewed_and_the_job_succeeds() -> Result<()> {
    use kiln_protocol::api::BatchRequest;
    use kiln_protocol::JobState;
    use kiln_tests::scale::{metric, Cluster};
    let mut c = Cluster::start(&[("KILN_JOB_URL_TTL", "3s")]).await?;
    let created = c
        .api
        .submit(&BatchRequest {
            engine: "test-pattern".into(),
            prompts: Some(vec!["waited too long".into()]),
            params: Some(held(2, 10)),
            ..Default::default()
        })
        .await?;
    let id = c.api.jobs(created.id).await?[0].id;
    // Published at once; its URLs expire while no worker runs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut w = c.start_worker("test-pattern", 1, 10)?;
    let deadline = std::time::Instant::now() + LONG;
    let job = loop {
        c.dispatcher.ensure_running()?;
        w.ensure_running()?;
        let j = c.api.job(id).await?;
        if j.state.is_terminal() {
            break j;
        }
        ensure!(std::time::Instant::now() < deadline, "{j:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(job.state == JobState::Succeeded, "{job:?}");
    ensure!(job.attempt == 1, "no attempt spent: {job:?}");
    let png = get_png(&c.s3, &job.results[0].key).await?;
    ensure!(png.width == 32);
    let text = c.api.metrics().await?;
    let reissued = metric(&text, "kiln_jobs_reissued_total", &[]).unwrap_or(0.0);
    ensure!(reissued >= 1.0, "reissued {reissued}");
    ensure!(w.log_text().contains("expired"), "{}", w.log_tail(20));
    c.remove_logs();
    Ok(())
}
