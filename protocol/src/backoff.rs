//! The one backoff of Kiln's retry loops, on `backon`: waits that double
//! from a first one up to a cap, each stretched by a random part of itself
//! (up to twice as long) so that many clients do not retry in step; for a
//! bounded number of tries, or for ever.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::future::Future;
use std::time::Duration;

/// How a loop waits between its tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    tries: Option<u32>,
}

impl Backoff {
    /// Waits of `first`, doubling up to `max` (before jitter), for ever.
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            tries: None,
        }
    }

    /// At most `n` tries in all (so `n - 1` waits); 0 counts as 1.
    pub const fn tries(self, n: u32) -> Backoff {
        Backoff {
            tries: Some(if n == 0 { 1 } else { n }),
            ..self
        }
    }

    /// The most tries, if bounded.
    pub fn max_tries(&self) -> Option<u32> {
        self.tries
    }

    /// The waits between tries, each in `[d, 2d)` for the doubling `d`.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        let builder = ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(self.first)
            .with_max_delay(self.max);
        match self.tries {
            Some(n) => builder.with_max_times(n as usize - 1),
            None => builder.without_max_times(),
        }
        .build()
    }

    /// Runs `op` until it succeeds, the tries run out, or `again` refuses
    /// an error (it sees each failure and the wait before the next try, so
    /// it also logs); returns the last error.
    pub async fn retry<T, E, F, Fut>(
        &self,
        mut op: F,
        mut again: impl FnMut(&E, Duration) -> bool,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut delays = self.delays();
        loop {
            let e = match op().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            match delays.next() {
                Some(wait) if again(&e, wait) => tokio::time::sleep(wait).await,
                _ => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_double_up_to_the_cap_with_jitter() {
        let b = Backoff::new(100 * MS, 800 * MS).tries(7);
        for _ in 0..50 {
            let waits: Vec<Duration> = b.delays().collect();
            assert_eq!(waits.len(), 6, "{waits:?}");
            for (w, base) in waits.iter().zip([100, 200, 400, 800, 800, 800]) {
                assert!(*w >= base * MS && *w < 2 * base * MS, "{w:?} for {base} ms");
            }
        }
        // Jitter spreads them.
        let firsts: std::collections::BTreeSet<_> =
            (0..50).map(|_| b.delays().next().unwrap()).collect();
        assert!(firsts.len() > 40, "{firsts:?}");
    }

    #[test]
    fn unbounded_waits_go_on() {
        let b = Backoff::new(MS, 4 * MS);
        assert_eq!(b.delays().take(1000).count(), 1000);
        assert_eq!(b.max_tries(), None);
        assert_eq!(Backoff::new(MS, MS).tries(0).delays().count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_at_success_refusal_or_the_last_try() {
        let b = Backoff::new(10 * MS, 40 * MS).tries(4);
        let mut calls = 0;
        let r: Result<u32, &str> = b
            .retry(
                || {
                    calls += 1;
                    let n = calls;
                    async move {
                        if n < 3 {
                            Err("busy")
                        } else {
                            Ok(n)
                        }
                    }
                },
                |_, _| true,
            )
            .await;
        assert_eq!(r, Ok(3));

        let mut calls = 0;
        let r: Result<(), u32> = b
            .retry(
                || {
                    calls += 1;
                    let n = calls;
                    async move { Err(n) }
                },
                |_, _| true,
            )
            .await;
        assert_eq!(r, Err(4), "four tries, the last error");

        let mut seen = Vec::new();
        let r: Result<(), &str> = b
            .retry(
                || async { Err("for good") },
                |e, wait| {
                    seen.push((*e, wait));
                    false
                },
            )
            .await;
        assert_eq!(r, Err("for good"));
        assert_eq!(seen.len(), 1, "a refused error is not tried again");
    }
}
