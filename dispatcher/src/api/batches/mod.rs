//! `/v1/batches`: submit (JSON or NDJSON), read, list, list jobs, cancel,
//! list webhook deliveries.
//!
//! - `intake`: content negotiation and reading the JSON or NDJSON body.
//! - `validate`: the request into job specs, errors with pointers.
//! - `idempotency`: `Idempotency-Key` replays and conflicts.
//! - `quota`: per-tenant quotas (429 with `Retry-After`).
//! - `webhook`: a batch's webhook checked at intake.
//! - `schema`: the request's schemas in the OpenAPI document.

mod idempotency;
mod intake;
mod quota;
pub(crate) mod schema;
mod validate;
pub(crate) mod webhook;

use kiln_protocol::api::bounds::{with_bounds, Bounds};
use kiln_protocol::api::BatchRequest;

use super::extract::{page, parse_id, read_body, ListQuery};
use super::views::{self, jobs_with_results};
use crate::auth::Tenant;
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;
use crate::store;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{self, post};
use axum::{Json, Router};
use kiln_protocol::api::{Batch, BatchCancel, BatchPage, JobPage, WebhookDeliveryPage};
use kiln_protocol::JobState;
use uuid::Uuid;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/batches", post(create).get(list))
        .route("/v1/batches/{id}", routing::get(get))
        .route("/v1/batches/{id}/jobs", routing::get(jobs))
        .route("/v1/batches/{id}/cancel", post(cancel))
        .route("/v1/batches/{id}/webhooks", routing::get(webhooks))
}

fn created(batch: Batch, replayed: bool) -> Response {
    let mut resp = (StatusCode::CREATED, Json(batch)).into_response();
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

/// Submit a batch.
#[utoipa::path(
    post, path = "/v1/batches", operation_id = "createBatch", tag = "batches",
    request_body(content(
        (BatchRequest = "application/json"),
        (String = "application/x-ndjson", example = json!("{\"engine\":\"test-pattern\"}\n{\"prompt\":\"a red fox\"}\n"))
    )),
    params((
        "Idempotency-Key" = Option<String>, Header,
        // 1..=200 visible ASCII characters once surrounding blanks are trimmed (`idempotency::key_of`).
        pattern = r"^[\t ]*[!-~](?:[\t -~]{0,198}[!-~])?[\t ]*$",
        description = "Returns the same batch for the same key and body; 409 for another body. 1 to 200 visible ASCII characters"
    )),
    responses(
        (status = 201, description = "Stored; every job queued", body = Batch),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body was not received within KILN_BODY_TIMEOUT", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields; nothing stored", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over one of the tenant's quotas (jobs queued or running, submits per minute); nothing stored", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let format = intake::format_of(&headers)?;
    let key = idempotency::key_of(&headers)?;
    let settings = &state.settings;
    let reading = state.body_permit().await?;
    let body = read_body(
        body,
        settings.max_body_bytes,
        settings.body_timeout,
        "the request body (KILN_MAX_BODY_BYTES)",
    )
    .await?;
    let hash = idempotency::request_hash(format, &body);
    if let Some(k) = &key {
        let mut tx = state.db.begin().await?;
        if let Some(batch) = idempotency::replay(&mut tx, &tenant, k, &hash).await? {
            return Ok(created(batch, true));
        }
    }

    let max_jobs = settings.max_batch_jobs;
    let limits = state.limits;
    // The job count, each prompt's size and the metadata are bounded while
    // the body is read, so a body of millions of tiny elements costs no
    // more than the jobs a batch may hold.
    let bounds = Bounds {
        max_jobs,
        max_prompt_chars: limits.max_prompt_chars,
        max_metadata_entries: validate::MAX_METADATA_ENTRIES,
    };
    let intake = tokio::task::spawn_blocking(move || {
        let parsed = with_bounds(bounds, || intake::parse(format, &body, max_jobs))?;
        validate::validate(parsed, &limits, max_jobs)
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("validation task: {e}")))??;
    // The body is gone; what is left is proportional to the accepted jobs.
    drop(reading);

    if let Some(w) = &intake.webhook {
        if !settings.webhooks.allow_private {
            webhook::check_destination(&w.url).await?;
        }
    }
    let mut tx = state.db.begin().await?;
    validate::check_references(&mut tx, &tenant, &intake).await?;
    quota::check(&mut tx, settings, &tenant, intake.jobs.ids.len()).await?;
    let id = Uuid::now_v7();
    let new = store::batches::NewBatch {
        id,
        tenant: &tenant,
        name: intake.name.as_deref(),
        engine: intake.engine.as_str(),
        priority: intake.priority.rank(),
        metadata: intake.metadata,
        retry_of: intake.retry_of,
        webhook: intake.webhook.as_ref(),
        idempotency_key: key.as_deref(),
        request_hash: &hash,
        max_attempts: settings.max_attempts as i32,
    };
    let total = intake.jobs.ids.len();
    if !store::batches::insert(&mut tx, &new, &intake.jobs).await? {
        // Another request with the same key committed first.
        tx.rollback().await?;
        let mut tx = state.db.begin().await?;
        let k = key.as_deref().expect("only keyed inserts conflict");
        return match idempotency::replay(&mut tx, &tenant, k, &hash).await? {
            Some(batch) => Ok(created(batch, true)),
            None => Err(ApiError::Conflict(
                "a concurrent request used this Idempotency-Key".into(),
            )),
        };
    }
    let batch = store::batches::get(&mut tx, &tenant, id)
        .await?
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("batch vanished inside its transaction"))
        })?;
    tx.commit().await?;
    state.relay_wake.notify_one();
    tracing::info!(batch_id = %id, %tenant, engine = %intake.engine, jobs = total, "batch submitted");
    Ok(created(views::batch(batch), false))
}

/// One batch with its counts.
#[utoipa::path(
    get, path = "/v1/batches/{id}", operation_id = "getBatch", tag = "batches",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Batch), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Batch>> {
    let id = parse_id(&id, "batch")?;
    let mut tx = state.db.begin().await?;
    let row = store::batches::get(&mut tx, &tenant, id)
        .await?
        .ok_or(ApiError::NotFound("batch"))?;
    Ok(Json(views::batch(row)))
}

/// The tenant's batches, newest first.
#[utoipa::path(
    get, path = "/v1/batches", operation_id = "listBatches", tag = "batches",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "1..=1000, default 100"),
        ("cursor" = Option<Uuid>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses((status = 200, body = BatchPage), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    q: Result<ListQuery, ApiError>,
) -> ApiResult<Json<BatchPage>> {
    let q = q?;
    if q.state.is_some() {
        return Err(ApiError::BadRequest(
            "state filters jobs, not batches".into(),
        ));
    }
    let limit = q.limit(100)?;
    let before = q.cursor(|c| Uuid::parse_str(c).ok())?;
    let mut tx = state.db.begin().await?;
    let rows = store::batches::list(&mut tx, &tenant, before, limit + 1).await?;
    let (rows, next_cursor) = page(rows, limit, |b| b.id.to_string());
    let items = rows.into_iter().map(views::batch).collect();
    Ok(Json(BatchPage { items, next_cursor }))
}

/// The jobs of a batch, in submission order.
#[utoipa::path(
    get, path = "/v1/batches/{id}/jobs", operation_id = "listBatchJobs", tag = "batches",
    params(("id" = Uuid, Path), ListQuery),
    responses((status = 200, body = JobPage), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn jobs(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    q: Result<ListQuery, ApiError>,
) -> ApiResult<Json<JobPage>> {
    let id = parse_id(&id, "batch")?;
    let q = q?;
    let limit = q.limit(1000)?;
    let state_filter = q
        .state
        .as_deref()
        .map(str::parse::<JobState>)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let after = q
        .cursor(|c| c.parse::<i32>().ok().filter(|n| *n >= 0))?
        .unwrap_or(-1);
    let mut tx = state.db.begin().await?;
    if !store::batches::exists(&mut tx, &tenant, id).await? {
        return Err(ApiError::NotFound("batch"));
    }
    let rows = store::jobs::list(&mut tx, id, state_filter, after, limit + 1).await?;
    let (rows, next_cursor) = page(rows, limit, |j| j.seq.to_string());
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let results = store::jobs::results(&mut tx, &ids).await?;
    drop(tx);
    let items = jobs_with_results(&state, rows, results).await;
    Ok(Json(JobPage { items, next_cursor }))
}

/// Cancel every unfinished job of a batch (idempotent).
#[utoipa::path(
    post, path = "/v1/batches/{id}/cancel", operation_id = "cancelBatch", tag = "batches",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = BatchCancel), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<BatchCancel>> {
    let id = parse_id(&id, "batch")?;
    let mut tx = state.db.begin().await?;
    if !store::batches::exists(&mut tx, &tenant, id).await? {
        return Err(ApiError::NotFound("batch"));
    }
    let (ids, finished) = store::batches::cancel(&mut tx, id).await?;
    let batch = store::batches::get(&mut tx, &tenant, id)
        .await?
        .ok_or(ApiError::NotFound("batch"))?;
    tx.commit().await?;
    let cancelled = ids.len() as u64;
    tracing::info!(batch_id = %id, cancelled, already_finished = finished, "batch cancelled");
    state.control.cancel_soon(ids);
    state.relay_wake.notify_one();
    let message = match (cancelled, finished) {
        (0, _) => "nothing to cancel: every job had already finished".to_string(),
        (n, 0) => format!("cancelled {n} jobs"),
        (n, f) => format!("cancelled {n} jobs; {f} had already finished and are unchanged"),
    };
    Ok(Json(BatchCancel {
        cancelled,
        already_finished: u64::try_from(finished).unwrap_or(0),
        message,
        batch: views::batch(batch),
    }))
}

/// A batch's webhook deliveries, oldest first, with their attempts.
#[utoipa::path(
    get, path = "/v1/batches/{id}/webhooks", operation_id = "listBatchWebhooks", tag = "batches",
    params(
        ("id" = Uuid, Path),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "1..=1000, default 100"),
        ("cursor" = Option<String>, Query, pattern = r"^[0-9]{1,18}$", description = "`next_cursor` of the previous page"),
    ),
    responses((status = 200, body = WebhookDeliveryPage), (status = 400, body = Problem, content_type = "application/problem+json"), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn webhooks(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    q: Result<ListQuery, ApiError>,
) -> ApiResult<Json<WebhookDeliveryPage>> {
    let id = parse_id(&id, "batch")?;
    let q = q?;
    if q.state.is_some() {
        return Err(ApiError::BadRequest(
            "state filters jobs, not webhook deliveries".into(),
        ));
    }
    let limit = q.limit(100)?;
    let after = q
        .cursor(|c| {
            (c.len() <= 18 && c.bytes().all(|b| b.is_ascii_digit()))
                .then(|| c.parse::<i64>().ok())
                .flatten()
        })?
        .unwrap_or(0);
    let mut tx = state.db.begin().await?;
    if !store::batches::exists(&mut tx, &tenant, id).await? {
        return Err(ApiError::NotFound("batch"));
    }
    drop(tx);
    let rows = store::webhooks::list(&state.db, id, after, limit + 1).await?;
    let (rows, next_cursor) = page(rows, limit, |d| d.id.to_string());
    let items = rows.into_iter().map(views::delivery).collect();
    Ok(Json(WebhookDeliveryPage { items, next_cursor }))
}
