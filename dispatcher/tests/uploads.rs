//! `POST /v1/uploads` against the real bucket, and init images at submit.

mod common;

use common::{decode, TestApp};
use kiln_protocol::api::{Problem, Upload};
use serde_json::json;
use std::io::Cursor;

fn image(w: u32, h: u32, format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 128]));
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), format).unwrap();
    out
}

async fn upload(app: &TestApp, token: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let (s, b) = app.upload_as(token, body).await;
    (s.as_u16(), b)
}

#[tokio::test]
async fn uploads_are_checked_stored_and_private_to_their_tenant() {
    let app = TestApp::spawn_with(|s| {
        s.max_upload_bytes = 64 * 1024;
        s.max_upload_side = 256;
    })
    .await;
    let png = image(48, 32, image::ImageFormat::Png);
    let (s, up) = upload(&app, &app.token, png.clone()).await;
    assert_eq!(s, 201, "{up}");
    let up: Upload = decode(&up);
    assert_eq!((up.width, up.height), (48, 32));
    let id = up.id.as_str();
    assert_eq!(up.key, kiln_protocol::keys::upload_key(&app.tenant, id));

    let s3 = kiln_tests::S3::from_env();
    let stored = s3
        .client()
        .get_object()
        .bucket(&s3.bucket)
        .key(&up.key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        stored.body.collect().await.unwrap().into_bytes().to_vec(),
        png
    );

    let (s, jpeg) = upload(&app, &app.token, image(16, 16, image::ImageFormat::Jpeg)).await;
    assert_eq!(s, 201, "{jpeg}");
    let jpeg: Upload = decode(&jpeg);
    assert_eq!((jpeg.width, jpeg.height), (16, 16));

    // Jobs may name their own tenant's uploads only.
    let body = json!({"engine": "vqgan-clip", "prompts": ["a fox"], "params": {"init_image": id, "steps": 10}});
    let b = app.create(&body).await;
    let job = app.job(app.job_ids(b.id).await[0]).await;
    assert_eq!(job.params.init_image.as_deref(), Some(id));
    let (_, other) = app.other_tenant().await;
    app.wait_outbox_empty().await;
    let before = app.table_counts().await;
    let (s, p) = app.post_as(&other, "/v1/batches", &body).await;
    assert_eq!(s.as_u16(), 422, "{p}");
    assert_eq!(
        decode::<Problem>(&p).errors[0].pointer,
        "/params/init_image"
    );
    let (s, p) = app
        .post_as(&other, "/v1/batches", &json!({"engine": "vqgan-clip", "jobs": [{"prompt": "a"}, {"prompt": "b", "params": {"init_image": id}}]}))
        .await;
    assert_eq!(s.as_u16(), 422, "{p}");
    assert_eq!(
        decode::<Problem>(&p).errors[0].pointer,
        "/jobs/1/params/init_image"
    );

    // Bad uploads store nothing.
    let mut truncated = png.clone();
    truncated.truncate(png.len() / 2);
    for (what, body, status) in [
        ("text", b"hello, world".to_vec(), 415),
        ("gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(), 415),
        ("truncated png", truncated, 422),
        ("too wide", image(300, 8, image::ImageFormat::Png), 422),
        ("too large", vec![0x89; 70 * 1024], 413),
        ("empty", vec![], 400),
    ] {
        let (s, p) = upload(&app, &app.token, body).await;
        assert_eq!(s, status, "{what}: {p}");
        let problem: Problem = decode(&p);
        assert!(!problem.detail.is_empty(), "{what}: {p}");
        assert_eq!(problem.status, status, "{what}");
    }
    let (s, _) = upload(&app, "kiln_nope", png).await;
    assert_eq!(s, 401);
    assert_eq!(app.table_counts().await, before);
}
