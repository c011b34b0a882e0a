//! `/v1/workers`: the worker registry (operator tokens only): list the
//! workers, drain one.

use super::views;
use crate::auth::Operator;
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;
use crate::store;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing;
use axum::{Json, Router};
use kiln_protocol::api::{WorkerDrain, WorkerList, WorkerState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/workers", routing::get(list))
        .route("/v1/workers/{id}/drain", routing::post(drain))
}

/// Every worker heard from lately, with its latest report (operator tokens only).
#[utoipa::path(
    get, path = "/v1/workers", operation_id = "listWorkers", tag = "workers",
    responses((status = 200, body = WorkerList), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    Operator(_): Operator,
) -> ApiResult<Json<WorkerList>> {
    let rows = store::workers::list(&state.db, state.settings.worker_forget_after).await?;
    Ok(Json(WorkerList {
        items: rows.into_iter().map(views::worker).collect(),
    }))
}

/// Ask a worker to drain: it takes no new jobs, finishes those it holds
/// (within its drain timeout) and exits (operator tokens only).
#[utoipa::path(
    post, path = "/v1/workers/{id}/drain", operation_id = "drainWorker", tag = "workers",
    params(("id" = String, Path, description = "The worker's id, as `GET /v1/workers` lists it")),
    responses((status = 202, body = WorkerDrain), (status = 401, body = Problem, content_type = "application/problem+json"), (status = 403, body = Problem, content_type = "application/problem+json"), (status = 404, body = Problem, content_type = "application/problem+json"), (status = 409, body = Problem, content_type = "application/problem+json"), (status = 503, body = Problem, content_type = "application/problem+json")),
    security(("bearer" = []))
)]
pub async fn drain(
    State(state): State<AppState>,
    Operator(operator): Operator,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<WorkerDrain>)> {
    let row = store::workers::get(&state.db, &id, state.settings.worker_forget_after)
        .await?
        .ok_or(ApiError::NotFound("worker"))?;
    let worker = views::worker(row);
    match worker.state {
        WorkerState::Stopped => {
            return Err(ApiError::Conflict(format!("worker {id} has stopped")));
        }
        WorkerState::Lost => {
            return Err(ApiError::Conflict(format!(
                "worker {id} is lost (not heard since {}); a drain cannot reach it",
                worker.last_seen.to_rfc3339()
            )));
        }
        WorkerState::Ready | WorkerState::Draining => {}
    }
    if !state.control.drain(&id).await {
        return Err(ApiError::Unavailable(
            "the broker did not take the drain request; try again shortly".into(),
        ));
    }
    tracing::info!(worker = %id, %operator, "drain requested");
    let message = match worker.state {
        WorkerState::Draining => format!("worker {id} was draining already; asked again"),
        _ => format!(
            "worker {id} asked to drain: it takes no new jobs, finishes those it holds and exits"
        ),
    };
    Ok((StatusCode::ACCEPTED, Json(WorkerDrain { worker, message })))
}
