//! Attempts this worker runs or has just finished, so that a second
//! delivery of one is recognised instead of rendered again.
//!
//! A delivery is acked on the channel it came on. When that channel is lost
//! (a broker restart, a network blip) while the job renders, the broker puts
//! the message back and delivers it again, often to this same worker once it
//! has reconnected. The second delivery waits while the first runs here
//! ([`Recent::claim`]); once the first one's terminal event is confirmed
//! ([`Claim::finished`]), the second is acked without rendering. A
//! redelivery that reaches another worker renders again; the dispatcher's
//! guarded transitions count the job once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

/// How long a finished attempt is remembered.
const REMEMBER: Duration = Duration::from_secs(3600);

type Key = (Uuid, u32);

#[derive(Default)]
pub struct Recent {
    inner: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Dropped with its [`Claim`], which wakes whoever waits on it.
    running: HashMap<Key, watch::Receiver<()>>,
    finished: HashMap<Key, Instant>,
}

/// What a new delivery of an attempt should do.
pub enum Seen {
    /// Nobody here handles it: this delivery does, while it holds the claim.
    New(Claim),
    /// This worker reported it already: ack without rendering.
    Finished,
}

impl Recent {
    /// Claims `attempt` of job `id` for a delivery, first waiting while
    /// another delivery of it is handled here.
    pub async fn claim(self: &Arc<Self>, id: Uuid, attempt: u32) -> Seen {
        let key = (id, attempt);
        loop {
            let mut waiting = {
                let mut s = self.inner.lock().expect("recent lock");
                if s.finished.contains_key(&key) {
                    return Seen::Finished;
                }
                match s.running.get(&key) {
                    Some(rx) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(());
                        s.running.insert(key, rx);
                        return Seen::New(Claim {
                            recent: self.clone(),
                            key,
                            _tx: tx,
                        });
                    }
                }
            };
            // Ends when the claim drops its sender.
            while waiting.changed().await.is_ok() {}
        }
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let s = self.inner.lock().unwrap();
        (s.running.len(), s.finished.len())
    }
}

/// One delivery's hold on an attempt; dropping it lets the next delivery
/// of the attempt go on.
pub struct Claim {
    recent: Arc<Recent>,
    key: Key,
    _tx: watch::Sender<()>,
}

impl Claim {
    /// The attempt's terminal event was confirmed: later deliveries of it
    /// are acked without rendering.
    pub fn finished(&self) {
        let mut s = self.recent.inner.lock().expect("recent lock");
        let now = Instant::now();
        s.finished
            .retain(|_, at| now.duration_since(*at) < REMEMBER);
        s.finished.insert(self.key, now);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut s) = self.recent.inner.lock() {
            s.running.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_delivery_waits_for_the_first_and_is_recognised_once_it_finished() {
        let r = Arc::new(Recent::default());
        let id = Uuid::new_v4();
        let Seen::New(first) = r.claim(id, 1).await else {
            panic!("nobody handles it yet")
        };
        let second = {
            let r = r.clone();
            tokio::spawn(async move { matches!(r.claim(id, 1).await, Seen::Finished) })
        };
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "it waits while the first runs");
        assert!(
            matches!(r.claim(id, 2).await, Seen::New(_)),
            "another attempt of the job is not held up"
        );
        first.finished();
        drop(first);
        assert!(second.await.unwrap(), "acked without rendering");
        assert_eq!(r.len(), (0, 1));
    }

    #[tokio::test]
    async fn a_delivery_that_did_not_finish_hands_the_attempt_to_the_next() {
        let r = Arc::new(Recent::default());
        let id = Uuid::new_v4();
        let Seen::New(first) = r.claim(id, 1).await else {
            panic!("nobody handles it yet")
        };
        let second = {
            let r = r.clone();
            tokio::spawn(async move { matches!(r.claim(id, 1).await, Seen::New(_)) })
        };
        tokio::task::yield_now().await;
        drop(first); // requeued, say: not finished
        assert!(second.await.unwrap(), "the next delivery renders it");
        assert_eq!(r.len(), (0, 0));
    }
}
