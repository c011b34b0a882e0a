//! The outbox the relay drains.

use super::Tx;
use uuid::Uuid;

#[derive(Debug, sqlx::FromRow)]
pub struct Pending {
    pub id: i64,
    pub job_id: Uuid,
    pub attempt: i32,
    pub priority: i16,
    pub batch_id: Uuid,
    pub tenant: String,
    pub prompt: String,
    pub params: serde_json::Value,
    pub state: kiln_protocol::JobState,
    pub job_attempt: i32,
}

/// One relay at a time per engine, so the window is exact across replicas.
/// Returns false when another relay holds the engine.
pub async fn lock_engine(tx: &mut Tx<'_>, engine_index: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar(include_str!("sql/lock_engine.sql"))
        .bind(engine_index)
        .fetch_one(&mut **tx)
        .await
}

/// Jobs of an engine in the broker that no worker has started yet, from
/// the counts the triggers keep: a few rows, whatever the backlog.
pub async fn in_broker(tx: &mut Tx<'_>, engine: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar(include_str!("sql/count_in_broker.sql"))
        .bind(engine)
        .fetch_one(&mut **tx)
        .await
}

/// Where the relay's reading of an engine's outbox stands: per priority,
/// the last row it took. Rows are deleted once published, but stay in the
/// index until vacuum; starting each priority's scan past the last row
/// taken keeps a transaction from walking every row deleted before it.
///
/// A row committed late with a lower id than one already taken, or one
/// whose `not_before` was still ahead, is passed over until the cursor
/// starts again from the beginning, which [`next`] makes it do whenever a
/// read comes back short, and [`Cursor::expire`] at the start of a relay
/// turn at least every [`Cursor::LIFETIME`]: never in the middle of a turn,
/// where rows of a page published but not yet marked would be read again.
#[derive(Debug, Clone)]
pub struct Cursor {
    ranks: Vec<i16>,
    after: Vec<i64>,
    reset_at: std::time::Instant,
}

impl Default for Cursor {
    fn default() -> Self {
        let mut ranks: Vec<i16> = kiln_protocol::Priority::ALL.map(|p| p.rank()).into();
        ranks.sort_unstable_by(|a, b| b.cmp(a));
        let after = vec![0; ranks.len()];
        Cursor {
            ranks,
            after,
            reset_at: std::time::Instant::now(),
        }
    }
}

impl Cursor {
    /// How long reads go on past the cursor before it starts again from
    /// the beginning.
    pub const LIFETIME: std::time::Duration = std::time::Duration::from_secs(1);

    /// Starts every priority's scan from the beginning again.
    fn reset(&mut self) {
        *self = Cursor::default();
    }

    /// Starts from the beginning again when the cursor is older than
    /// [`Cursor::LIFETIME`]; called before a turn reads its first page.
    pub fn expire(&mut self) {
        if self.reset_at.elapsed() >= Cursor::LIFETIME {
            self.reset();
        }
    }

    fn advance(&mut self, rows: &[Pending]) {
        for row in rows {
            if let Some(i) = self.ranks.iter().position(|r| *r == row.priority) {
                self.after[i] = self.after[i].max(row.id);
            }
        }
    }
}

/// The next due rows of an engine past `cursor`, highest priority first,
/// then oldest (unlocked: the engine's advisory lock keeps other relays
/// away); advances the cursor past them, or, when fewer than `limit` came
/// back (nothing more is due past it), starts it from the beginning for
/// the next read.
pub async fn next(
    tx: &mut Tx<'_>,
    engine: &str,
    cursor: &mut Cursor,
    limit: i64,
) -> sqlx::Result<Vec<Pending>> {
    let rows: Vec<Pending> = sqlx::query_as(include_str!("sql/outbox_next.sql"))
        .bind(engine)
        .bind(&cursor.ranks)
        .bind(&cursor.after)
        .bind(limit)
        .fetch_all(&mut **tx)
        .await?;
    if (rows.len() as i64) < limit {
        cursor.reset();
    } else {
        cursor.advance(&rows);
    }
    Ok(rows)
}

/// Removes published (or obsolete) rows and records which attempt the
/// broker holds for each published job.
pub async fn mark_published(
    tx: &mut Tx<'_>,
    done_rows: &[i64],
    jobs: &[Uuid],
    attempts: &[i32],
) -> sqlx::Result<()> {
    sqlx::query(include_str!("sql/delete_outbox_rows.sql"))
        .bind(done_rows)
        .execute(&mut **tx)
        .await?;
    sqlx::query(include_str!("sql/mark_published.sql"))
        .bind(jobs)
        .bind(attempts)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Records the token hash of each attempt about to be published (beside
/// those of earlier publishes of the same attempt, whose messages may
/// still be out); in a statement of its own, committed before the messages
/// go out, so that a worker's first event never arrives before its token
/// is known.
pub async fn issue_tokens(
    db: &sqlx::PgPool,
    jobs: &[Uuid],
    attempts: &[i32],
    hashes: &[Vec<u8>],
) -> sqlx::Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    sqlx::query(include_str!("sql/upsert_attempt_tokens.sql"))
        .bind(jobs)
        .bind(attempts)
        .bind(hashes)
        .execute(db)
        .await?;
    Ok(())
}

/// Rows not yet published (all engines).
pub async fn pending(db: &sqlx::PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar(include_str!("sql/count_outbox.sql"))
        .fetch_one(db)
        .await
}

/// A job the broker confirmed that no worker has started.
#[derive(Debug, sqlx::FromRow)]
pub struct Unstarted {
    pub id: Uuid,
    pub attempt: i32,
    /// Times this attempt was published again already.
    pub republished: i32,
}

/// Jobs of an engine confirmed by the broker more than `older_than` ago and
/// not started since, oldest first (locked until the transaction ends;
/// rows a concurrent cancel holds are skipped).
pub async fn unstarted(
    tx: &mut Tx<'_>,
    engine: &str,
    older_than: std::time::Duration,
    limit: i64,
) -> sqlx::Result<Vec<Unstarted>> {
    sqlx::query_as(include_str!("sql/unstarted_jobs.sql"))
        .bind(engine)
        .bind(older_than.as_secs_f64())
        .bind(limit)
        .fetch_all(&mut **tx)
        .await
}

/// Publishes `attempt` of job `id` again: the broker lost its message.
/// Answers false when the job has moved on meanwhile.
pub async fn republish(tx: &mut Tx<'_>, id: Uuid, attempt: i32) -> sqlx::Result<bool> {
    let moved = sqlx::query(include_str!("sql/republish_job.sql"))
        .bind(id)
        .bind(attempt)
        .execute(&mut **tx)
        .await?;
    if moved.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query(include_str!("sql/insert_retry_outbox.sql"))
        .bind(id)
        .bind(0.0f64)
        .execute(&mut **tx)
        .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_starts_again_only_when_expired_past_its_lifetime() {
        let mut c = Cursor::default();
        c.after = vec![7; c.after.len()];
        c.expire();
        assert!(
            c.after.iter().all(|a| *a == 7),
            "a fresh cursor keeps its place"
        );
        c.reset_at -= Cursor::LIFETIME;
        c.expire();
        assert!(c.after.iter().all(|a| *a == 0), "an old one starts again");
        assert!(c.reset_at.elapsed() < Cursor::LIFETIME);
    }
}
