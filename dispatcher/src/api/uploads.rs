//! `POST /v1/uploads`: an image a job may name as `init_image`. It must be a
//! decodable PNG or JPEG of bounded size; it is stored under the tenant's
//! prefix, and only that tenant's jobs may name it.

use super::extract::read_body;
use crate::auth::Tenant;
use crate::error::{ApiError, ApiResult, FieldProblem, Problem};
use crate::state::AppState;
use crate::store;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use image::ImageFormat;
use kiln_protocol::api::Upload;
use std::io::Cursor;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/uploads", post(create))
}

/// Checks the bytes are a PNG or JPEG within `max_side`, decoding it whole.
pub fn inspect(bytes: &[u8], max_side: u32) -> ApiResult<(ImageFormat, u32, u32)> {
    let format = image::guess_format(bytes).map_err(|_| {
        ApiError::UnsupportedMediaType("the body is not a PNG or JPEG image".into())
    })?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "{format:?} images are not accepted; upload a PNG or JPEG"
        )));
    }
    let bad = |msg: String| ApiError::validation(vec![FieldProblem::new("", msg)]);
    let reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| bad(format!("not a decodable image: {e}")))?;
    if w == 0 || h == 0 || w > max_side || h > max_side {
        return Err(bad(format!(
            "the image is {w}×{h}; each side must be 1..={max_side} pixels (KILN_MAX_UPLOAD_SIDE)"
        )));
    }
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| bad(format!("not a decodable image: {e}")))?;
    Ok((format, w, h))
}

/// Upload an image (raw PNG or JPEG body).
#[utoipa::path(
    post, path = "/v1/uploads", operation_id = "createUpload", tag = "uploads",
    request_body(content((Vec<u8> = "image/png"), (Vec<u8> = "image/jpeg"))),
    responses(
        (status = 201, body = Upload),
        (status = 400, description = "The body is empty", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body was not received within KILN_BODY_TIMEOUT", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than KILN_MAX_UPLOAD_BYTES", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The bytes are not a PNG or JPEG image, whatever the Content-Type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The image is larger than KILN_MAX_UPLOAD_SIDE", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Storage unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    body: Body,
) -> ApiResult<(StatusCode, Json<Upload>)> {
    let settings = &state.settings;
    let _reading = state.body_permit().await?;
    let bytes = read_body(
        body,
        settings.max_upload_bytes,
        settings.body_timeout,
        "the upload (KILN_MAX_UPLOAD_BYTES)",
    )
    .await?;
    if bytes.is_empty() {
        return Err(ApiError::BadRequest("the upload is empty".into()));
    }
    let max_side = settings.max_upload_side;
    let data = bytes.clone();
    let (format, width, height) = tokio::task::spawn_blocking(move || inspect(&data, max_side))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("image check: {e}")))??;
    let id = format!("up_{}", uuid::Uuid::now_v7().simple());
    let key = kiln_protocol::keys::upload_key(&tenant, &id);
    let content_type = match format {
        ImageFormat::Png => "image/png",
        _ => "image/jpeg",
    };
    let s3 = &settings.connections.s3;
    state
        .s3
        .put_object()
        .bucket(&s3.bucket)
        .key(&key)
        .content_type(content_type)
        .body(bytes.to_vec().into())
        .send()
        .await
        .map_err(|e| {
            tracing::error!(error = %aws_sdk_s3::error::DisplayErrorContext(&e), "upload to storage failed");
            ApiError::Unavailable("object storage is unavailable; try again".into())
        })?;
    let mut tx = state.db.begin().await?;
    store::uploads::insert(
        &mut tx,
        &store::uploads::NewUpload {
            id: &id,
            tenant: &tenant,
            key: &key,
            width: width as i32,
            height: height as i32,
            format: content_type,
            bytes: bytes.len() as i64,
        },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(upload = %id, %tenant, width, height, "image uploaded");
    Ok((
        StatusCode::CREATED,
        Json(Upload {
            id,
            key,
            width,
            height,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([200, 10, 10]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn accepts_small_images_and_refuses_others() {
        assert_eq!(
            inspect(&png(32, 16), 64).unwrap(),
            (ImageFormat::Png, 32, 16)
        );
        assert!(matches!(
            inspect(&png(65, 16), 64),
            Err(ApiError::Validation { .. })
        ));
        assert!(matches!(
            inspect(b"hello world", 64),
            Err(ApiError::UnsupportedMediaType(_))
        ));
        let mut truncated = png(32, 32);
        truncated.truncate(60);
        assert!(matches!(
            inspect(&truncated, 64),
            Err(ApiError::Validation { .. })
        ));
    }
}
