//! What every resource reads from a request the same way: a body within a
//! configured limit, an id from the path, and the query of a list, with the
//! page that follows from it.

use crate::error::{ApiError, ApiResult};
use axum::body::Body;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use bytes::Bytes;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

/// Reads a body up to `limit` bytes (413 beyond it) within `timeout`
/// (408 past it, so a slow client cannot hold a request for ever). The
/// buffer is sized from `Content-Length` when it is given and within the
/// limit, so the body is held once, never copied.
pub async fn read_body(
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
    what: &str,
) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let too_large =
        || ApiError::PayloadTooLarge(format!("{what} exceeds the limit of {limit} bytes"));
    let hint =
        usize::try_from(axum::body::HttpBody::size_hint(&body).lower()).unwrap_or(usize::MAX);
    if hint > limit {
        return Err(too_large());
    }
    let read = async {
        let mut body = body;
        let mut buf = bytes::BytesMut::with_capacity(hint);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::BadRequest(format!("could not read the request body: {e}"))
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(too_large());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        ApiError::RequestTimeout(format!(
            "{what} was not received within {timeout:?} (KILN_BODY_TIMEOUT)"
        ))
    })?
}

/// The id in a path such as `/v1/jobs/{id}`.
pub fn parse_id(raw: &str, what: &'static str) -> ApiResult<Uuid> {
    // A malformed id names nothing this tenant owns.
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(what))
}

/// The query of a list. As an extractor it answers 400 for unknown or
/// malformed parameters; take it as `Result<ListQuery, ApiError>` to decide
/// when that error counts.
/// As documented it is the query of `GET /v1/batches/{id}/jobs`, whose
/// cursor is a job's index; `GET /v1/batches` states its own parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// 1..=1000, default 100 (batches) or 1000 (jobs).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,9}$")]
    pub cursor: Option<String>,
    /// Only jobs in this state (jobs of a batch only).
    #[param(value_type = Option<kiln_protocol::api::JobState>)]
    pub state: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for ListQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(q) = Query::<ListQuery>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        Ok(q)
    }
}

impl ListQuery {
    /// The page size: `limit` in 1..=1000, or `default` when absent.
    pub fn limit(&self, default: i64) -> ApiResult<i64> {
        match &self.limit {
            None => Ok(default),
            Some(s) => match s.parse::<i64>() {
                Ok(n) if (1..=1000).contains(&n) => Ok(n),
                _ => Err(ApiError::BadRequest(format!(
                    "limit {s:?} must be a whole number in 1..=1000"
                ))),
            },
        }
    }

    /// The cursor read by `parse`, which answers `None` for a cursor this
    /// API never gave out.
    pub fn cursor<T>(&self, parse: impl FnOnce(&str) -> Option<T>) -> ApiResult<Option<T>> {
        match &self.cursor {
            None => Ok(None),
            Some(c) => parse(c).map(Some).ok_or_else(|| {
                ApiError::BadRequest(format!("cursor {c:?} is not one this API gave out"))
            }),
        }
    }
}

/// One page from `rows`, fetched with `limit + 1` so that a further row
/// shows there is a next page; the cursor is `cursor_of` the page's last row.
pub fn page<T>(
    mut rows: Vec<T>,
    limit: i64,
    cursor_of: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(cursor_of)
    } else {
        None
    };
    (rows, next_cursor)
}
