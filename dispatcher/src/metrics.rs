//! The dispatcher's metrics on `prometheus-client`: counters and histograms
//! kept in memory, the job counts read from PostgreSQL at each scrape, and
//! the process metrics, rendered as OpenMetrics text on `/metrics`.

use kiln_protocol::metrics::{register, EngineLabel};
use kiln_protocol::{Engine, JobState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Mutex;

const LATENCY: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];
const LAG: [f64; 8] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    state: &'static str,
    engine: &'static str,
}

/// What the dispatcher counts; one set per dispatcher (tests run several
/// in one process).
pub struct Metrics {
    registry: Registry,
    /// Jobs by state and engine, set from PostgreSQL at each scrape.
    jobs: Family<JobLabels, Gauge>,
    backlog: Family<EngineLabel, Gauge>,
    outbox_pending: Gauge,
    /// Held while a scrape sets the gauges above and encodes, so that two
    /// scrapes do not interleave.
    scrape: Mutex<()>,
    /// Seconds from publishing a relay batch to the broker's confirm.
    pub publish_confirm: Histogram,
    /// Seconds from a worker's event to its application in PostgreSQL.
    pub event_lag: Histogram,
    pub published: Counter,
    pub events_applied: Counter,
    pub events_ignored: Counter,
    pub events_undecodable: Counter,
    /// Worker events whose attempt token was wrong or missing.
    pub events_rejected: Counter,
    /// Sets of events applied, one transaction each.
    pub event_sets: Counter,
    /// Result URLs reused instead of signed again.
    pub presign_reused: Counter,
    pub dead_letters: Counter,
    pub dead_letters_undecodable: Counter,
    /// Worker reports read into the worker registry (one older than the
    /// report held of the same process changes nothing).
    pub worker_reports: Counter,
    /// Messages in the worker reports' queue dropped: not a report, or a
    /// report PostgreSQL refused.
    pub worker_reports_dropped: Counter,
    pub leases_expired: Counter,
    /// Stale attempts told to stop (they reported running after the job
    /// moved to a later attempt or ended).
    pub stale_attempts: Counter,
    /// Published attempts no worker started in time, published again.
    pub jobs_rescued: Counter,
    /// Attempts whose URLs the bucket refused (expired), published again
    /// with fresh ones.
    pub jobs_reissued: Counter,
    /// Jobs failed because no worker started them after every republish.
    pub jobs_never_started: Counter,
    /// What retention deleted (see `crate::prune`).
    pub pruned: Pruned,
    /// Webhook attempts the receiver acknowledged, attempts that failed,
    /// and deliveries given up (see `crate::webhooks`).
    pub webhooks_delivered: Counter,
    pub webhook_attempts_failed: Counter,
    pub webhooks_given_up: Counter,
}

pub fn inc(c: &Counter) {
    c.inc();
}

/// A counter registered as `name` (the text adds `_total`).
fn counter(r: &mut Registry, name: &str, help: &str) -> Counter {
    register(r, name, help, Counter::default())
}

/// What retention deleted, counted by `crate::prune`.
#[derive(Debug)]
pub struct Pruned {
    pub batches: Counter,
    pub jobs: Counter,
    pub uploads: Counter,
    pub objects: Counter,
    pub orphans: Counter,
}

impl Pruned {
    fn register(r: &mut Registry) -> Pruned {
        Pruned {
            batches: counter(
                r,
                "kiln_pruned_batches",
                "Finished batches deleted by retention",
            ),
            jobs: counter(r, "kiln_pruned_jobs", "Jobs deleted with their batches"),
            uploads: counter(
                r,
                "kiln_pruned_uploads",
                "Unused uploads deleted by retention",
            ),
            objects: counter(
                r,
                "kiln_pruned_objects",
                "Objects of deleted batches and uploads removed from the bucket",
            ),
            orphans: counter(
                r,
                "kiln_pruned_orphans",
                "Objects no row referred to, removed after the grace period",
            ),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = kiln_protocol::metrics::registry_with_process_metrics();
        let c = &mut r;
        let jobs = register(
            c,
            "kiln_jobs",
            "Jobs by state and engine",
            Family::default(),
        );
        let backlog = register(
            c,
            "kiln_backlog",
            "Jobs queued or running per engine: the figure an autoscaler should read",
            Family::default(),
        );
        let outbox_pending = register(
            c,
            "kiln_outbox_pending",
            "Job attempts stored but not yet published",
            Gauge::default(),
        );
        let publish_confirm = register(
            c,
            "kiln_publish_confirm_seconds",
            "Seconds from publishing a relay batch to the broker's confirm",
            Histogram::new(LATENCY),
        );
        let event_lag = register(
            c,
            "kiln_event_lag_seconds",
            "Seconds from a worker event's timestamp to its application",
            Histogram::new(LAG),
        );
        Metrics {
            presign_reused: counter(c, "kiln_presign_reused", "Result URLs reused from the presign cache instead of signed again"),
            published: counter(c, "kiln_published", "Job messages confirmed by the broker"),
            events_applied: counter(c, "kiln_events_applied", "Worker events that changed a job"),
            events_ignored: counter(c, "kiln_events_ignored", "Worker events that changed nothing (duplicate, stale or out of order)"),
            events_undecodable: counter(c, "kiln_events_undecodable", "Worker events that could not be decoded"),
            events_rejected: counter(c, "kiln_events_rejected", "Worker events ignored because their attempt token was wrong or missing"),
            dead_letters: counter(c, "kiln_dead_letters", "Dead-lettered job deliveries"),
            dead_letters_undecodable: counter(c, "kiln_dead_letters_undecodable", "Dead-lettered messages that were not job messages"),
            worker_reports: counter(c, "kiln_worker_reports", "Worker reports read into the worker registry (one older than the report held of its process changes nothing)"),
            worker_reports_dropped: counter(c, "kiln_worker_reports_dropped", "Messages in the worker reports' queue dropped: not a worker report, or one PostgreSQL refused"),
            event_sets: counter(c, "kiln_event_sets", "Sets of worker events applied, each in one transaction with one ack"),
            leases_expired: counter(c, "kiln_leases_expired", "Running jobs whose lease lapsed"),
            stale_attempts: counter(c, "kiln_stale_attempts", "Attempts told to stop because the job had moved on"),
            jobs_rescued: counter(c, "kiln_jobs_rescued", "Published jobs no worker started in time (the broker lost them), published again"),
            jobs_reissued: counter(c, "kiln_jobs_reissued", "Attempts whose presigned URLs the bucket refused (expired), published again with fresh ones"),
            jobs_never_started: counter(c, "kiln_jobs_never_started", "Jobs failed because no worker started them after every republish"),
            pruned: Pruned::register(c),
            webhooks_delivered: counter(c, "kiln_webhooks_delivered", "Webhook deliveries the receiver acknowledged (2xx)"),
            webhook_attempts_failed: counter(c, "kiln_webhook_attempts_failed", "Webhook attempts that got no 2xx answer (tried again later)"),
            webhooks_given_up: counter(c, "kiln_webhooks_given_up", "Webhook deliveries given up after KILN_WEBHOOK_RETRY_FOR"),
            registry: r,
            jobs,
            backlog,
            outbox_pending,
            scrape: Mutex::new(()),
            publish_confirm,
            event_lag,
        }
    }
}

impl Metrics {
    /// Everything as OpenMetrics text; `jobs` holds `(engine, state, count)`
    /// rows and `outbox_pending` the attempts not yet published.
    pub fn render(&self, jobs: &[(Engine, JobState, i64)], outbox_pending: i64) -> String {
        let _one_at_a_time = self.scrape.lock().expect("metrics lock");
        self.jobs.clear();
        for (engine, state, n) in jobs {
            let labels = JobLabels {
                state: state.as_str(),
                engine: engine.as_str(),
            };
            self.jobs.get_or_create(&labels).set(*n);
        }
        for engine in Engine::ALL {
            let n: i64 = jobs
                .iter()
                .filter(|(e, s, _)| *e == engine && !s.is_terminal())
                .map(|(_, _, n)| n)
                .sum();
            let labels = EngineLabel {
                engine: engine.as_str(),
            };
            self.backlog.get_or_create(&labels).set(n);
        }
        self.outbox_pending.set(outbox_pending);
        kiln_protocol::metrics::encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let m = Metrics::default();
        m.event_lag.observe(0.005);
        m.event_lag.observe(0.07);
        m.event_lag.observe(300.0);
        let out = m.render(&[], 0);
        assert!(
            out.contains("kiln_event_lag_seconds_bucket{le=\"0.01\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("kiln_event_lag_seconds_bucket{le=\"0.1\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("kiln_event_lag_seconds_bucket{le=\"+Inf\"} 3"),
            "{out}"
        );
        assert!(out.contains("kiln_event_lag_seconds_count 3"), "{out}");
    }

    #[test]
    fn backlog_sums_queued_and_running() {
        let m = Metrics::default();
        let rows = vec![
            (Engine::Dalle, JobState::Queued, 4),
            (Engine::Dalle, JobState::Running, 2),
            (Engine::Dalle, JobState::Succeeded, 9),
        ];
        let out = m.render(&rows, 3);
        assert!(out.contains("kiln_backlog{engine=\"dalle\"} 6"), "{out}");
        assert!(
            out.contains("kiln_backlog{engine=\"vqgan-clip\"} 0"),
            "{out}"
        );
        assert!(
            out.contains("kiln_jobs{state=\"succeeded\",engine=\"dalle\"} 9"),
            "{out}"
        );
        assert!(out.contains("kiln_outbox_pending 3"), "{out}");
        // A state that emptied leaves the next scrape.
        let out = m.render(&rows[..2], 0);
        assert!(!out.contains("state=\"succeeded\""), "{out}");
    }

    #[test]
    fn counters_and_process_metrics_are_exposed() {
        let m = Metrics::default();
        inc(&m.events_rejected);
        inc(&m.events_rejected);
        m.pruned.objects.inc_by(5);
        let out = m.render(&[], 0);
        assert!(out.contains("kiln_events_rejected_total 2"), "{out}");
        assert!(out.contains("kiln_pruned_objects_total 5"), "{out}");
        assert!(out.contains("# TYPE kiln_events_rejected counter"), "{out}");
        assert!(out.contains("process_resident_memory_bytes "), "{out}");
        assert!(out.ends_with("# EOF\n"), "{out}");
    }
}
