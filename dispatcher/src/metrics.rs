//! Counters and histograms kept in memory and rendered, with the job
//! counts read from PostgreSQL, as Prometheus text on `/metrics`.

use kiln_protocol::{Engine, JobState};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fixed-bucket histogram of seconds.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        for (b, bound) in self.buckets.iter().zip(self.bounds) {
            if seconds <= *bound {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (b, bound) in self.buckets.iter().zip(self.bounds) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                b.load(Ordering::Relaxed)
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

const LATENCY: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];
const LAG: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0];

pub struct Metrics {
    /// Seconds from publishing a relay batch to the broker's confirm.
    pub publish_confirm: Histogram,
    /// Seconds from a worker's event to its application in PostgreSQL.
    pub event_lag: Histogram,
    pub published: AtomicU64,
    pub events_applied: AtomicU64,
    pub events_ignored: AtomicU64,
    pub events_undecodable: AtomicU64,
    /// Worker events whose attempt token was wrong or missing.
    pub events_rejected: AtomicU64,
    /// Sets of events applied, one transaction each.
    pub event_sets: AtomicU64,
    /// Result URLs reused instead of signed again.
    pub presign_reused: AtomicU64,
    pub dead_letters: AtomicU64,
    pub dead_letters_undecodable: AtomicU64,
    /// Worker reports read into the worker registry (one older than the
    /// report held of the same process changes nothing).
    pub worker_reports: AtomicU64,
    /// Messages in the worker reports' queue dropped: not a report, or a
    /// report PostgreSQL refused.
    pub worker_reports_dropped: AtomicU64,
    pub leases_expired: AtomicU64,
    /// Stale attempts told to stop (they reported running after the job
    /// moved to a later attempt or ended).
    pub stale_attempts: AtomicU64,
    /// Published attempts no worker started in time, published again.
    pub jobs_rescued: AtomicU64,
    /// Attempts whose URLs the bucket refused (expired), published again
    /// with fresh ones.
    pub jobs_reissued: AtomicU64,
    /// Jobs failed because no worker started them after every republish.
    pub jobs_never_started: AtomicU64,
    /// What retention deleted (see `crate::prune`).
    pub pruned: Pruned,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            publish_confirm: Histogram::new(LATENCY),
            event_lag: Histogram::new(LAG),
            published: AtomicU64::new(0),
            events_applied: AtomicU64::new(0),
            events_ignored: AtomicU64::new(0),
            events_undecodable: AtomicU64::new(0),
            events_rejected: AtomicU64::new(0),
            event_sets: AtomicU64::new(0),
            presign_reused: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            dead_letters_undecodable: AtomicU64::new(0),
            worker_reports: AtomicU64::new(0),
            worker_reports_dropped: AtomicU64::new(0),
            leases_expired: AtomicU64::new(0),
            stale_attempts: AtomicU64::new(0),
            jobs_rescued: AtomicU64::new(0),
            jobs_reissued: AtomicU64::new(0),
            jobs_never_started: AtomicU64::new(0),
            pruned: Default::default(),
        }
    }
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn counter(out: &mut String, name: &str, help: &str, c: &AtomicU64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    let _ = writeln!(out, "{name} {}", c.load(Ordering::Relaxed));
}

/// What retention deleted, counted by `crate::prune`.
#[derive(Debug, Default)]
pub struct Pruned {
    pub batches: AtomicU64,
    pub jobs: AtomicU64,
    pub uploads: AtomicU64,
    pub objects: AtomicU64,
    pub orphans: AtomicU64,
}

impl Pruned {
    fn render(&self, out: &mut String) {
        let all = [
            (
                "batches",
                "Finished batches deleted by retention.",
                &self.batches,
            ),
            ("jobs", "Jobs deleted with their batches.", &self.jobs),
            (
                "uploads",
                "Unused uploads deleted by retention.",
                &self.uploads,
            ),
            (
                "objects",
                "Objects of deleted batches and uploads removed from the bucket.",
                &self.objects,
            ),
            (
                "orphans",
                "Objects no row referred to, removed after the grace period.",
                &self.orphans,
            ),
        ];
        for (what, help, c) in all {
            counter(out, &format!("kiln_pruned_{what}_total"), help, c);
        }
    }
}

impl Metrics {
    /// Renders everything; `jobs` holds `(engine, state, count)` rows.
    pub fn render(&self, jobs: &[(Engine, JobState, i64)]) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP kiln_jobs Jobs by state and engine.");
        let _ = writeln!(out, "# TYPE kiln_jobs gauge");
        for (engine, state, n) in jobs {
            let _ = writeln!(
                out,
                "kiln_jobs{{state=\"{state}\",engine=\"{engine}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP kiln_backlog Jobs queued or running per engine: the figure an autoscaler should read."
        );
        let _ = writeln!(out, "# TYPE kiln_backlog gauge");
        for engine in Engine::ALL {
            let n: i64 = jobs
                .iter()
                .filter(|(e, s, _)| *e == engine && !s.is_terminal())
                .map(|(_, _, n)| n)
                .sum();
            let _ = writeln!(out, "kiln_backlog{{engine=\"{engine}\"}} {n}");
        }
        self.publish_confirm.render(
            &mut out,
            "kiln_publish_confirm_seconds",
            "Seconds from publishing a relay batch to the broker's confirm.",
        );
        self.event_lag.render(
            &mut out,
            "kiln_event_lag_seconds",
            "Seconds from a worker event's timestamp to its application.",
        );
        self.render_counters(&mut out);
        self.pruned.render(&mut out);
        out
    }

    fn render_counters(&self, out: &mut String) {
        let counters: [(&str, &str, &AtomicU64); 16] = [
            (
                "kiln_presign_reused_total",
                "Result URLs reused from the presign cache instead of signed again.",
                &self.presign_reused,
            ),
            (
                "kiln_published_total",
                "Job messages confirmed by the broker.",
                &self.published,
            ),
            (
                "kiln_events_applied_total",
                "Worker events that changed a job.",
                &self.events_applied,
            ),
            (
                "kiln_events_ignored_total",
                "Worker events that changed nothing (duplicate, stale or out of order).",
                &self.events_ignored,
            ),
            (
                "kiln_events_undecodable_total",
                "Worker events that could not be decoded.",
                &self.events_undecodable,
            ),
            (
                "kiln_events_rejected_total",
                "Worker events ignored because their attempt token was wrong or missing.",
                &self.events_rejected,
            ),
            (
                "kiln_dead_letters_total",
                "Dead-lettered job deliveries.",
                &self.dead_letters,
            ),
            (
                "kiln_dead_letters_undecodable_total",
                "Dead-lettered messages that were not job messages.",
                &self.dead_letters_undecodable,
            ),
            (
                "kiln_worker_reports_total",
                "Worker reports read into the worker registry (one older than the report held of its process changes nothing).",
                &self.worker_reports,
            ),
            (
                "kiln_worker_reports_dropped_total",
                "Messages in the worker reports' queue dropped: not a worker report, or one PostgreSQL refused.",
                &self.worker_reports_dropped,
            ),
            (
                "kiln_event_sets_total",
                "Sets of worker events applied, each in one transaction with one ack.",
                &self.event_sets,
            ),
            (
                "kiln_leases_expired_total",
                "Running jobs whose lease lapsed.",
                &self.leases_expired,
            ),
            (
                "kiln_stale_attempts_total",
                "Attempts told to stop because the job had moved on.",
                &self.stale_attempts,
            ),
            (
                "kiln_jobs_rescued_total",
                "Published jobs no worker started in time (the broker lost them), published again.",
                &self.jobs_rescued,
            ),
            (
                "kiln_jobs_reissued_total",
                "Attempts whose presigned URLs the bucket refused (expired), published again with fresh ones.",
                &self.jobs_reissued,
            ),
            (
                "kiln_jobs_never_started_total",
                "Jobs failed because no worker started them after every republish.",
                &self.jobs_never_started,
            ),
        ];
        for (name, help, c) in counters {
            counter(out, name, help, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(3.0);
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.1\"} 1"), "{out}");
        assert!(out.contains("x_bucket{le=\"1\"} 2"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3"), "{out}");
        assert!(out.contains("x_count 3"), "{out}");
    }

    #[test]
    fn backlog_sums_queued_and_running() {
        let m = Metrics::default();
        let rows = vec![
            (Engine::Dalle, JobState::Queued, 4),
            (Engine::Dalle, JobState::Running, 2),
            (Engine::Dalle, JobState::Succeeded, 9),
        ];
        let out = m.render(&rows);
        assert!(out.contains("kiln_backlog{engine=\"dalle\"} 6"), "{out}");
        assert!(
            out.contains("kiln_backlog{engine=\"vqgan-clip\"} 0"),
            "{out}"
        );
        assert!(
            out.contains("kiln_jobs{state=\"succeeded\",engine=\"dalle\"} 9"),
            "{out}"
        );
    }
}
