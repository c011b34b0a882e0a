//! API tokens: random, shown once, stored only as a SHA-256 hash.

use crate::error::ApiError;
use crate::state::AppState;
use crate::store;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

const PREFIX: &str = "kiln_";

/// The tenant a request acts for, from its bearer token.
#[derive(Debug, Clone)]
pub struct Tenant(pub String);

/// A request made with an operator's token (`kiln-dispatcher token create
/// --operator`), which may read the worker registry and drain workers; the
/// tenant it belongs to.
#[derive(Debug, Clone)]
pub struct Operator(pub String);

pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{PREFIX}{}", hex::encode(bytes))
}

/// A job attempt's token (see `JobMessage::token`): 32 random bytes in hex.
/// Stored only as its [`hash_token`].
pub fn attempt_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Tenant names become object-key prefixes, so they are kept plain.
pub fn check_tenant_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && !name.starts_with(['-', '_']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tenant name {name:?} must be 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
        ))
    }
}

/// Creates the tenant if needed and a new token for it; returns the token.
pub async fn create_token(db: &PgPool, tenant: &str) -> anyhow::Result<String> {
    issue_token(db, tenant, false).await
}

/// [`create_token`], for an operator's token when `operator` is set.
pub async fn issue_token(db: &PgPool, tenant: &str, operator: bool) -> anyhow::Result<String> {
    check_tenant_name(tenant).map_err(anyhow::Error::msg)?;
    let token = new_token();
    let mut tx = db.begin().await?;
    store::tokens::insert_tenant(&mut tx, tenant).await?;
    let (id, hash) = (uuid::Uuid::now_v7(), hash_token(&token));
    store::tokens::insert_token(&mut tx, id, tenant, &hash, operator).await?;
    tx.commit().await?;
    Ok(token)
}

/// Revokes one token; answers whether it was active.
pub async fn revoke_token(db: &PgPool, token: &str) -> anyhow::Result<bool> {
    Ok(store::tokens::revoke(db, &hash_token(token)).await?)
}

/// Revokes every token of a tenant; answers how many were active.
pub async fn revoke_tenant(db: &PgPool, tenant: &str) -> anyhow::Result<u64> {
    Ok(store::tokens::revoke_tenant(db, tenant).await?)
}

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (tenant, _) = caller(parts, state).await?;
        Ok(Tenant(tenant))
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match caller(parts, state).await? {
            (tenant, true) => Ok(Operator(tenant)),
            (_, false) => Err(ApiError::Forbidden(
                "this needs an operator's token (kiln-dispatcher token create --operator)".into(),
            )),
        }
    }
}

/// The tenant of a request's bearer token, and whether it is an operator's.
async fn caller(parts: &Parts, state: &AppState) -> Result<(String, bool), ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Unauthorized)?;
    let token = header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| well_formed(t))
        .ok_or(ApiError::Unauthorized)?;
    let hash = hash_token(token);
    if state.unknown_tokens.get(&hash).is_some() {
        return Err(ApiError::Unauthorized);
    }
    match store::tokens::tenant_of(&state.db, &hash).await? {
        Some(found) => Ok(found),
        None => {
            state.unknown_tokens.insert(hash, ());
            Err(ApiError::Unauthorized)
        }
    }
}

/// Whether `token` has the form of one [`new_token`] makes: a token of any
/// other form is refused without a query.
fn well_formed(token: &str) -> bool {
    token.strip_prefix(PREFIX).is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 64);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
        assert_eq!(hash_token(&a).len(), 32);
    }

    #[test]
    fn only_tokens_of_the_issued_form_are_looked_up() {
        assert!(well_formed(&new_token()));
        let good = new_token();
        for bad in [
            "kiln_".to_string(),
            "kiln_xyz".into(),
            good.to_uppercase(),
            format!("{good}0"),
            good[..good.len() - 1].to_string(),
            good.replacen("kiln_", "klin_", 1),
            format!("{}g", &good[..good.len() - 1]),
        ] {
            assert!(!well_formed(&bad), "{bad}");
        }
    }

    #[test]
    fn tenant_names_are_plain() {
        assert!(check_tenant_name("acme").is_ok());
        assert!(check_tenant_name("t_0af3").is_ok());
        for bad in ["", "Acme", "a/b", "../x", "-x", &"a".repeat(65)] {
            assert!(check_tenant_name(bad).is_err(), "{bad}");
        }
    }
}
