//! API errors as RFC 9457 problem details (`application/problem+json`).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

pub use kiln_protocol::api::{FieldProblem, Problem};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{detail}")]
    Validation {
        detail: String,
        errors: Vec<FieldProblem>,
    },
    #[error("{detail}")]
    TooManyRequests { detail: String, retry_after: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        if database_unreachable(&e) {
            tracing::warn!(error = %e, "the database is unreachable");
            return ApiError::Unavailable("the database is unreachable; try again shortly".into());
        }
        ApiError::Internal(anyhow::Error::new(e).context("database"))
    }
}

/// Whether `e` says PostgreSQL cannot be reached now (an outage, a restart,
/// a failover), rather than that a query is wrong: no connection to be had,
/// a connection lost or cut during its handshake (which sqlx reports as a
/// protocol error, as when a proxy in front of the database has no backend),
/// or the server refusing connections while it shuts down or starts
/// (SQLSTATE classes 08 and 57P).
pub(crate) fn database_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// Whether an error chain holds a [`database_unreachable`] sqlx error.
pub(crate) fn database_unreachable_in(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<sqlx::Error>()
            .is_some_and(database_unreachable)
    })
}

/// Seconds a client is asked to wait before trying again after a 503.
const RETRY_AFTER_SECS: &str = "5";

impl ApiError {
    pub fn validation(errors: Vec<FieldProblem>) -> ApiError {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.pointer, one.message),
            many => format!("{} fields are invalid; nothing was stored", many.len()),
        };
        ApiError::Validation { detail, errors }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad-request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload-too-large",
            ApiError::UnsupportedMediaType(_) => "unsupported-media-type",
            ApiError::RequestTimeout(_) => "request-timeout",
            ApiError::Validation { .. } => "validation",
            ApiError::TooManyRequests { .. } => "too-many-requests",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn problem(&self) -> Problem {
        let status = self.status();
        let detail = match self {
            // The chain goes to the log, not to the client.
            ApiError::Internal(_) => "internal error; see the dispatcher's log".to_string(),
            other => other.to_string(),
        };
        Problem {
            kind: format!("urn:kiln:problem:{}", self.slug()),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            status: status.as_u16(),
            detail,
            errors: match self {
                ApiError::Validation { errors, .. } => errors.clone(),
                _ => Vec::new(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = format!("{e:#}"), "request failed");
        }
        let problem = self.problem();
        let mut resp = (
            self.status(),
            [(header::CONTENT_TYPE, "application/problem+json")],
            serde_json::to_vec(&problem).expect("problems serialize"),
        )
            .into_response();
        if let ApiError::TooManyRequests { retry_after, .. } = &self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(*retry_after));
        }
        if matches!(self, ApiError::Unavailable(_)) {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
