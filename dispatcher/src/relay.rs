//! The outbox relay: publishes committed jobs to RabbitMQ with publisher
//! confirms and deletes their outbox rows only after the broker confirmed.
//! Each published attempt carries a fresh random token whose hash is
//! committed before the message goes out (`attempt_tokens`): the worker's
//! events about the attempt must present it (see `crate::events`). It also
//! carries presigned URLs, signed as it goes out, for exactly the objects
//! the attempt may write (its images by rank, its metadata) and its init
//! image: workers hold no bucket credentials.
//!
//! Per engine it keeps at most `relay_window` jobs in the broker that no
//! worker has started, and takes outbox rows by priority, then age, so a
//! high-priority batch submitted behind a large backlog waits for at most
//! one window. Its cost per job does not grow with the backlog: the window
//! is read from counts the triggers keep (not by counting jobs), and the
//! outbox is read by keyset (each priority's scan starts past the rows
//! already taken, see [`Cursor`]), and pages are pipelined: while the
//! broker confirms one page, the previous one is marked published and the
//! next is read and published. While RabbitMQ is unreachable the rows simply stay; the
//! loop reconnects and catches up.
//!
//! One relay per engine runs at a time across replicas (a transaction-level
//! advisory lock, held by a transaction that only reads); it locks no
//! outbox or job rows while it waits for the broker (each page is marked
//! in a short transaction of its own once confirmed), so a cancel never
//! waits for it, and its publishes and confirms give up after the broker
//! timeout (a broker that blocks publishers, on a memory or disk alarm,
//! holds the engine's lock for that long at most).

use crate::auth;
use crate::broker;
use crate::state::AppState;
use crate::store;
use crate::store::outbox::{Cursor, Pending};
use kiln_protocol::s3::Presigner;
use kiln_protocol::topology::JOBS_EXCHANGE;
use kiln_protocol::{Engine, JobState, JobUrls, StoredJobMessage};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::PublisherConfirm;
use lapin::Channel;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub async fn run(state: AppState, stop: CancellationToken) {
    let url = state.settings.connections.amqp_url.clone();
    let delay = state.settings.reconnect_delay;
    broker::reconnect_forever("relay", delay, &stop, || session(&state, &url, &stop)).await
}

/// One connection: relays until `stop` (after finishing the transaction in
/// hand) or until the broker is lost.
async fn session(state: &AppState, url: &str, stop: &CancellationToken) -> anyhow::Result<()> {
    let conn = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        c = broker::connect(url, "kiln-dispatcher relay", state.settings.broker_timeout) => c?,
    };
    let timeout = state.settings.broker_timeout;
    let result = async {
        let ch = broker::within(timeout, "opening the relay's channel", async {
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok(ch)
        })
        .await?;
        tracing::info!("relay connected");
        relay_loop(state, &ch, stop).await
    }
    .await;
    broker::close(&conn, timeout, "relay stopping").await;
    result
}

async fn relay_loop(
    state: &AppState,
    ch: &Channel,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut cursors: Vec<Cursor> = Engine::ALL.iter().map(|_| Cursor::default()).collect();
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        let mut busy = false;
        for (i, engine) in Engine::ALL.into_iter().enumerate() {
            let n = relay_engine(state, ch, engine, i as i64, &mut cursors[i]).await?;
            busy |= n as i64 >= state.settings.relay_batch;
        }
        if !ch.status().connected() {
            anyhow::bail!("channel closed");
        }
        if !busy {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = state.relay_wake.notified() => {}
                _ = tokio::time::sleep(state.settings.relay_interval) => {}
            }
        }
    }
}

/// Pages of `relay_batch` rows one turn of the relay takes at most per
/// engine before it looks at the next engine.
const PAGES_PER_TURN: i64 = 8;

/// One turn on an engine: up to [`PAGES_PER_TURN`] pages of due rows (read
/// past `cursor`), pipelined: while the broker confirms one page, the
/// previous page is marked published and the next is read and published.
/// The transaction that holds the engine's lock only reads; each page is
/// marked in a short transaction of its own once its confirms are in, so
/// no row is locked while the broker is awaited. Returns how many rows the
/// turn took (published or dropped as obsolete).
async fn relay_engine(
    state: &AppState,
    ch: &Channel,
    engine: Engine,
    index: i64,
    cursor: &mut Cursor,
) -> anyhow::Result<usize> {
    let mut tx = state.db.begin().await?;
    if !store::outbox::lock_engine(&mut tx, index).await? {
        return Ok(0);
    }
    // Only here, before any page is in flight: see `Cursor`.
    cursor.expire();
    let batch = state.settings.relay_batch;
    let room =
        state.settings.relay_window - store::outbox::in_broker(&mut tx, engine.as_str()).await?;
    let mut budget = room.min(batch.saturating_mul(PAGES_PER_TURN));
    let timeout = state.settings.broker_timeout;
    let mut taken = 0;
    let mut in_flight: Option<Page> = None;
    let pages = async {
        while budget > 0 {
            let t0 = Instant::now();
            let limit = budget.min(batch);
            let rows = store::outbox::next(&mut tx, engine.as_str(), cursor, limit).await?;
            // Short: nothing more is due past the cursor this turn.
            let short = (rows.len() as i64) < limit;
            if rows.is_empty() {
                break;
            }
            budget -= rows.len() as i64;
            taken += rows.len();
            let tokens = issue_tokens(state, &rows).await?;
            let page = broker::within(
                timeout,
                "publishing jobs",
                publish(ch, state, engine, rows, tokens, t0),
            )
            .await?;
            if let Some(previous) = in_flight.replace(page) {
                settle(state, engine, previous).await?;
            }
            if short {
                break;
            }
        }
        anyhow::Ok(())
    }
    .await;
    // The page in flight is marked even when a later read or publish
    // failed, so that its jobs are not published again.
    if let Some(last) = in_flight {
        settle(state, engine, last).await?;
    }
    pages?;
    // Every page is marked: the lock can go.
    tx.commit().await?;
    Ok(taken)
}

/// One page of outbox rows whose messages are published.
struct Page {
    rows: Vec<Pending>,
    /// Rows done with: obsolete ones now, accepted ones once confirmed.
    done_rows: Vec<i64>,
    /// Index into `rows` of each publish awaiting its confirm.
    pending: Vec<(usize, PublisherConfirm)>,
    read_at: Instant,
    read_ms: u64,
    published_ms: u64,
}

/// Whether `row` is still to be published: its job waits at the row's
/// attempt (not cancelled or superseded since the row was written).
fn is_due(row: &Pending) -> bool {
    row.state == JobState::Queued && row.job_attempt == row.attempt
}

/// A fresh token for each due row of `rows` (`None` for an obsolete one),
/// whose hashes are committed before this returns, and so before any of
/// them is published.
async fn issue_tokens(state: &AppState, rows: &[Pending]) -> anyhow::Result<Vec<Option<String>>> {
    let mut tokens = Vec::with_capacity(rows.len());
    let (mut jobs, mut attempts, mut hashes) = (Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        let token = is_due(row).then(auth::attempt_token);
        if let Some(token) = &token {
            jobs.push(row.job_id);
            attempts.push(row.attempt);
            hashes.push(auth::hash_token(token));
        }
        tokens.push(token);
    }
    store::outbox::issue_tokens(&state.db, &jobs, &attempts, &hashes).await?;
    Ok(tokens)
}

/// Publishes every row of `rows` still due, with the job's message, the
/// attempt's token (`tokens`, by row) and its URLs (signed now); a row that
/// is obsolete is done with at once. Every publish is in flight before any
/// confirm is awaited.
async fn publish(
    ch: &Channel,
    state: &AppState,
    engine: Engine,
    rows: Vec<Pending>,
    tokens: Vec<Option<String>>,
    read_at: Instant,
) -> anyhow::Result<Page> {
    let read_ms = read_at.elapsed().as_millis() as u64;
    let mut done_rows = Vec::new();
    let mut pending = Vec::with_capacity(rows.len());
    if let Err(e) = state.presigner.refresh().await {
        // The held credentials sign until they expire; an attempt whose
        // URLs die with them is published again.
        tracing::warn!(error = %e, "could not fetch fresh bucket credentials");
    }
    let now = std::time::SystemTime::now();
    for (i, (row, token)) in rows.iter().zip(&tokens).enumerate() {
        let Some(token) = token else {
            // Cancelled or superseded before it was published.
            done_rows.push(row.id);
            continue;
        };
        let urls = job_urls(&state.presigner, state.limits.max_candidates, row, now);
        // The spec goes out as it was stored at intake: nothing to decode.
        let msg = StoredJobMessage::new(
            row.job_id,
            row.batch_id,
            &row.tenant,
            row.attempt as u32,
            token,
            engine,
            &row.prompt,
            &row.params,
        )
        .with_urls(&urls);
        let confirm = ch
            .basic_publish(
                JOBS_EXCHANGE,
                engine.as_str(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &msg.encode(),
                broker::persistent()
                    .with_message_id(format!("{}:{}", row.job_id, row.attempt).into()),
            )
            .await?;
        pending.push((i, confirm));
    }
    Ok(Page {
        published_ms: read_at.elapsed().as_millis() as u64,
        rows,
        done_rows,
        pending,
        read_at,
        read_ms,
    })
}

/// The URLs of `row`'s attempt: one PUT per image it keeps (its resolved
/// `keep`, which intake held to `max_keep`), one for its metadata, a GET
/// for its `init_image` if any.
fn job_urls(
    presigner: &Presigner,
    max_keep: u32,
    row: &Pending,
    now: std::time::SystemTime,
) -> JobUrls {
    let keep = row.params.get("keep").and_then(|k| k.as_u64());
    let keep = keep.unwrap_or(kiln_protocol::spec::params::DEFAULT_KEEP.into());
    let init_image = row.params.get("init_image").and_then(|i| i.as_str());
    let keep = u32::try_from(keep).unwrap_or(u32::MAX).min(max_keep);
    presigner.job_urls(&row.tenant, row.batch_id, row.job_id, keep, init_image, now)
}

/// Waits for the page's confirms, then marks it published in a
/// transaction of its own; errors when the broker refused some message
/// (the row stays, and is published again).
async fn settle(state: &AppState, engine: Engine, page: Page) -> anyhow::Result<()> {
    let Page {
        rows,
        mut done_rows,
        pending,
        read_at,
        read_ms,
        published_ms,
    } = page;
    let timeout = state.settings.broker_timeout;
    let (jobs, attempts) = broker::within(timeout, "waiting for publish confirms", async {
        confirmed(&rows, pending, &mut done_rows).await
    })
    .await?;
    let confirmed_ms = read_at.elapsed().as_millis() as u64;
    state
        .metrics
        .publish_confirm
        .observe(read_at.elapsed().as_secs_f64());
    let mut tx = state.db.begin().await?;
    store::outbox::mark_published(&mut tx, &done_rows, &jobs, &attempts).await?;
    tx.commit().await?;
    tracing::debug!(
        %engine,
        rows = rows.len(),
        read_ms,
        published_ms,
        confirmed_ms,
        total_ms = read_at.elapsed().as_millis() as u64,
        "relay page"
    );
    state.metrics.published.inc_by(jobs.len() as u64);
    if done_rows.len() < rows.len() {
        anyhow::bail!(
            "the broker refused {} messages",
            rows.len() - done_rows.len()
        );
    }
    Ok(())
}

/// Waits for each confirm; a row the broker accepted (acked, not returned)
/// goes to `done_rows`. Returns the published jobs and their attempts.
async fn confirmed(
    rows: &[Pending],
    pending: Vec<(usize, PublisherConfirm)>,
    done_rows: &mut Vec<i64>,
) -> anyhow::Result<(Vec<Uuid>, Vec<i32>)> {
    let mut jobs = Vec::with_capacity(pending.len());
    let mut attempts = Vec::with_capacity(pending.len());
    for (i, confirm) in pending {
        let row = &rows[i];
        let confirmation = confirm.await?;
        if confirmation.is_ack() && confirmation.take_message().is_none() {
            done_rows.push(row.id);
            jobs.push(row.job_id);
            attempts.push(row.attempt);
            tracing::debug!(job_id = %row.job_id, batch_id = %row.batch_id, attempt = row.attempt, "published");
        } else {
            tracing::warn!(job_id = %row.job_id, batch_id = %row.batch_id, "broker did not accept the job; will retry");
        }
    }
    Ok((jobs, attempts))
}
