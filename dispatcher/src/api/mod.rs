//! The HTTP API: one file per resource, each with its routes.
//!
//! - `batches`, `jobs`, `uploads`: the resources under `/v1`; `workers`: the
//!   worker registry, for operator tokens.
//! - `stream`: the event streams of a batch and of a tenant (SSE).
//! - `ui`: the batch page (`/ui/`), its files built into the binary.
//! - `health`: liveness, readiness, metrics and the OpenAPI document.
//! - `extract`: what every resource reads the same way (bodies, ids, list
//!   queries and their pages).
//! - `views`: the protocol's `Batch` and `Job` built from stored rows.

pub mod batches;
mod extract;
pub mod health;
pub mod jobs;
pub mod stream;
pub mod ui;
pub mod uploads;
mod views;
pub mod workers;

use crate::state::AppState;
use axum::extract::DefaultBodyLimit;
use axum::Router;

/// Every route. `openapi_json` is the document `/openapi.json` answers
/// (see `crate::openapi`, which is generated from this module).
pub fn router(state: AppState, openapi_json: String) -> Router {
    // The request limit holds the API's routes only: probes and /metrics
    // answer however busy the API is.
    let v1 = Router::new()
        .merge(batches::routes())
        .merge(jobs::routes())
        .merge(uploads::routes())
        .merge(workers::routes())
        .merge(stream::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            within_request_limit,
        ));
    Router::new()
        .merge(v1)
        .merge(health::routes(openapi_json))
        .merge(ui::routes())
        .fallback(health::not_found)
        // Bodies are read with explicit, configured limits.
        .layer(DefaultBodyLimit::disable())
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Holds a request until one of KILN_MAX_CONCURRENT_REQUESTS permits is
/// free, so that a flood of requests waits instead of piling up work.
async fn within_request_limit(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let _permit = state.requests.acquire().await;
    next.run(req).await
}
