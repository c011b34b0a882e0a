//! Retention against the real database and bucket: old finished batches go
//! from the API, the database and the bucket, running and recent ones and
//! other tenants' under a longer retention stay; unused uploads go, used
//! ones stay; a pass that fails half-way (the bucket away after the rows
//! went) is finished by the next; orphan objects go after their grace
//! period, objects outside Kiln's layout never.

mod common;

use common::{FakeWorker, TestApp};
use kiln_dispatcher::config::Retention;
use kiln_dispatcher::prune::{Pruner, Report};
use kiln_protocol::api::{Batch, Upload};
use kiln_protocol::{EventKind, JobMessage, JobState, ResultImage};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

fn retention(keep: Duration, grace: Duration) -> Retention {
    Retention {
        retention: keep,
        prune_interval: Duration::ZERO,
        // One job per transaction: every batch in a chunk of its own.
        prune_chunk: 1,
        orphan_grace: grace,
        orphan_scan_pages: 10,
    }
}

async fn pruner(app: &TestApp, r: Retention) -> Pruner {
    let s = common::settings(&app.db_url, &app.amqp_url);
    Pruner::connect(app.db.clone(), &s.connections.s3, r)
        .await
        .unwrap()
}

async fn put(s3: &kiln_tests::S3, key: &str) {
    s3.client()
        .put_object()
        .bucket(&s3.bucket)
        .key(key)
        .body(b"png".to_vec().into())
        .send()
        .await
        .unwrap();
}

/// Runs every job of `batch` (taken by `w`) to success, with one image in
/// the bucket each.
async fn finish(app: &TestApp, w: &FakeWorker, tenant: &str, batch: &Batch) {
    for _ in 0..batch.total {
        let j: JobMessage = w.next_job().await;
        assert_eq!(j.batch_id, batch.id);
        let key = kiln_protocol::keys::image_key(tenant, j.batch_id, j.job_id, 0);
        put(&kiln_tests::S3::from_env(), &key).await;
        w.emit(j.job_id, 1, EventKind::Started).await;
        let results = vec![ResultImage {
            rank: 0,
            score: None,
            seed: 1,
            width: 8,
            height: 8,
            key,
        }];
        w.emit(j.job_id, 1, EventKind::Succeeded { results }).await;
        // Through the database: the batch may be another tenant's.
        common::wait_until("the job succeeded", || async {
            let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
                .bind(j.job_id)
                .fetch_one(&app.db)
                .await
                .unwrap();
            state == JobState::Succeeded.as_str()
        })
        .await;
    }
}

async fn rows_of(app: &TestApp, batch: Uuid) -> (i64, i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM batches WHERE id = $1),
                (SELECT count(*) FROM jobs WHERE batch_id = $1),
                (SELECT count(*) FROM results r JOIN jobs j ON j.id = r.job_id WHERE j.batch_id = $1),
                (SELECT count(*) FROM attempt_tokens t JOIN jobs j ON j.id = t.job_id WHERE j.batch_id = $1)",
    )
    .bind(batch)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

async fn upload(app: &TestApp) -> Upload {
    let img = image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let (s, b) = app.upload_as(&app.token, png).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    common::decode(&b)
}

#[tokio::test]
async fn old_finished_batches_and_unused_uploads_go_and_nothing_else_does() {
    let app = TestApp::spawn().await;
    let s3 = kiln_tests::S3::from_env();
    let w = app.worker().await;
    let keep = Duration::from_secs(3);

    // Old: finished, running, and another tenant's finished batch under a
    // retention of its own (an hour); an upload nobody uses.
    let old = app.submit(2, json!({})).await;
    finish(&app, &w, &app.tenant, &old).await;
    let running = app.submit(1, json!({})).await;
    let r = w.next_job().await;
    w.emit(r.job_id, 1, EventKind::Started).await;
    app.wait_state(r.job_id, JobState::Running).await;
    let (other, other_token) = app.other_tenant().await;
    let theirs: Batch = common::decode(
        &app.post_as(
            &other_token,
            "/v1/batches",
            &json!({"engine": "test-pattern", "prompts": ["theirs"]}),
        )
        .await
        .1,
    );
    finish(&app, &w, &other, &theirs).await;
    let hour = Some(Duration::from_secs(3600));
    kiln_dispatcher::prune::set_tenant_retention(&app.db, &other, hour)
        .await
        .unwrap();
    let unused = upload(&app).await;
    let used = upload(&app).await;
    let touched = upload(&app).await;
    tokio::time::sleep(keep + Duration::from_millis(500)).await;
    // Each protection on its own: a recent use without a job that refers
    // to the upload, and (below) a job that refers to it after a use long
    // ago.
    sqlx::query("UPDATE uploads SET last_used_at = now() WHERE id = $1")
        .bind(&touched.id)
        .execute(&app.db)
        .await
        .unwrap();

    // Recent: a finished batch, and a queued one that uses the second upload.
    let recent = app.submit(1, json!({})).await;
    finish(&app, &w, &app.tenant, &recent).await;
    let (s, b) = app
        .post(
            "/v1/batches",
            &json!({"engine": "vqgan-clip", "prompts": ["uses it"], "params": {"init_image": used.id, "width": 64, "height": 64}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    sqlx::query("UPDATE uploads SET last_used_at = now() - interval '1 hour' WHERE id = $1")
        .bind(&used.id)
        .execute(&app.db)
        .await
        .unwrap();

    let p = pruner(&app, retention(keep, Duration::from_secs(3600))).await;
    let dry = p.dry_run().await.unwrap();
    assert_eq!((dry.batches, dry.jobs, dry.uploads), (1, 2, 1), "{dry:?}");
    assert_eq!(dry.batch_ids, vec![old.id]);
    assert_eq!(
        rows_of(&app, old.id).await,
        (1, 2, 2, 2),
        "a dry run deletes nothing"
    );

    let report = p.pass(10).await.unwrap();
    let expect = Report {
        batches: 1,
        jobs: 2,
        uploads: 1,
        objects: 3,
        ..Default::default()
    };
    assert_eq!(report, expect);
    let (s, _) = app.get(&format!("/v1/batches/{}", old.id)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(rows_of(&app, old.id).await, (0, 0, 0, 0));
    let stray: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM attempt_tokens t WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = t.job_id)",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(stray, 0, "no token outlives its job");
    let prefix = kiln_protocol::keys::batch_prefix(&app.tenant, old.id);
    assert!(s3.keys(&prefix).await.unwrap().is_empty());
    assert!(s3.keys(&unused.key).await.unwrap().is_empty());
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM prune_objects")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(pending, 0);

    // What stays.
    for (tenant, b) in [(&app.tenant, &recent), (&other, &theirs)] {
        assert_eq!(rows_of(&app, b.id).await.0, 1);
        let prefix = kiln_protocol::keys::batch_prefix(tenant, b.id);
        assert_eq!(s3.keys(&prefix).await.unwrap().len(), b.total as usize);
    }
    assert_eq!(app.batch(running.id).await.counts.running, 1);
    for kept in [&used, &touched] {
        assert_eq!(s3.keys(&kept.key).await.unwrap(), vec![kept.key.clone()]);
    }
    assert_eq!(p.pass(10).await.unwrap(), Report::default(), "nothing more");
}

/// The rows go in one transaction and the objects after it: when the
/// bucket fails in between, the batch is gone from the API and the
/// database whole, its objects stay queued (the pass reports what it did),
/// and the next pass deletes them, unless another pruner holds the key.
#[tokio::test]
async fn a_pass_cut_off_after_the_rows_went_is_finished_by_the_next() {
    let app = TestApp::spawn().await;
    let s3 = kiln_tests::S3::from_env();
    let w = app.worker().await;
    let keep = Duration::from_secs(1);
    let old = app.submit(3, json!({})).await;
    finish(&app, &w, &app.tenant, &old).await;
    tokio::time::sleep(keep + Duration::from_millis(500)).await;

    let mut away = common::settings(&app.db_url, &app.amqp_url);
    away.connections.s3.endpoint = Some(format!(
        "http://127.0.0.1:{}",
        kiln_tests::e2e::free_port().unwrap()
    ));
    away.connections.s3.timeout = Duration::from_secs(2);
    let cut = Pruner::connect(app.db.clone(), &away.connections.s3, retention(keep, keep))
        .await
        .unwrap();
    let cut_short = cut.pass(1).await.unwrap();
    assert_eq!(
        (cut_short.batches, cut_short.objects),
        (1, 0),
        "{cut_short:?}"
    );
    let (s, _) = app.get(&format!("/v1/batches/{}", old.id)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(rows_of(&app, old.id).await, (0, 0, 0, 0));
    let prefix = kiln_protocol::keys::batch_prefix(&app.tenant, old.id);
    assert_eq!(s3.keys(&prefix).await.unwrap().len(), 3, "the objects wait");
    // Queued, and released by the pass the bucket refused.
    let queued: Vec<String> =
        sqlx::query_scalar("SELECT key FROM prune_objects WHERE claimed_until IS NULL")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(queued, vec![prefix.clone()]);

    // Another dispatcher's pruner holding the key: this one leaves it.
    let p = pruner(&app, retention(keep, Duration::from_secs(3600))).await;
    let mut other = app.db.begin().await.unwrap();
    sqlx::query("SELECT key FROM prune_objects FOR UPDATE")
        .execute(&mut *other)
        .await
        .unwrap();
    assert_eq!(p.pass(10).await.unwrap().objects, 0);
    assert_eq!(s3.keys(&prefix).await.unwrap().len(), 3);
    other.rollback().await.unwrap();
    // Or holding its claim on it (a lease, outside any transaction).
    sqlx::query("UPDATE prune_objects SET claimed_until = now() + interval '1 hour'")
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(p.pass(10).await.unwrap().objects, 0);
    assert_eq!(s3.keys(&prefix).await.unwrap().len(), 3);
    // A lease that lapsed (its pruner died) is taken over.
    sqlx::query("UPDATE prune_objects SET claimed_until = now() - interval '1 second'")
        .execute(&app.db)
        .await
        .unwrap();

    let report = p.pass(10).await.unwrap();
    assert_eq!((report.batches, report.objects), (0, 3), "{report:?}");
    assert!(s3.keys(&prefix).await.unwrap().is_empty());
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM prune_objects")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(queued, 0);
}

#[tokio::test]
async fn orphan_objects_go_after_their_grace_and_others_stay() {
    let app = TestApp::spawn().await;
    let s3 = kiln_tests::S3::from_env();
    let w = app.worker().await;
    let done = app.submit(1, json!({})).await;
    finish(&app, &w, &app.tenant, &done).await;
    let job = app.job_ids(done.id).await[0];
    let t = &app.tenant;
    let kept = kiln_protocol::keys::image_key(t, done.id, job, 0);
    let metadata = kiln_protocol::keys::metadata_key(t, done.id, job);
    let extra = kiln_protocol::keys::image_key(t, done.id, job, 1);
    let unknown = kiln_protocol::keys::image_key(t, Uuid::now_v7(), Uuid::now_v7(), 0);
    let no_row = kiln_protocol::keys::upload_key(t, "up_never_committed");
    let foreign = format!("{t}/notes/readme.txt");
    for k in [&metadata, &extra, &unknown, &no_row, &foreign] {
        put(&s3, k).await;
    }
    let grace = Duration::from_secs(2);

    // Younger than the grace period: nothing is an orphan yet.
    let p = pruner(&app, retention(Duration::from_secs(3600), grace)).await;
    assert_eq!(p.dry_run().await.unwrap().orphans, 0);
    tokio::time::sleep(grace + Duration::from_millis(1100)).await;
    let mut orphans = vec![extra.clone(), unknown.clone(), no_row.clone()];
    orphans.sort();
    let mut dry = p.dry_run().await.unwrap().orphan_keys;
    dry.sort();
    assert_eq!(dry, orphans);
    assert_eq!(p.pass(10).await.unwrap().orphans, 3);
    let mut left = s3.keys(&format!("{t}/")).await.unwrap();
    left.sort();
    let mut expect = vec![kept, metadata, foreign];
    expect.sort();
    assert_eq!(left, expect);
}

#[tokio::test]
async fn serve_prunes_on_its_own_and_counts_it() {
    let app = TestApp::spawn_with(|s| {
        s.retention.retention = Duration::from_secs(1);
        s.retention.prune_interval = Duration::from_millis(200);
    })
    .await;
    let w = app.worker().await;
    let old = app.submit(2, json!({})).await;
    finish(&app, &w, &app.tenant, &old).await;
    app.wait_metric("kiln_pruned_batches_total", 1.0).await;
    assert_eq!(app.metric("kiln_pruned_jobs_total").await, 2.0);
    assert_eq!(app.metric("kiln_pruned_objects_total").await, 2.0);
    let (s, _) = app.get(&format!("/v1/batches/{}", old.id)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// A submit that names a batch as the one it retries while the pruner
/// deletes that batch waits for the pruner, then is refused as naming no
/// batch (422); it does not trip over the foreign key (500).
#[tokio::test]
async fn a_retry_of_a_batch_being_pruned_is_refused_cleanly() {
    let app = TestApp::spawn().await;
    let w = app.worker().await;
    let parent = app.submit(1, json!({})).await;
    finish(&app, &w, &app.tenant, &parent).await;

    // The pruner's hold on the batch, then its deletes, half a second later.
    let mut tx = app.db.begin().await.unwrap();
    sqlx::query("SELECT id FROM batches WHERE id = $1 FOR UPDATE")
        .bind(parent.id)
        .execute(&mut *tx)
        .await
        .unwrap();
    let retry = json!({"engine": "test-pattern", "prompts": ["again"], "retry_of": parent.id});
    let prune = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        kiln_dispatcher::prune::delete_batches(&mut tx, &[parent.id])
            .await
            .unwrap();
        tx.commit().await.unwrap();
    };
    let ((s, b), ()) = tokio::join!(app.post("/v1/batches", &retry), prune);
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(b.to_string().contains("retry_of"), "{b}");
}
