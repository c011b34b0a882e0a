//! The job feed (see the `job_feed` migration): every change of a job's
//! state, in an order a reader can resume exactly, for the event streams.

use chrono::{DateTime, Utc};
use kiln_protocol::JobState;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// A place in the feed: after the row `id` of transaction `tx`. As an SSE
/// event id it reads `TX-ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub tx: u64,
    pub id: i64,
}

impl Cursor {
    /// A `Last-Event-ID` as a cursor (`[0-9]{1,19}-[0-9]{1,18}`: the OpenAPI
    /// document states it, and that an empty one means none); `None` when it is not one.
    pub fn parse(s: &str) -> Option<Cursor> {
        let (tx, id) = s.split_once('-')?;
        let digits = |d: &str, most: usize| {
            (1..=most).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(tx, 19) || !digits(id, 18) {
            return None;
        }
        Some(Cursor {
            tx: tx.parse().ok()?,
            id: id.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.tx, self.id)
    }
}

/// What a stream follows.
#[derive(Debug, Clone)]
pub enum Scope {
    Batch(Uuid),
    Tenant(String),
}

#[derive(Debug, sqlx::FromRow)]
pub struct FeedRow {
    pub id: i64,
    pub tx: String,
    pub job_id: Uuid,
    pub state: JobState,
    pub attempt: i32,
    pub at: DateTime<Utc>,
}

impl FeedRow {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            tx: self.tx.parse().unwrap_or(0),
            id: self.id,
        }
    }
}

/// Where a stream that names no cursor starts: at the changes still to
/// commit.
pub async fn start(db: &PgPool) -> sqlx::Result<Cursor> {
    let tx: String = sqlx::query_scalar(include_str!("sql/feed_start.sql"))
        .fetch_one(db)
        .await?;
    Ok(Cursor {
        tx: tx.parse().unwrap_or(0),
        id: 0,
    })
}

/// Up to `limit` rows of `scope` after `after`, of transactions that ended.
pub async fn after(
    db: &PgPool,
    scope: &Scope,
    after: &Cursor,
    limit: i64,
) -> sqlx::Result<Vec<FeedRow>> {
    let q = match scope {
        Scope::Batch(id) => sqlx::query_as(include_str!("sql/feed_of_batch.sql")).bind(*id),
        Scope::Tenant(t) => sqlx::query_as(include_str!("sql/feed_of_tenant.sql")).bind(t),
    };
    q.bind(after.tx.to_string())
        .bind(after.id)
        .bind(limit)
        .fetch_all(db)
        .await
}

/// Whether the row of `cursor` is still kept (and is `tenant`'s).
pub async fn kept(db: &PgPool, tenant: &str, cursor: &Cursor) -> sqlx::Result<bool> {
    sqlx::query_scalar(include_str!("sql/feed_row_kept.sql"))
        .bind(cursor.id)
        .bind(tenant)
        .fetch_one(db)
        .await
}

/// Deletes up to `limit` rows older than `keep`; answers how many went.
pub async fn forget(db: &PgPool, keep: Duration, limit: i64) -> sqlx::Result<u64> {
    Ok(sqlx::query(include_str!("sql/forget_feed.sql"))
        .bind(keep.as_secs_f64())
        .bind(limit)
        .execute(db)
        .await?
        .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_and_refuse_what_they_are_not() {
        let c = Cursor { tx: 812, id: 40 };
        assert_eq!(Cursor::parse(&c.to_string()), Some(c));
        let longest = format!("{}-{}", "9".repeat(19), "9".repeat(18));
        assert!(Cursor::parse(&longest).is_some());
        for bad in [
            "",
            "12",
            "a-1",
            "1-b",
            "1--2",
            "-1",
            "1-2-3",
            "+1-2",
            " 1-2",
            "1-2 ",
            &format!("{}-1", "9".repeat(20)),
            &format!("1-{}", "9".repeat(19)),
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad:?}");
        }
    }
}
