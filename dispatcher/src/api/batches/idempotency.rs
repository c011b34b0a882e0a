//! `Idempotency-Key`: the same key with the same body answers the batch
//! stored the first time; with another body it is a conflict. A key
//! belongs to its tenant.

use super::intake::Format;
use crate::api::views;
use crate::error::{ApiError, ApiResult};
use crate::store;
use axum::http::HeaderMap;
use kiln_protocol::api::Batch;
use sha2::{Digest, Sha256};

const MAX_IDEMPOTENCY_KEY: usize = 200;

/// The request's key, if it sent one; 400 for an unusable key.
pub fn key_of(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let k = v
        .to_str()
        .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?
        .trim();
    if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
        )));
    }
    Ok(Some(k.to_string()))
}

/// What makes two submissions the same: the format and the body's bytes.
pub fn request_hash(format: Format, body: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(match format {
        Format::Json => b"json\n".as_slice(),
        Format::Ndjson => b"ndjson\n".as_slice(),
    });
    hasher.update(body);
    hasher.finalize().to_vec()
}

/// The batch stored under `key`, if any; 409 when it was stored for a
/// request with another hash.
pub async fn replay(
    tx: &mut store::Tx<'_>,
    tenant: &str,
    key: &str,
    hash: &[u8],
) -> ApiResult<Option<Batch>> {
    let Some((id, stored)) = store::batches::by_idempotency_key(tx, tenant, key).await? else {
        return Ok(None);
    };
    if stored != hash {
        return Err(ApiError::Conflict(format!(
            "Idempotency-Key {key:?} was used for batch {id} with a different request body"
        )));
    }
    let row = store::batches::get(tx, tenant, id)
        .await?
        .ok_or(ApiError::NotFound("batch"))?;
    Ok(Some(views::batch(row)))
}
