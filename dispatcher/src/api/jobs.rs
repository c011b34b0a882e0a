//! `/v1/jobs/{id}`: read one job, cancel one job.

use super::extract::parse_id;
use super::views::jobs_with_results;
use crate::auth::Tenant;
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;
use crate::store;
use axum::extract::{Path, State};
use axum::routing;
use axum::{Json, Router};
use kiln_protocol::api::{Job, JobCancel};
use kiln_protocol::JobState;
use uuid::Uuid;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs/{id}", routing::get(get))
        .route("/v1/jobs/{id}/cancel", routing::post(cancel))
}

async fn load(state: &AppState, tenant: &str, id: Uuid) -> ApiResult<Job> {
    let mut tx = state.db.begin().await?;
    let row = store::jobs::get(&mut tx, tenant, id)
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    let results = store::jobs::results(&mut tx, &[id]).await?;
    drop(tx);
    let mut jobs = jobs_with_results(state, vec![row], results).await;
    Ok(jobs.remove(0))
}

/// One job with its resolved parameters and results.
#[utoipa::path(
    get, path = "/v1/jobs/{id}", operation_id = "getJob", tag = "jobs",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Job), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Job>> {
    let id = parse_id(&id, "job")?;
    Ok(Json(load(&state, &tenant, id).await?))
}

/// Cancel a job (idempotent).
#[utoipa::path(
    post, path = "/v1/jobs/{id}/cancel", operation_id = "cancelJob", tag = "jobs",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = JobCancel), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<JobCancel>> {
    let id = parse_id(&id, "job")?;
    let mut tx = state.db.begin().await?;
    let cancelled = store::jobs::cancel(&mut tx, &tenant, id)
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    tx.commit().await?;
    if cancelled {
        tracing::info!(job_id = %id, "job cancelled");
        state.control.cancel_soon(vec![id]);
        state.relay_wake.notify_one();
    }
    let job = load(&state, &tenant, id).await?;
    let message = if cancelled {
        JobState::Cancelled.to_string()
    } else {
        format!("the job had already finished ({}); unchanged", job.state)
    };
    Ok(Json(JobCancel {
        cancelled,
        message,
        job,
    }))
}
