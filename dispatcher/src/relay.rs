//! The outbox relay: publishes committed jobs to RabbitMQ with publisher
//! confirms and deletes their outbox rows only after the broker confirmed.
//!
//! Per engine it keeps at most `relay_window` jobs in the broker that no
//! worker has started, and takes outbox rows by priority, then age, so a
//! high-priority batch submitted behind a large backlog waits for at most
//! one window. Its cost per job does not grow with the backlog: the window
//! is read from counts the triggers keep (not by counting jobs), and the
//! outbox is read by keyset (each priority's scan starts past the rows
//! already taken, see [`Cursor`]); each transaction's publishes are all in
//! flight before the first confirm is awaited. While RabbitMQ is unreachable the rows simply stay; the
//! loop reconnects and catches up.
//!
//! One relay per engine runs at a time across replicas (a transaction-level
//! advisory lock); it locks no outbox or job rows, so a cancel never waits
//! for it, and its publishes and confirms give up after the broker timeout
//! (a broker that blocks publishers, on a memory or disk alarm, holds the
//! relay's transaction for that long at most).

use crate::broker;
use crate::state::AppState;
use crate::store;
use crate::store::outbox::{Cursor, Pending};
use kiln_protocol::topology::JOBS_EXCHANGE;
use kiln_protocol::{Engine, JobState, StoredJobMessage};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::PublisherConfirm;
use lapin::Channel;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long the relay reads an engine's outbox past its cursor before it
/// starts from the beginning again (see [`Cursor`]).
const CURSOR_LIFETIME: Duration = Duration::from_secs(1);

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

/// Publishes one transaction's worth of an engine's due rows (read past
/// `cursor`); returns how many rows it took (published or dropped as
/// obsolete).
async fn relay_engine(
    state: &AppState,
    ch: &Channel,
    engine: Engine,
    index: i64,
    cursor: &mut Cursor,
) -> anyhow::Result<usize> {
    let t0 = Instant::now();
    let mut tx = state.db.begin().await?;
    if !store::outbox::lock_engine(&mut tx, index).await? {
        return Ok(0);
    }
    let window = state.settings.relay_window;
    let room = window - store::outbox::in_broker(&mut tx, engine.as_str()).await?;
    let limit = room.min(state.settings.relay_batch);
    if limit <= 0 {
        return Ok(0);
    }
    if cursor.age() >= CURSOR_LIFETIME {
        cursor.reset();
    }
    let rows = store::outbox::next(&mut tx, engine.as_str(), cursor, limit).await?;
    if (rows.len() as i64) < limit {
        // Nothing due past the cursor: the next read starts from the
        // beginning, and finds what was committed late or became due.
        cursor.reset();
    }
    if rows.is_empty() {
        return Ok(0);
    }
    let t_select = t0.elapsed();
    let started = Instant::now();
    let timeout = state.settings.broker_timeout;
    let mut done_rows = Vec::with_capacity(rows.len());
    let pending = broker::within(timeout, "publishing jobs", async {
        publish(ch, engine, &rows, &mut done_rows).await
    })
    .await?;
    let t_publish = started.elapsed();
    let (jobs, attempts) = broker::within(timeout, "waiting for publish confirms", async {
        confirmed(pending, &mut done_rows).await
    })
    .await?;
    state
        .metrics
        .publish_confirm
        .observe(started.elapsed().as_secs_f64());
    let t_confirm = started.elapsed();
    store::outbox::mark_published(&mut tx, &done_rows, &jobs, &attempts).await?;
    tx.commit().await?;
    tracing::debug!(
        %engine,
        rows = rows.len(),
        select_ms = t_select.as_millis() as u64,
        publish_ms = t_publish.as_millis() as u64,
        confirm_ms = t_confirm.as_millis() as u64,
        total_ms = t0.elapsed().as_millis() as u64,
        "relay transaction"
    );
    state
        .metrics
        .published
        .fetch_add(jobs.len() as u64, std::sync::atomic::Ordering::Relaxed);
    if jobs.len() < rows.len() && done_rows.len() < rows.len() {
        anyhow::bail!(
            "the broker refused {} messages",
            rows.len() - done_rows.len()
        );
    }
    Ok(rows.len())
}

/// Publishes every row still due, with the job's message; a row that is
/// obsolete goes straight to `done_rows`. Returns the publishes awaiting their confirms.
async fn publish<'r>(
    ch: &Channel,
    engine: Engine,
    rows: &'r [Pending],
    done_rows: &mut Vec<i64>,
) -> anyhow::Result<Vec<(&'r Pending, PublisherConfirm)>> {
    let mut pending = Vec::with_capacity(rows.len());
    for row in rows {
        if row.state != JobState::Queued || row.job_attempt != row.attempt {
            // Cancelled or superseded before it was published.
            done_rows.push(row.id);
            continue;
        }
        // The spec goes out as it was stored at intake: nothing to decode.
        let msg = StoredJobMessage::new(
            row.job_id,
            row.batch_id,
            &row.tenant,
            row.attempt as u32,
            engine,
            &row.prompt,
            &row.params,
        );
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
        pending.push((row, confirm));
    }
    Ok(pending)
}

/// Waits for each confirm; a row the broker accepted (acked, not returned)
/// goes to `done_rows`. Returns the published jobs and their attempts.
async fn confirmed(
    pending: Vec<(&Pending, PublisherConfirm)>,
    done_rows: &mut Vec<i64>,
) -> anyhow::Result<(Vec<Uuid>, Vec<i32>)> {
    let mut jobs = Vec::with_capacity(pending.len());
    let mut attempts = Vec::with_capacity(pending.len());
    for (row, confirm) in pending {
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
