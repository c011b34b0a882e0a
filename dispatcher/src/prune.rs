//! Retention: the maintenance task that deletes what has outlived its use.
//!
//! - A finished batch whose last job finished longer ago than its tenant's
//!   retention (`KILN_RETENTION`, or the tenant's own) goes with its jobs,
//!   results, outbox rows, attempt tokens and counts, in transactions of
//!   at most `KILN_PRUNE_CHUNK` jobs that lock only the rows they delete.
//! - An upload no job refers to, unused for as long, goes too.
//! - Their objects are queued (`prune_objects`) in the same transaction as
//!   the rows are deleted, and deleted from the bucket after it commits; a
//!   crash in between leaves the queue row, and the next pass finishes it.
//!   So a batch disappears from the API at once and whole, and its objects
//!   follow.
//! - Orphans, objects no row refers to (an upload whose row never
//!   committed, the extra images of a duplicate run, what a failed job
//!   left), are deleted once older than `KILN_ORPHAN_GRACE`; each pass
//!   looks through a few pages of the bucket, going on where the last one
//!   stopped. Objects outside Kiln's key layout are never touched.
//!
//! `kiln-dispatcher prune --dry-run` reports what a pass would delete.

use crate::config::Retention;
use crate::store;
use crate::store::retention::Owner;
use kiln_protocol::JobState;
use serde::Serialize;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// What one chunk of the pruner deletes, in the caller's transaction (for
/// tests that hold it open, as the pruner does).
pub use crate::store::retention::delete_batches;
use uuid::Uuid;

/// Queued object deletions handled per read of the queue.
const QUEUE_PAGE: i64 = 100;
/// Queued keys the bucket may refuse in one pass before the pass leaves
/// the queue for the next.
const FAILURES_PER_PASS: u32 = 3;
/// How long a pruner holds the queued keys it claimed; a pruner that dies
/// holding some leaves them to the others after it.
const CLAIM_LEASE: Duration = Duration::from_secs(600);
/// Batches one transaction takes at most (and locks while it deletes
/// them); `KILN_PRUNE_CHUNK` bounds their jobs.
const BATCHES_PER_CHUNK: i64 = 100;
/// Uploads deleted per transaction.
const UPLOAD_CHUNK: i64 = 500;
/// Keys per `DeleteObjects` call (S3's maximum).
const DELETE_PAGE: usize = 1000;

/// What the pruner deleted, or would delete.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub batches: u64,
    pub jobs: u64,
    pub uploads: u64,
    /// Objects deleted for the batches and uploads (and, in a dry run, the
    /// keys and prefixes still queued from an earlier pass).
    pub objects: u64,
    pub orphans: u64,
    /// In a dry run: the batches that would go.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub batch_ids: Vec<Uuid>,
    /// In a dry run: the orphans that would go.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub orphan_keys: Vec<String>,
}

impl Report {
    fn is_empty(&self) -> bool {
        self.batches + self.jobs + self.uploads + self.objects + self.orphans == 0
    }

    /// Adds what this pass deleted to the `/metrics` counters.
    fn count(&self, c: &crate::metrics::Pruned) {
        c.batches.inc_by(self.batches);
        c.jobs.inc_by(self.jobs);
        c.uploads.inc_by(self.uploads);
        c.objects.inc_by(self.objects);
        c.orphans.inc_by(self.orphans);
    }
}

/// The pruner: the database, the bucket and the retention settings.
pub struct Pruner {
    pub db: PgPool,
    pub s3: aws_sdk_s3::Client,
    pub bucket: String,
    pub settings: Retention,
    /// Where the orphan scan goes on: a tenant, and the continuation
    /// token of its listing.
    scan_from: tokio::sync::Mutex<Option<(String, Option<String>)>>,
}

impl Pruner {
    pub fn new(db: PgPool, s3: aws_sdk_s3::Client, bucket: &str, settings: Retention) -> Pruner {
        Pruner {
            db,
            s3,
            bucket: bucket.to_string(),
            settings,
            scan_from: Default::default(),
        }
    }

    /// A pruner with the dispatcher's own bucket client (its settings
    /// resolved as `serve` resolves them).
    pub async fn connect(
        db: PgPool,
        s3: &crate::config::S3Settings,
        settings: Retention,
    ) -> anyhow::Result<Pruner> {
        let bucket = s3.resolve().await?;
        let client = crate::state::s3_client(&bucket, s3.timeout);
        Ok(Pruner::new(db, client, &s3.bucket, settings))
    }

    /// Prunes every `KILN_PRUNE_INTERVAL` until `stop` (never, when 0).
    pub(crate) async fn run(
        self,
        counters: std::sync::Arc<crate::metrics::Metrics>,
        stop: CancellationToken,
    ) {
        let every = self.settings.prune_interval;
        if every.is_zero() {
            return;
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let pages = self.settings.orphan_scan_pages as usize;
            match self.pass(pages).await {
                Ok(r) => {
                    r.count(&counters.pruned);
                    if !r.is_empty() {
                        tracing::info!(
                            batches = r.batches,
                            jobs = r.jobs,
                            uploads = r.uploads,
                            objects = r.objects,
                            orphans = r.orphans,
                            "pruned"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "pruning failed; will try again")
                }
            }
        }
    }

    /// One pass: queued objects left by an earlier pass, expired batches
    /// and uploads chunk by chunk (each chunk's objects right after its
    /// commit), then `scan_pages` pages of the orphan scan.
    pub async fn pass(&self, scan_pages: usize) -> anyhow::Result<Report> {
        let mut r = Report::default();
        r.objects += self.delete_queued().await?;
        loop {
            let mut tx = self.db.begin().await?;
            let ids = store::retention::expired_batches(
                &mut tx,
                self.settings.retention,
                BATCHES_PER_CHUNK,
                self.settings.prune_chunk,
            )
            .await?;
            if ids.is_empty() {
                break;
            }
            r.jobs += store::retention::delete_batches(&mut tx, &ids).await? as u64;
            tx.commit().await?;
            r.batches += ids.len() as u64;
            r.objects += self.delete_queued().await?;
        }
        loop {
            let mut tx = self.db.begin().await?;
            let gone = store::retention::delete_expired_uploads(
                &mut tx,
                self.settings.retention,
                UPLOAD_CHUNK,
            )
            .await?;
            tx.commit().await?;
            r.uploads += gone.len() as u64;
            r.objects += self.delete_queued().await?;
            if (gone.len() as i64) < UPLOAD_CHUNK {
                break;
            }
        }
        // A bucket that fails the scan fails no more than the scan: what
        // the pass deleted is reported, and the next pass scans again.
        if let Err(e) = self.scan_orphans(scan_pages, true, &mut r).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "the orphan scan failed; the next pass goes on"
            );
        }
        Ok(r)
    }

    /// What a pass would delete now, deleting and locking nothing: the
    /// rows counted, the whole bucket looked through for orphans.
    pub async fn dry_run(&self) -> anyhow::Result<Report> {
        let p = store::retention::preview(&self.db, self.settings.retention).await?;
        let mut r = Report {
            batches: p.batches.len() as u64,
            jobs: p.jobs as u64,
            uploads: p.uploads as u64,
            objects: p.queued as u64,
            batch_ids: p.batches,
            ..Default::default()
        };
        *self.scan_from.lock().await = None;
        self.scan_orphans(usize::MAX, false, &mut r).await?;
        Ok(r)
    }

    /// Deletes the objects queued for deletion, then their queue rows, a
    /// page at a time, each page claimed for [`CLAIM_LEASE`] (so that two
    /// dispatchers never delete, nor count, the same key, and no
    /// transaction stays open while the bucket works); answers how many
    /// objects went. A key the bucket refuses is released for the next
    /// pass, which it ends once its page is done (the next page would claim
    /// it again); [`FAILURES_PER_PASS`] refusals end that page early (the
    /// bucket is away, then), releasing the rest of it.
    async fn delete_queued(&self) -> anyhow::Result<u64> {
        let (mut n, mut failures) = (0, 0);
        loop {
            let queued = store::retention::claim_objects(&self.db, QUEUE_PAGE, CLAIM_LEASE).await?;
            let (mut release, mut tried) = (Vec::new(), 0);
            for (key, is_prefix) in &queued {
                if failures >= FAILURES_PER_PASS {
                    break;
                }
                tried += 1;
                let gone = if *is_prefix {
                    self.delete_prefix(key).await
                } else {
                    self.delete_keys(std::slice::from_ref(key)).await
                };
                match gone {
                    Ok(k) => {
                        n += k;
                        store::retention::objects_deleted(&self.db, key).await?;
                    }
                    Err(e) => {
                        tracing::warn!(
                            key,
                            error = format!("{e:#}"),
                            "could not delete queued objects; they stay queued"
                        );
                        release.push(key.clone());
                        failures += 1;
                    }
                }
            }
            release.extend(queued[tried..].iter().map(|(key, _)| key.clone()));
            if !release.is_empty() {
                store::retention::release_objects(&self.db, &release).await?;
            }
            if failures > 0 || (queued.len() as i64) < QUEUE_PAGE {
                return Ok(n);
            }
        }
    }

    /// Deletes every object under `prefix`.
    async fn delete_prefix(&self, prefix: &str) -> anyhow::Result<u64> {
        let mut n = 0;
        let mut last: Option<String> = None;
        loop {
            let page = self
                .s3
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .max_keys(DELETE_PAGE as i32)
                .send()
                .await?;
            let keys: Vec<String> = page
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string))
                .collect();
            if keys.is_empty() {
                return Ok(n);
            }
            anyhow::ensure!(
                last.as_deref() != keys.last().map(String::as_str),
                "the bucket still lists {} after deleting it",
                keys[keys.len() - 1]
            );
            n += self.delete_keys(&keys).await?;
            last = keys.last().cloned();
        }
    }

    /// Deletes `keys` (at most [`DELETE_PAGE`]); a key already gone counts.
    async fn delete_keys(&self, keys: &[String]) -> anyhow::Result<u64> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        let objects = keys
            .iter()
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<Result<Vec<_>, _>>()?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()?;
        let out = self
            .s3
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await?;
        if let Some(e) = out.errors().first() {
            anyhow::bail!(
                "deleting {} from the bucket: {} {}",
                e.key().unwrap_or("?"),
                e.code().unwrap_or("?"),
                e.message().unwrap_or("")
            );
        }
        Ok(keys.len() as u64)
    }

    /// Looks through up to `pages` pages of the bucket from where the
    /// scan stands, tenant by tenant (only under `{tenant}/` of tenants
    /// the database knows: a shared bucket's other objects are not
    /// Kiln's), deleting (or, without `delete`, listing in `r`) the
    /// orphans older than the grace period.
    async fn scan_orphans(&self, pages: usize, delete: bool, r: &mut Report) -> anyhow::Result<()> {
        let old = SystemTime::now() - self.settings.orphan_grace;
        let mut at = self.scan_from.lock().await;
        for _ in 0..pages {
            let (tenant, token) = match at.take() {
                Some(a) => a,
                None => match store::retention::next_tenant(&self.db, "").await? {
                    Some(t) => (t, None),
                    None => break,
                },
            };
            let page = self
                .s3
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(format!("{tenant}/"))
                .set_continuation_token(token)
                .max_keys(DELETE_PAGE as i32)
                .send()
                .await?;
            let keys: Vec<String> = page
                .contents()
                .iter()
                .filter(|o| {
                    o.last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .is_some_and(|t| t < old)
                })
                .filter_map(|o| o.key().map(str::to_string))
                .collect();
            let orphans = self.orphans(&keys).await?;
            r.orphans += orphans.len() as u64;
            if !delete {
                r.orphan_keys.extend(orphans);
            } else if !orphans.is_empty() {
                self.delete_keys(&orphans).await?;
                tracing::info!(keys = ?orphans, "deleted orphan objects");
            }
            *at = match page.next_continuation_token() {
                Some(t) => Some((tenant, Some(t.to_string()))),
                None => match store::retention::next_tenant(&self.db, &tenant).await? {
                    Some(next) => Some((next, None)),
                    // Every tenant looked through: the next pass starts again.
                    None => break,
                },
            };
        }
        Ok(())
    }

    /// The keys among `keys` that no row refers to.
    async fn orphans(&self, keys: &[String]) -> anyhow::Result<Vec<String>> {
        let parsed: Vec<(&String, Key)> = keys.iter().map(|k| (k, Key::parse(k))).collect();
        let jobs: Vec<Uuid> = parsed
            .iter()
            .filter_map(|(_, k)| match k {
                Key::Job { job } => Some(*job),
                _ => None,
            })
            .collect();
        let uploads: Vec<String> = parsed
            .iter()
            .filter_map(|(_, k)| match k {
                Key::Upload { id, .. } => Some(id.to_string()),
                _ => None,
            })
            .collect();
        if jobs.is_empty() && uploads.is_empty() {
            return Ok(Vec::new());
        }
        let owners: HashMap<String, Owner> = store::retention::owners(&self.db, &jobs, &uploads)
            .await?
            .into_iter()
            .map(|o| (o.id.clone(), o))
            .collect();
        Ok(parsed
            .into_iter()
            .filter(|(k, key)| key.is_orphan(k, &owners))
            .map(|(k, _)| k.clone())
            .collect())
    }
}

/// Sets a tenant's own retention (`None`: the dispatcher's default);
/// answers it as stored, or `None` when there is no such tenant.
pub async fn set_tenant_retention(
    db: &PgPool,
    tenant: &str,
    retention: Option<Duration>,
) -> anyhow::Result<Option<Option<Duration>>> {
    Ok(store::retention::set_tenant_retention(db, tenant, retention).await?)
}

/// A tenant's own retention (`None` inside: the default), or `None` when
/// there is no such tenant.
pub async fn tenant_retention(
    db: &PgPool,
    tenant: &str,
) -> anyhow::Result<Option<Option<Duration>>> {
    Ok(store::retention::tenant_retention(db, tenant).await?)
}

/// What an object's key says about who owns it.
#[derive(Debug, PartialEq, Eq)]
enum Key<'a> {
    /// `{tenant}/uploads/{id}`
    Upload { tenant: &'a str, id: &'a str },
    /// `{tenant}/{batch}/{job}/{name}`
    Job { job: Uuid },
    /// Not Kiln's layout: never touched.
    Other,
}

impl<'a> Key<'a> {
    fn parse(key: &'a str) -> Key<'a> {
        let parts: Vec<&str> = key.split('/').collect();
        match parts.as_slice() {
            [tenant, "uploads", id] if !id.is_empty() => Key::Upload { tenant, id },
            [_, batch, job, name] if !name.is_empty() && Uuid::parse_str(batch).is_ok() => {
                Uuid::parse_str(job).map_or(Key::Other, |job| Key::Job { job })
            }
            _ => Key::Other,
        }
    }

    /// Whether the object `key` is owned by none of `owners` (by job id, or
    /// `{tenant}/{upload}`): an upload's object without its row; a job's
    /// object when the job is gone, or ended without keeping it (a
    /// succeeded job keeps its results and its `metadata.json`). A queued
    /// or running job's objects are its work in progress.
    fn is_orphan(&self, key: &str, owners: &HashMap<String, Owner>) -> bool {
        match self {
            Key::Other => false,
            Key::Upload { tenant, id } => !owners.contains_key(&format!("{tenant}/{id}")),
            Key::Job { job } => match owners.get(&job.to_string()) {
                None => true,
                Some(o) => match o.job_state() {
                    Some(JobState::Queued | JobState::Running) => false,
                    Some(JobState::Succeeded) => {
                        !(o.keys.iter().any(|k| k == key) || key.ends_with("/metadata.json"))
                    }
                    _ => true,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(id: &str, state: &str, keys: &[&str]) -> (String, Owner) {
        let o = Owner {
            id: id.into(),
            state: state.into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
        };
        (id.to_string(), o)
    }

    #[test]
    fn keys_are_read_by_kilns_layout_only() {
        let (b, j) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(
            Key::parse("acme/uploads/up_1"),
            Key::Upload {
                tenant: "acme",
                id: "up_1"
            }
        );
        assert_eq!(
            Key::parse(&format!("acme/{b}/{j}/0.png")),
            Key::Job { job: j }
        );
        assert_eq!(Key::parse(&format!("acme/{b}/{j}/")), Key::Other);
        assert_eq!(Key::parse("acme/notes.txt"), Key::Other);
        assert_eq!(Key::parse(&format!("acme/x/{j}/0.png")), Key::Other);
        assert_eq!(Key::parse("acme/uploads/"), Key::Other);
    }

    #[test]
    fn orphans_are_objects_no_row_keeps() {
        let (b, done, failed, running, gone) = (
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Uuid::from_u128(3),
            Uuid::from_u128(4),
            Uuid::from_u128(5),
        );
        let kept = format!("acme/{b}/{done}/0.png");
        let owners: HashMap<String, Owner> = [
            owner(&done.to_string(), "succeeded", &[&kept]),
            owner(&failed.to_string(), "failed", &[]),
            owner(&running.to_string(), "running", &[]),
            owner("acme/up_1", "upload", &["acme/uploads/up_1"]),
        ]
        .into_iter()
        .collect();
        let orphan = |k: String| Key::parse(&k).is_orphan(&k, &owners);
        assert!(!orphan(kept.clone()));
        assert!(!orphan(format!("acme/{b}/{done}/metadata.json")));
        assert!(orphan(format!("acme/{b}/{done}/1.png")), "a rank not kept");
        assert!(orphan(format!("acme/{b}/{failed}/0.png")));
        assert!(
            !orphan(format!("acme/{b}/{running}/0.png")),
            "work in progress"
        );
        assert!(orphan(format!("acme/{b}/{gone}/0.png")));
        assert!(!orphan("acme/uploads/up_1".into()));
        assert!(orphan("acme/uploads/up_2".into()));
        assert!(orphan("other/uploads/up_1".into()), "another tenant's key");
        assert!(!orphan("acme/readme.txt".into()));
    }
}
