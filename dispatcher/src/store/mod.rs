//! SQL, one file per table family. Functions take the caller's transaction
//! (or connection), so a caller can make several writes atomic — the batch,
//! its jobs and their outbox rows, or a retry and its outbox row.

pub mod batches;
pub mod jobs;
pub mod outbox;
pub mod uploads;

pub type Tx<'a> = sqlx::Transaction<'a, sqlx::Postgres>;
