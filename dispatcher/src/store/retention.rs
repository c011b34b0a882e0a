//! What the pruner deletes: finished batches past their tenant's
//! retention, uploads nobody uses, and the objects they leave behind.

use super::Tx;
use kiln_protocol::JobState;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// Finished batches past their tenant's retention (`default` when the
/// tenant has none of its own), oldest first: at most `max_batches`, and
/// no more jobs in all than `max_jobs` (but always one batch, however
/// large). Locked until the transaction ends.
pub async fn expired_batches(
    tx: &mut Tx<'_>,
    default: Duration,
    max_batches: i64,
    max_jobs: i64,
) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(include_str!("sql/expired_batches.sql"))
        .bind(default.as_secs_f64())
        .bind(max_batches)
        .bind(max_jobs)
        .fetch_all(&mut **tx)
        .await
}

/// What a pass would delete now (see [`preview`]).
#[derive(Debug, sqlx::FromRow)]
pub struct Preview {
    /// The expired batches, oldest first.
    pub batches: Vec<Uuid>,
    /// Their jobs.
    pub jobs: i64,
    /// Expired uploads.
    pub uploads: i64,
    /// Keys still queued for deletion from the bucket.
    pub queued: i64,
}

/// What a pass would delete now, locking and deleting nothing.
pub async fn preview(db: &PgPool, default: Duration) -> sqlx::Result<Preview> {
    sqlx::query_as(include_str!("sql/preview_prune.sql"))
        .bind(default.as_secs_f64())
        .fetch_one(db)
        .await
}

/// Deletes `batches` with their jobs, results, outbox rows, attempt
/// tokens and counts, and queues the objects under their prefixes for
/// deletion (see [`claim_objects`]); answers how many jobs went.
pub async fn delete_batches(tx: &mut Tx<'_>, batches: &[Uuid]) -> sqlx::Result<i64> {
    let jobs: i64 = sqlx::query_scalar(include_str!("sql/delete_batch_jobs.sql"))
        .bind(batches)
        .fetch_one(&mut **tx)
        .await?;
    sqlx::query(include_str!("sql/unlink_retries.sql"))
        .bind(batches)
        .execute(&mut **tx)
        .await?;
    sqlx::query(include_str!("sql/delete_batches.sql"))
        .bind(batches)
        .execute(&mut **tx)
        .await?;
    Ok(jobs)
}

/// Deletes at most `limit` uploads that no job refers to and that were
/// not used for longer than their tenant's retention, and queues their
/// objects for deletion; answers their `(tenant, key)`.
pub async fn delete_expired_uploads(
    tx: &mut Tx<'_>,
    default: Duration,
    limit: i64,
) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as(include_str!("sql/expired_uploads.sql"))
        .bind(default.as_secs_f64())
        .bind(limit)
        .fetch_all(&mut **tx)
        .await
}

/// Claims up to `limit` objects queued for deletion, `(key, is_prefix)`,
/// for `lease` (another pruner skips them meanwhile); the claim is
/// committed at once.
pub async fn claim_objects(
    db: &PgPool,
    limit: i64,
    lease: Duration,
) -> sqlx::Result<Vec<(String, bool)>> {
    sqlx::query_as(include_str!("sql/claim_prune_objects.sql"))
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(db)
        .await
}

/// The objects of a claimed `key` are gone from the bucket.
pub async fn objects_deleted(db: &PgPool, key: &str) -> sqlx::Result<()> {
    sqlx::query(include_str!("sql/delete_prune_object.sql"))
        .bind(key)
        .execute(db)
        .await?;
    Ok(())
}

/// Ends the claims on `keys`: the next pass tries them again.
pub async fn release_objects(db: &PgPool, keys: &[String]) -> sqlx::Result<()> {
    sqlx::query(include_str!("sql/release_prune_objects.sql"))
        .bind(keys)
        .execute(db)
        .await?;
    Ok(())
}

/// Who owns an object, as the database knows it.
#[derive(Debug, sqlx::FromRow)]
pub struct Owner {
    /// A job's id, or `{tenant}/{upload}` for an upload.
    pub id: String,
    /// The job's state, or `upload`.
    pub state: String,
    /// The keys a job keeps: its results (none for an upload).
    pub keys: Vec<String>,
}

impl Owner {
    pub fn job_state(&self) -> Option<JobState> {
        self.state.parse().ok()
    }
}

/// The jobs among `jobs` and the uploads among `uploads` that exist.
pub async fn owners(db: &PgPool, jobs: &[Uuid], uploads: &[String]) -> sqlx::Result<Vec<Owner>> {
    sqlx::query_as(include_str!("sql/object_owners.sql"))
        .bind(jobs)
        .bind(uploads)
        .fetch_all(db)
        .await
}

/// The tenant after `after` by name (the first for `""`).
pub async fn next_tenant(db: &PgPool, after: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(include_str!("sql/next_tenant.sql"))
        .bind(after)
        .fetch_optional(db)
        .await
}

/// Sets a tenant's own retention (`None`: the default); `None` when there
/// is no such tenant, else the retention now stored.
pub async fn set_tenant_retention(
    db: &PgPool,
    tenant: &str,
    retention: Option<Duration>,
) -> sqlx::Result<Option<Option<Duration>>> {
    let secs: Option<Option<i64>> =
        sqlx::query_scalar(include_str!("sql/set_tenant_retention.sql"))
            .bind(tenant)
            .bind(retention.map(|d| d.as_secs().max(1) as i64))
            .fetch_optional(db)
            .await?;
    Ok(secs.map(own_retention))
}

/// A tenant's own retention: `None` when there is no such tenant.
pub async fn tenant_retention(db: &PgPool, tenant: &str) -> sqlx::Result<Option<Option<Duration>>> {
    let secs: Option<Option<i64>> = sqlx::query_scalar(include_str!("sql/tenant_retention.sql"))
        .bind(tenant)
        .fetch_optional(db)
        .await?;
    Ok(secs.map(own_retention))
}

/// A tenant's `retention_secs` (`None`: the default).
fn own_retention(secs: Option<i64>) -> Option<Duration> {
    secs.map(|s| Duration::from_secs(s as u64))
}
