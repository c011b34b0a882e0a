//! Retry policy: exponential backoff with jitter, a pure function of the
//! attempt that failed, so it is tested without a clock.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

/// What happens to a job whose attempt `attempt` failed in a retryable way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Queue attempt `next` after `delay`.
    Retry { next: u32, delay: Duration },
    /// No attempts left.
    GiveUp,
}

impl RetryPolicy {
    /// `jitter` is a number in `[0, 1)`; the delay is drawn from the upper
    /// half of the exponential step (`base·2^(attempt-1)`, capped at `max`),
    /// so retries of many jobs that failed together spread out but never
    /// come back sooner than half the step.
    pub fn decide(&self, attempt: u32, jitter: f64) -> Decision {
        if attempt >= self.max_attempts {
            return Decision::GiveUp;
        }
        let exp = attempt.saturating_sub(1).min(30);
        let step = self
            .base
            .checked_mul(1u32 << exp)
            .unwrap_or(self.max)
            .min(self.max);
        let jitter = jitter.clamp(0.0, 1.0);
        let delay = step.mul_f64(0.5 + 0.5 * jitter);
        Decision::Retry {
            next: attempt + 1,
            delay,
        }
    }

    pub fn decide_random(&self, attempt: u32) -> Decision {
        self.decide(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_secs(2),
            max: Duration::from_secs(10),
        }
    }

    #[test]
    fn delays_double_per_attempt_within_the_jitter_band() {
        let p = policy();
        for (attempt, step) in [(1, 2.0), (2, 4.0), (3, 8.0)] {
            let Decision::Retry { next, delay } = p.decide(attempt, 0.0) else {
                panic!("attempt {attempt} should retry");
            };
            assert_eq!(next, attempt + 1);
            assert_eq!(delay.as_secs_f64(), step / 2.0);
            let Decision::Retry { delay, .. } = p.decide(attempt, 0.999_999) else {
                panic!()
            };
            assert!((delay.as_secs_f64() - step).abs() < 1e-3, "{delay:?}");
        }
    }

    #[test]
    fn delays_are_capped() {
        let p = policy();
        let Decision::Retry { delay, .. } = p.decide(4, 1.0) else {
            panic!()
        };
        assert_eq!(delay, Duration::from_secs(10));
        let huge = RetryPolicy {
            max_attempts: u32::MAX,
            ..p
        };
        let Decision::Retry { delay, .. } = huge.decide(1000, 1.0) else {
            panic!()
        };
        assert_eq!(delay, Duration::from_secs(10));
    }

    #[test]
    fn gives_up_at_max_attempts() {
        let p = policy();
        assert_eq!(p.decide(5, 0.3), Decision::GiveUp);
        assert_eq!(p.decide(6, 0.3), Decision::GiveUp);
        assert!(matches!(p.decide(4, 0.3), Decision::Retry { next: 5, .. }));
    }

    #[test]
    fn jitter_spreads_delays() {
        let p = policy();
        let delays: std::collections::BTreeSet<_> = (0..50)
            .map(|_| match p.decide_random(2) {
                Decision::Retry { delay, .. } => delay.as_micros(),
                Decision::GiveUp => panic!(),
            })
            .collect();
        assert!(delays.len() > 40, "jitter should make delays differ");
        assert!(delays.iter().all(|d| (2_000_000..=4_000_000).contains(d)));
    }
}
