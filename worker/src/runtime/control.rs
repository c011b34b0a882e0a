//! The control listener: an exclusive, auto-deleted queue bound to the
//! `kiln.control` fanout, so every worker hears every cancel and drain.
//!
//! Cancels are remembered for a day, so a job cancelled while it waited in
//! the queue is dropped when it is delivered; a running one has its
//! [`StopFlag`] raised and stops at its next step. A stale attempt (the
//! dispatcher answers its `started` with `stop_attempt`) is stopped the same
//! way, that attempt only: the job's other attempts go on.

use crate::runtime::slots::{StopFlag, StopReason};
use anyhow::Context;
use futures::StreamExt;
use kiln_protocol::message::ControlCommand;
use kiln_protocol::topology::CONTROL_EXCHANGE;
use kiln_protocol::ControlMessage;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

const REMEMBER: Duration = Duration::from_secs(24 * 3600);

/// Cancelled job ids, stale attempts, and the stop flags of running jobs.
#[derive(Default)]
pub struct Cancels {
    inner: Mutex<CancelState>,
}

#[derive(Default)]
struct CancelState {
    cancelled: HashMap<Uuid, Instant>,
    stale: HashMap<(Uuid, u32), Instant>,
    /// The stop flag of each running attempt.
    running: HashMap<(Uuid, u32), Arc<StopFlag>>,
}

impl CancelState {
    fn forget_old(&mut self, now: Instant) {
        self.cancelled
            .retain(|_, at| now.duration_since(*at) < REMEMBER);
        self.stale
            .retain(|_, at| now.duration_since(*at) < REMEMBER);
    }
}

impl Cancels {
    pub fn cancel(&self, ids: &[Uuid]) {
        let mut s = self.inner.lock().expect("cancel lock");
        let now = Instant::now();
        s.forget_old(now);
        for id in ids {
            s.cancelled.insert(*id, now);
        }
        for ((id, _), flag) in &s.running {
            if ids.contains(id) {
                flag.stop(StopReason::Cancelled);
            }
        }
    }

    /// Stops `attempt` of job `id` if it runs here, now or when it starts:
    /// the dispatcher has moved past it.
    pub fn stop_attempt(&self, id: Uuid, attempt: u32) {
        let mut s = self.inner.lock().expect("cancel lock");
        let now = Instant::now();
        s.forget_old(now);
        s.stale.insert((id, attempt), now);
        if let Some(flag) = s.running.get(&(id, attempt)) {
            flag.stop(StopReason::Cancelled);
        }
    }

    pub fn is_cancelled(&self, id: Uuid) -> bool {
        self.inner
            .lock()
            .expect("cancel lock")
            .cancelled
            .contains_key(&id)
    }

    /// Registers attempt `attempt` of a running job; its flag is raised at
    /// once if the job was already cancelled or that attempt already called
    /// stale. The registration ends when the guard drops.
    pub fn register(self: &Arc<Self>, id: Uuid, attempt: u32, flag: Arc<StopFlag>) -> Registration {
        let mut s = self.inner.lock().expect("cancel lock");
        if s.cancelled.contains_key(&id) || s.stale.contains_key(&(id, attempt)) {
            flag.stop(StopReason::Cancelled);
        }
        s.running.insert((id, attempt), flag.clone());
        Registration {
            cancels: self.clone(),
            key: (id, attempt),
            flag,
        }
    }
}

pub struct Registration {
    cancels: Arc<Cancels>,
    key: (Uuid, u32),
    flag: Arc<StopFlag>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut s) = self.cancels.inner.lock() {
            // Only this registration's own entry (a second delivery of the
            // same attempt may have replaced it).
            if s.running
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flag))
            {
                s.running.remove(&self.key);
            }
        }
    }
}

/// Declares this worker's control queue and handles its messages until the
/// connection closes, then calls `on_end`. `drain` is called on a drain
/// request for this worker (or for every worker).
pub async fn listen(
    conn: &Connection,
    worker: String,
    cancels: Arc<Cancels>,
    drain: impl Fn() + Send + 'static,
    on_end: impl FnOnce() + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let ch = conn
        .create_channel()
        .await
        .context("opening the control channel")?;
    let q = ch
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .context("declaring the control queue")?;
    ch.queue_bind(
        q.name().as_str(),
        CONTROL_EXCHANGE,
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .context("binding the control queue")?;
    let mut consumer = ch
        .basic_consume(
            q.name().as_str(),
            "control",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .context("consuming the control queue")?;
    Ok(tokio::spawn(async move {
        let _channel = ch;
        while let Some(d) = consumer.next().await {
            let Ok(d) = d else { break };
            match ControlMessage::decode(&d.data) {
                Ok(m) => match m.command {
                    ControlCommand::Cancel { job_ids } => {
                        tracing::info!(jobs = ?job_ids, "cancel received");
                        cancels.cancel(&job_ids);
                    }
                    ControlCommand::StopAttempt { job_id, attempt } => {
                        tracing::info!(job = %job_id, attempt, "the dispatcher calls this attempt stale; stopping it");
                        cancels.stop_attempt(job_id, attempt);
                    }
                    ControlCommand::Drain { worker: target } => {
                        if target.as_deref().is_none_or(|t| t == worker) {
                            tracing::info!("drain requested over the control exchange");
                            drain();
                        }
                    }
                },
                Err(e) => tracing::warn!(error = %e, "ignoring a control message"),
            }
        }
        on_end();
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancels_reach_running_and_later_jobs() {
        let c = Arc::new(Cancels::default());
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let fa = Arc::new(StopFlag::default());
        let reg = c.register(a, 1, fa.clone());
        assert_eq!(fa.reason(), None);
        c.cancel(&[a, b]);
        assert_eq!(fa.reason(), Some(StopReason::Cancelled));
        assert!(c.is_cancelled(b));
        let fb = Arc::new(StopFlag::default());
        let _rb = c.register(b, 1, fb.clone());
        assert_eq!(
            fb.reason(),
            Some(StopReason::Cancelled),
            "registered after the cancel"
        );
        drop(reg);
        assert!(!c.inner.lock().unwrap().running.contains_key(&(a, 1)));
    }

    #[test]
    fn a_stale_attempt_stops_and_the_jobs_other_attempts_go_on() {
        let c = Arc::new(Cancels::default());
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let current = Arc::new(StopFlag::default());
        let _ra = c.register(a, 2, current.clone());
        c.stop_attempt(a, 1);
        assert_eq!(current.reason(), None, "attempt 2 is the one that counts");
        assert!(!c.is_cancelled(a), "later deliveries of the job still run");
        let old = Arc::new(StopFlag::default());
        let _rb = c.register(b, 1, old.clone());
        c.stop_attempt(b, 1);
        assert_eq!(old.reason(), Some(StopReason::Cancelled));
        // Two attempts of one job on this worker: only the stale one stops,
        // a cancel stops both, and each registration removes its own entry.
        let (j, a1, a2) = (
            Uuid::new_v4(),
            Arc::new(StopFlag::default()),
            Arc::new(StopFlag::default()),
        );
        let r1 = c.register(j, 1, a1.clone());
        let r2 = c.register(j, 2, a2.clone());
        c.stop_attempt(j, 1);
        assert_eq!(
            (a1.reason(), a2.reason()),
            (Some(StopReason::Cancelled), None)
        );
        drop(r1);
        c.cancel(&[j]);
        assert_eq!(
            a2.reason(),
            Some(StopReason::Cancelled),
            "attempt 2 still registered"
        );
        drop(r2);
        assert!(!c
            .inner
            .lock()
            .unwrap()
            .running
            .keys()
            .any(|(id, _)| *id == j));
        // Called stale before it registers (the answer to its `started`
        // can beat the registration): stopped as it starts.
        let (late, flag) = (Uuid::new_v4(), Arc::new(StopFlag::default()));
        c.stop_attempt(late, 3);
        let _rl = c.register(late, 3, flag.clone());
        assert_eq!(flag.reason(), Some(StopReason::Cancelled));
    }
}
