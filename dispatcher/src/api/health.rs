//! Liveness, readiness, metrics and the OpenAPI document.

use crate::error::{ApiError, Problem};
use crate::state::AppState;
use crate::store;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "ok", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub postgres: bool,
    pub rabbitmq: bool,
}

/// PostgreSQL and RabbitMQ are reachable.
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness))
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let postgres = store::ping(&state.db).await;
    let rabbitmq = tokio::time::timeout(std::time::Duration::from_secs(3), state.control.ping())
        .await
        .unwrap_or(false);
    let status = if postgres && rabbitmq {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Readiness { postgres, rabbitmq })).into_response()
}

/// Prometheus text: `kiln_jobs{state,engine}`, `kiln_backlog{engine}`,
/// publish confirm latency, event lag, dead letters.
#[utoipa::path(
    get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let counts = store::jobs::counts(&state.db).await?;
    let mut text = state.metrics.render(&counts);
    let pending = store::outbox::pending(&state.db).await?;
    text.push_str("# HELP kiln_outbox_pending Job attempts stored but not yet published.\n");
    text.push_str("# TYPE kiln_outbox_pending gauge\n");
    text.push_str(&format!("kiln_outbox_pending {pending}\n"));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// This API's OpenAPI 3 document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", responses((status = 200, description = "OpenAPI document", body = Object)))]
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::openapi_json(),
    )
        .into_response()
}

pub async fn not_found() -> Response {
    let problem = Problem {
        kind: "urn:kiln:problem:not-found".into(),
        title: "Not Found".into(),
        status: 404,
        detail: "no such route".into(),
        errors: Vec::new(),
    };
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "application/problem+json")],
        serde_json::to_vec(&problem).expect("problems serialize"),
    )
        .into_response()
}
