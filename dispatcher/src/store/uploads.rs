//! Images users upload (VQGAN init images).

use super::Tx;

pub struct NewUpload<'a> {
    pub id: &'a str,
    pub tenant: &'a str,
    pub key: &'a str,
    pub width: i32,
    pub height: i32,
    pub format: &'a str,
    pub bytes: i64,
}

pub async fn insert(tx: &mut Tx<'_>, u: &NewUpload<'_>) -> sqlx::Result<()> {
    sqlx::query(include_str!("sql/insert_upload.sql"))
        .bind(u.id)
        .bind(u.tenant)
        .bind(u.key)
        .bind(u.width)
        .bind(u.height)
        .bind(u.format)
        .bind(u.bytes)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Which of `ids` are uploads of `tenant`; marks them used now, so that
/// the pruner leaves them (it skips rows locked by a submit in progress,
/// and reads the time once the submit committed).
pub async fn existing(tx: &mut Tx<'_>, tenant: &str, ids: &[String]) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(include_str!("sql/existing_uploads.sql"))
        .bind(tenant)
        .bind(ids)
        .fetch_all(&mut **tx)
        .await
}
