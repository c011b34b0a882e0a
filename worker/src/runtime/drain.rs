//! How `kiln-worker run` stops: the one place that says how a stop is
//! requested, how running jobs are waited for, and what happens at the
//! deadline.
//!
//! - **Requested** by SIGTERM or SIGINT ([`Drain::listen_for_signals`]) or
//!   by a drain message on the control exchange ([`Drain::request`]). A
//!   lost broker is not a stop: the [`Link`](crate::runtime::link::Link)
//!   reconnects in place while the renders go on.
//! - **While draining** the job consumers are cancelled (no new
//!   deliveries), and deliveries still waiting for a slot go back to the
//!   broker ([`Shutdown::slot`] answers `None`). Running jobs are counted
//!   by their [`InFlight`] guards and get the drain timeout to finish, publish
//!   their terminal event and ack ([`Drain::wait_for_jobs`]).
//! - **At the deadline** nothing more is waited for: whatever still runs
//!   stays unacked and the broker redelivers it when the connection closes.
//! - **Exit status**: a drain ends `run` with `Ok` (status 0), whether every
//!   job finished or the deadline passed.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Where the worker stands; it only ever leaves `Running`, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Draining,
}

/// The worker's stop: requested by signals or the control exchange,
/// awaited by `run`. Clones share the same stop.
#[derive(Clone)]
pub struct Drain {
    state: Arc<watch::Sender<State>>,
    /// Deliveries being handled.
    inflight: Arc<watch::Sender<usize>>,
    timeout: Duration,
}

impl Drain {
    /// A running worker whose jobs get `timeout` to finish once it drains.
    pub fn new(timeout: Duration) -> Drain {
        Drain {
            state: Arc::new(watch::channel(State::Running).0),
            inflight: Arc::new(watch::channel(0).0),
            timeout,
        }
    }

    /// Asks for a drain. Ignored once the worker drains already.
    pub fn request(&self) {
        self.state.send_if_modified(|s| {
            let first = *s == State::Running;
            if first {
                *s = State::Draining;
            }
            first
        });
    }

    /// Whether a drain was asked for.
    pub fn is_draining(&self) -> bool {
        *self.state.borrow() == State::Draining
    }

    /// Deliveries being handled now.
    pub fn in_flight(&self) -> usize {
        *self.inflight.borrow()
    }

    /// The view of the stop that delivery handlers get.
    pub fn shutdown(&self) -> Shutdown {
        Shutdown(self.state.subscribe())
    }

    /// Counts one delivery as being handled until the guard drops.
    pub fn track(&self) -> InFlight {
        self.inflight.send_modify(|n| *n += 1);
        InFlight(self.inflight.clone())
    }

    /// Requests a drain on the first SIGTERM or SIGINT.
    pub fn listen_for_signals(&self) {
        let drain = self.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
            }
            drain.request();
        });
    }

    /// Waits until a drain is requested.
    pub async fn stopped(&self) {
        let mut rx = self.state.subscribe();
        rx.wait_for(|s| *s == State::Draining)
            .await
            .expect("the sender lives in self");
    }

    /// Waits up to the drain timeout for every tracked delivery to finish.
    /// Returns whether they all did; those left stay unacked and are
    /// redelivered once the connection closes.
    pub async fn wait_for_jobs(&self) -> bool {
        let mut inflight = self.inflight.subscribe();
        let running = *inflight.borrow();
        tracing::info!(running, timeout_s = self.timeout.as_secs_f64(), "draining");
        let finished = tokio::time::timeout(self.timeout, inflight.wait_for(|n| *n == 0))
            .await
            .is_ok();
        if finished {
            tracing::info!("drained: every job finished");
        } else {
            let left = *inflight.borrow();
            tracing::warn!(
                left,
                "drain timeout: unfinished jobs stay unacked and will be redelivered"
            );
        }
        finished
    }
}

/// A delivery handler's view of the stop.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<State>);

impl Shutdown {
    /// Waits for a free slot, unless the worker drains first: then `None`,
    /// and the delivery goes back to the broker. A drain wins over a free
    /// slot.
    pub async fn slot(&self, permits: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        let mut state = self.0.clone();
        tokio::select! {
            biased;
            _ = state.wait_for(|s| *s == State::Draining) => None,
            p = permits.clone().acquire_owned() => Some(p.expect("the slot semaphore is never closed")),
        }
    }
}

/// One delivery being handled; the drain waits for these to drop.
pub struct InFlight(Arc<watch::Sender<usize>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn a_drain_request_stops_and_waiting_deliveries_get_no_slot() {
        let d = Drain::new(LONG);
        let s = d.shutdown();
        assert!(!d.is_draining());
        assert!(s.slot(&Arc::new(Semaphore::new(1))).await.is_some());
        d.request();
        d.request();
        d.stopped().await;
        assert!(d.is_draining());
        assert!(s.slot(&Arc::new(Semaphore::new(1))).await.is_none());
    }

    #[tokio::test]
    async fn a_clone_requests_the_same_drain() {
        let d = Drain::new(LONG);
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.stopped().await })
        };
        d.clone().request();
        waiter.await.unwrap();
    }

    #[tokio::test]
    async fn waiting_deliveries_get_a_slot_until_the_drain_then_none() {
        let d = Drain::new(LONG);
        let s = d.shutdown();
        let permits = Arc::new(Semaphore::new(1));
        let held = s.slot(&permits).await.expect("a free slot");
        let waiting = {
            let (s, permits) = (s.clone(), permits.clone());
            tokio::spawn(async move { s.slot(&permits).await.is_some() })
        };
        tokio::task::yield_now().await;
        d.request();
        assert!(!waiting.await.unwrap(), "handed back on the drain");
        drop(held);
        assert!(
            s.slot(&permits).await.is_none(),
            "a drain wins over a free slot"
        );
    }

    #[tokio::test]
    async fn the_drain_waits_for_every_tracked_delivery() {
        let d = Drain::new(LONG);
        let (a, b) = (d.track(), d.track());
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.wait_for_jobs().await })
        };
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        assert!(waiter.await.unwrap(), "every job finished");
    }

    #[tokio::test]
    async fn the_drain_gives_up_at_the_deadline() {
        let d = Drain::new(Duration::from_millis(20));
        let _stuck = d.track();
        assert!(!d.wait_for_jobs().await, "a job still runs at the deadline");
        assert_eq!(*d.inflight.borrow(), 1, "it stays counted (and unacked)");
    }
}
