//! The batch scheduler: jobs waiting for a render thread, handed out in
//! batches of one engine and one batch key.
//!
//! A render thread asks for the next batch. The oldest waiting job decides
//! its engine and key; the batch takes every waiting job of that engine and
//! key, oldest first, up to the engine's `max_batch` and to what fits one
//! pass of the engine (its limit for that key). A batch that is not
//! full waits for more jobs, but never longer than `window` after its
//! oldest job arrived: a job that already waited that long (every thread
//! was busy) starts with whatever is there. Jobs the engine renders alone
//! (no key) and engines with `max_batch` 1 never wait.
//!
//! A running batch of an engine that takes jobs in between steps asks for
//! more with [`Scheduler::join`]: it gets waiting jobs of its engine and key
//! from the head of the queue only, up to its limits. A job of another
//! engine or key at the head stops the batch from growing, so the batch
//! drains and a free thread serves that job next: jobs still start in the
//! order they came. While a render thread is free, a running batch takes
//! nothing: the free thread (maybe of another device) starts the job
//! rather than leave its device idle.

use crate::engine::BatchKey;
use kiln_protocol::Engine as EngineKind;
use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How batches are formed.
#[derive(Debug, Clone)]
pub struct Batching {
    /// Jobs per batch at most, per engine (1 when not named).
    pub max_batch: HashMap<EngineKind, usize>,
    /// How long a partial batch may wait to fill, from its oldest job's arrival.
    pub window: Duration,
}

impl Batching {
    /// One job per batch for every engine.
    pub fn none() -> Batching {
        Batching {
            max_batch: HashMap::new(),
            window: Duration::ZERO,
        }
    }

    pub fn max_batch(&self, engine: EngineKind) -> usize {
        self.max_batch.get(&engine).copied().unwrap_or(1).max(1)
    }
}

struct Entry<T> {
    item: T,
    engine: EngineKind,
    key: Option<BatchKey>,
    /// Jobs of its key that fit one batch (the engine's limit).
    limit: usize,
    since: Instant,
}

struct Queue<T> {
    entries: VecDeque<Entry<T>>,
    closed: bool,
    /// Render threads waiting in [`Scheduler::next_batch`].
    idle: usize,
}

/// Jobs waiting for a render thread.
pub struct Scheduler<T> {
    queue: Mutex<Queue<T>>,
    changed: Condvar,
    batching: Batching,
}

impl<T> Scheduler<T> {
    pub fn new(batching: Batching) -> Scheduler<T> {
        Scheduler {
            queue: Mutex::new(Queue {
                entries: VecDeque::new(),
                closed: false,
                idle: 0,
            }),
            changed: Condvar::new(),
            batching,
        }
    }

    /// Queues `item` of `engine`; jobs with equal `Some` keys may share a
    /// batch of at most `limit` jobs (and `max_batch`).
    pub fn push(
        &self,
        item: T,
        engine: EngineKind,
        key: Option<BatchKey>,
        limit: usize,
    ) -> Result<(), T> {
        let mut q = self.queue.lock().expect("scheduler lock");
        if q.closed {
            return Err(item);
        }
        q.entries.push_back(Entry {
            item,
            engine,
            key,
            limit: limit.max(1),
            since: Instant::now(),
        });
        drop(q);
        self.changed.notify_all();
        Ok(())
    }

    /// No more jobs: threads take what is queued, then get `None`.
    pub fn close(&self) {
        self.queue.lock().expect("scheduler lock").closed = true;
        self.changed.notify_all();
    }

    /// Jobs waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.lock().expect("scheduler lock").entries.len()
    }

    /// Threads waiting for a batch.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.queue.lock().expect("scheduler lock").idle
    }

    /// Blocks until a batch is ready (see the module's rules); `None` once
    /// closed and empty.
    pub fn next_batch(&self) -> Option<Vec<T>> {
        let mut q = self.queue.lock().expect("scheduler lock");
        loop {
            let Some(head) = q.entries.front() else {
                if q.closed {
                    return None;
                }
                q.idle += 1;
                q = self.changed.wait(q).expect("scheduler lock");
                q.idle -= 1;
                continue;
            };
            let (engine, key, since) = (head.engine, head.key, head.since);
            let max = match key {
                Some(_) => self.batching.max_batch(engine).min(head.limit),
                None => 1,
            };
            let matching = q
                .entries
                .iter()
                .filter(|e| e.engine == engine && e.key == key)
                .take(max)
                .count();
            let deadline = since + self.batching.window;
            let now = Instant::now();
            if matching >= max || now >= deadline || q.closed {
                return Some(take(&mut q.entries, engine, key, max));
            }
            q.idle += 1;
            q = self
                .changed
                .wait_timeout(q, deadline - now)
                .expect("scheduler lock")
                .0;
            q.idle -= 1;
        }
    }
}

impl<T> Scheduler<T> {
    /// Up to `room` jobs that may join a running batch of `engine` and
    /// `key` that holds `live` jobs, taken from the head of the queue while
    /// they match (see the module); the batch holds at most `limit` jobs
    /// and `max_batch`. Never waits.
    pub fn join(
        &self,
        engine: EngineKind,
        key: BatchKey,
        limit: usize,
        live: usize,
        room: usize,
    ) -> Vec<T> {
        let max = self.batching.max_batch(engine).min(limit.max(1));
        let want = max.saturating_sub(live).min(room);
        let mut q = self.queue.lock().expect("scheduler lock");
        let mut joined = Vec::new();
        if q.idle > 0 {
            // A free thread (of this device or another) takes it instead.
            return joined;
        }
        while joined.len() < want {
            match q.entries.front() {
                Some(e) if e.engine == engine && e.key == Some(key) => {
                    joined.push(q.entries.pop_front().expect("a front entry").item);
                }
                _ => break,
            }
        }
        joined
    }
}

/// Removes the first `max` entries of `engine` and `key`, in order.
fn take<T>(
    entries: &mut VecDeque<Entry<T>>,
    engine: EngineKind,
    key: Option<BatchKey>,
    max: usize,
) -> Vec<T> {
    let mut batch = Vec::new();
    let mut rest = VecDeque::with_capacity(entries.len());
    for e in entries.drain(..) {
        if batch.len() < max && e.engine == engine && e.key == key {
            batch.push(e.item);
        } else {
            rest.push_back(e);
        }
    }
    *entries = rest;
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn batching(dalle: usize, window_ms: u64) -> Batching {
        Batching {
            max_batch: [(EngineKind::Dalle, dalle)].into_iter().collect(),
            window: Duration::from_millis(window_ms),
        }
    }

    #[test]
    fn a_full_batch_goes_at_once_with_matching_jobs_only() {
        let s = Scheduler::new(batching(3, 60_000));
        s.push(1, EngineKind::Dalle, Some(7), usize::MAX).unwrap();
        s.push(2, EngineKind::Dalle, Some(8), usize::MAX).unwrap();
        s.push(3, EngineKind::VqganClip, None, usize::MAX).unwrap();
        s.push(4, EngineKind::Dalle, Some(7), usize::MAX).unwrap();
        s.push(5, EngineKind::Dalle, Some(7), usize::MAX).unwrap();
        s.push(6, EngineKind::Dalle, Some(7), usize::MAX).unwrap();
        let t = Instant::now();
        assert_eq!(s.next_batch(), Some(vec![1, 4, 5]));
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a full batch does not wait"
        );
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn a_partial_batch_waits_for_the_window_then_goes() {
        let s = Arc::new(Scheduler::new(batching(4, 300)));
        s.push(1, EngineKind::Dalle, Some(7), usize::MAX).unwrap();
        let t = Instant::now();
        let s2 = s.clone();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            s2.push(2, EngineKind::Dalle, Some(7), usize::MAX).unwrap();
        });
        assert_eq!(
            s.next_batch(),
            Some(vec![1, 2]),
            "the job that came in the window joined"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        late.join().unwrap();
    }

    #[test]
    fn jobs_without_a_key_and_engines_of_one_never_wait() {
        let s = Scheduler::new(batching(4, 60_000));
        s.push(1, EngineKind::Dalle, None, usize::MAX).unwrap();
        s.push(2, EngineKind::TestPattern, Some(0), usize::MAX)
            .unwrap();
        s.push(3, EngineKind::TestPattern, Some(0), usize::MAX)
            .unwrap();
        let t = Instant::now();
        assert_eq!(s.next_batch(), Some(vec![1]));
        assert_eq!(
            s.next_batch(),
            Some(vec![2]),
            "test-pattern's max batch is 1 here"
        );
        assert_eq!(s.next_batch(), Some(vec![3]));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn an_engine_limit_caps_a_batch_below_max_batch() {
        let s = Scheduler::new(batching(8, 60_000));
        for i in 0..5 {
            s.push(i, EngineKind::Dalle, Some(4), 2).unwrap();
        }
        let t = Instant::now();
        assert_eq!(s.next_batch(), Some(vec![0, 1]), "two fit one pass");
        assert_eq!(s.next_batch(), Some(vec![2, 3]));
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a batch at its limit is full"
        );
    }

    #[test]
    fn a_running_batch_joins_matching_jobs_from_the_head_only() {
        let s = Scheduler::new(batching(4, 60_000));
        s.push(1, EngineKind::Dalle, Some(7), usize::MAX).unwrap();
        s.push(2, EngineKind::Dalle, Some(7), usize::MAX).unwrap();
        s.push(3, EngineKind::Dalle, Some(7), usize::MAX).unwrap();
        assert_eq!(
            s.join(EngineKind::Dalle, 7, usize::MAX, 2, usize::MAX),
            vec![1, 2],
            "a batch of 2 live jobs takes 2 more (max batch 4)"
        );
        assert_eq!(
            s.join(EngineKind::Dalle, 7, 3, 2, usize::MAX),
            vec![3],
            "the engine's limit"
        );
        s.push(4, EngineKind::Dalle, Some(7), usize::MAX).unwrap();
        assert_eq!(
            s.join(EngineKind::Dalle, 7, usize::MAX, 0, 0),
            Vec::<i32>::new(),
            "no room"
        );
        assert_eq!(
            s.join(EngineKind::Dalle, 8, usize::MAX, 0, 4),
            Vec::<i32>::new(),
            "another key"
        );
        s.push(5, EngineKind::VqganClip, None, usize::MAX).unwrap();
        s.push(6, EngineKind::Dalle, Some(7), usize::MAX).unwrap();
        assert_eq!(
            s.join(EngineKind::Dalle, 7, usize::MAX, 0, 4),
            vec![4],
            "a job of another engine at the head stops the batch from growing"
        );
        assert_eq!(s.next_batch(), Some(vec![5]), "and is served next");
        assert_eq!(s.join(EngineKind::Dalle, 7, usize::MAX, 1, 4), vec![6]);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn a_running_batch_leaves_a_job_to_a_free_thread() {
        let s = Arc::new(Scheduler::new(batching(4, 500)));
        let s2 = s.clone();
        let free = std::thread::spawn(move || s2.next_batch());
        let t = Instant::now();
        while s.idle() == 0 {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the thread never waited"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        s.push(1, EngineKind::Dalle, Some(7), usize::MAX).unwrap();
        // The free thread holds it for its window, waiting for more.
        while s.idle() == 0 || s.len() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            s.join(EngineKind::Dalle, 7, usize::MAX, 1, 4),
            Vec::<i32>::new(),
            "a running batch does not take a job a free thread can start"
        );
        assert_eq!(free.join().unwrap(), Some(vec![1]));
        assert_eq!(s.idle(), 0);
    }

    #[test]
    fn closing_hands_out_what_is_queued_then_none() {
        let s = Scheduler::new(batching(4, 60_000));
        s.push(1, EngineKind::Dalle, Some(1), usize::MAX).unwrap();
        s.close();
        assert_eq!(s.push(2, EngineKind::Dalle, Some(1), usize::MAX), Err(2));
        assert_eq!(s.next_batch(), Some(vec![1]));
        assert_eq!(s.next_batch(), None);
    }
}
