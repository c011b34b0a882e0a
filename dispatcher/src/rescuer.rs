//! The rescuer: jobs the broker confirmed that no worker ever starts.
//!
//! A job's message can leave the broker without a worker starting it: its
//! queue was purged or deleted, or a message was dropped. Such a job would
//! stay `queued` forever and hold a place in the relay's window. Every
//! `rescue_interval`, per engine, the rescuer compares the jobs PostgreSQL
//! counts as in the broker (published, not started) with the ready messages
//! of the engine's queue; when the queue holds fewer, the difference is
//! suspect, and the oldest of those jobs published more than `rescue_after`
//! ago are published again with the same attempt (a new outbox row). An
//! attempt published `rescue_limit` times more without starting fails the
//! job, with a reason that says so, unless the queue has consumers (a
//! worker may hold the delivery, waiting for a slot): then it stays queued.
//!
//! Like the reaper, it waits until worker events have reached PostgreSQL for
//! a whole lease: a `started` still waiting in the events queue would make a
//! running job look lost. A message a worker holds unacked while it waits
//! for a slot is not ready either: if it waits longer than `rescue_after`,
//! the job is published twice: the second delivery is stopped at its
//! `started` when the first has ended, and otherwise renders again and is
//! counted once.

use crate::broker;
use crate::metrics::inc;
use crate::state::AppState;
use crate::store;
use kiln_protocol::{topology, Engine, JobState};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::Channel;
use tokio_util::sync::CancellationToken;

/// Jobs looked at per engine and pass.
const PER_PASS: i64 = 500;

pub async fn run(state: AppState, stop: CancellationToken) {
    let url = state.settings.connections.amqp_url.clone();
    let delay = state.settings.reconnect_delay;
    broker::reconnect_forever("rescuer", delay, &stop, || session(&state, &url, &stop)).await
}

async fn session(state: &AppState, url: &str, stop: &CancellationToken) -> anyhow::Result<()> {
    let conn = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        c = broker::connect(url, "kiln-dispatcher rescuer", state.settings.broker_timeout) => c?,
    };
    let timeout = state.settings.broker_timeout;
    let result = async {
        let ch = broker::within(timeout, "opening the rescuer's channel", async {
            Ok(conn.create_channel().await?)
        })
        .await?;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(state.settings.rescue_interval) => {}
            }
            if !state.event_path.working_for(state.settings.lease) {
                continue;
            }
            for (index, engine) in Engine::ALL.into_iter().enumerate() {
                match rescue(state, &ch, engine, index as i64).await? {
                    0 => {}
                    n => tracing::warn!(%engine, jobs = n, "published jobs no worker started were published again or failed"),
                }
            }
        }
    }
    .await;
    broker::close(&conn, timeout, "rescuer stopping").await;
    result
}

/// One pass over `engine` (the `index`-th); answers how many jobs it
/// published again or failed. It holds the engine's relay lock, so no relay
/// publishes (and no other rescuer counts) between its two counts; while a
/// relay holds it, the pass is skipped. A broker error (a deleted queue
/// closes the channel) ends the session, and the reconnect declares the
/// topology again.
pub async fn rescue(
    state: &AppState,
    ch: &Channel,
    engine: Engine,
    index: i64,
) -> anyhow::Result<usize> {
    let mut tx = state.db.begin().await?;
    if !store::outbox::lock_engine(&mut tx, index).await? {
        return Ok(0);
    }
    let (ready, consumers) = queue_state(ch, engine, state.settings.broker_timeout).await?;
    let in_broker = store::outbox::in_broker(&mut tx, engine.as_str()).await?;
    let suspects = (in_broker - ready as i64).min(PER_PASS);
    if suspects <= 0 {
        return Ok(0);
    }
    let after = state.settings.rescue_after;
    let jobs = store::outbox::unstarted(&mut tx, engine.as_str(), after, suspects).await?;
    let ids: Vec<uuid::Uuid> = jobs.iter().map(|j| j.id).collect();
    store::webhooks::lock_finishing_batches(&mut tx, &ids).await?;
    let limit = state.settings.rescue_limit as i32;
    let mut n = 0;
    for job in jobs {
        if job.republished < limit {
            if store::outbox::republish(&mut tx, job.id, job.attempt).await? {
                inc(&state.metrics.jobs_rescued);
                tracing::warn!(job_id = %job.id, attempt = job.attempt, times = job.republished + 1, "no worker started this job within {after:?} of its publish; publishing it again");
                n += 1;
            }
        } else if consumers > 0 {
            // A worker may hold it, waiting for a slot: never fail a job a
            // consumer may still start.
            tracing::warn!(job_id = %job.id, attempt = job.attempt, "published {} times and not started; {} consumes, so it stays queued", job.republished + 1, topology::job_queue(engine));
        } else {
            let reason = format!(
                "attempt {}: published {} times, and no worker started it within {after:?} of any (is a worker consuming {}?)",
                job.attempt,
                job.republished + 1,
                topology::job_queue(engine)
            );
            if store::jobs::finish(&mut tx, job.id, job.attempt, JobState::Failed, &reason).await? {
                inc(&state.metrics.jobs_never_started);
                tracing::error!(job_id = %job.id, %reason, "job failed");
                n += 1;
            }
        }
    }
    tx.commit().await?;
    state.relay_wake.notify_one();
    Ok(n)
}

/// Ready messages and consumers of `engine`'s queue (a passive declare;
/// deliveries held unacked by workers are not counted).
async fn queue_state(
    ch: &Channel,
    engine: Engine,
    timeout: std::time::Duration,
) -> anyhow::Result<(u32, u32)> {
    let queue = topology::job_queue(engine);
    let declare = ch.queue_declare(
        &queue,
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    );
    let q = tokio::time::timeout(timeout, declare)
        .await
        .map_err(|_| anyhow::anyhow!("the broker did not answer within {timeout:?}"))??;
    Ok((q.message_count(), q.consumer_count()))
}
