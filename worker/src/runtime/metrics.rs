//! `/livez`, `/readyz` (also as `/healthz`) and `/metrics` (OpenMetrics
//! text, on `prometheus-client`, with the process metrics and, on CUDA, the
//! GPU memory from NVML) on a small HTTP port.

use crate::runtime::gpu_memory::{Bytes, DeviceLabel, GpuMemory};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use kiln_protocol::metrics::{register, EngineLabel};
use kiln_protocol::Engine as EngineKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;

const SECONDS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
];
const BATCH_SIZES: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// How a delivery ended, as counted in `kiln_worker_jobs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Succeeded,
    FailedRetryable,
    FailedPermanent,
    Cancelled,
    TimedOut,
    /// Delivered after it was cancelled: dropped without rendering.
    Dropped,
    /// Not a job this worker understands: dead-lettered.
    Rejected,
    /// Handed back to the broker (the worker drained while it waited).
    Requeued,
    /// The bucket refused the job's URLs: reported for fresh ones.
    Expired,
}

impl Outcome {
    /// The `outcome` label; the terminal ones are the job states' words.
    fn label(self) -> &'static str {
        match self {
            Outcome::Succeeded => kiln_protocol::JobState::Succeeded.as_str(),
            Outcome::FailedRetryable => "failed_retryable",
            Outcome::FailedPermanent => "failed_permanent",
            Outcome::Cancelled => kiln_protocol::JobState::Cancelled.as_str(),
            Outcome::TimedOut => "timed_out",
            Outcome::Dropped => "dropped",
            Outcome::Rejected => "rejected",
            Outcome::Requeued => "requeued",
            Outcome::Expired => "expired",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    engine: String,
    outcome: &'static str,
}

type PerEngine = Family<EngineLabel, Histogram, fn() -> Histogram>;

/// The worker's metrics, shared by every task.
pub struct Metrics {
    registry: Registry,
    jobs: Family<JobLabels, Counter>,
    render: PerEngine,
    queue_wait: PerEngine,
    batch_size: PerEngine,
    /// Bytes of model weights per device, once loaded.
    model_bytes: Bytes,
    pub worker: String,
    pub slots: u32,
    /// Slots rendering now.
    pub busy: Gauge,
    /// 1 once the worker drains.
    pub draining: Gauge,
    /// 1 while the broker connection is up.
    pub connected: Gauge,
    pub events_failed: Counter,
    /// Sessions replaced after the broker connection was lost.
    pub reconnects: Counter,
    /// Deliveries of an attempt this worker had already reported, acked
    /// without rendering.
    pub redeliveries: Counter,
    engines: Vec<EngineKind>,
}

fn per_engine(r: &mut Registry, name: &str, help: &str, buckets: fn() -> Histogram) -> PerEngine {
    register(r, name, help, PerEngine::new_with_constructor(buckets))
}

/// A metric with its default value, registered.
fn registered<M: Clone + Default + prometheus_client::registry::Metric>(
    r: &mut Registry,
    name: &str,
    help: &str,
) -> M {
    register(r, name, help, M::default())
}

impl Metrics {
    pub fn new(
        worker: String,
        slots: u32,
        devices: Vec<tch::Device>,
        engines: Vec<EngineKind>,
    ) -> Metrics {
        let mut r = kiln_protocol::metrics::registry_with_process_metrics();
        let total_slots: Gauge = registered(&mut r, "kiln_worker_slots", "Render slots per device");
        total_slots.set(i64::from(slots));
        let loaded: Family<EngineLabel, Gauge> = registered(
            &mut r,
            "kiln_worker_engine_loaded",
            "Engines this worker renders",
        );
        for e in &engines {
            loaded
                .get_or_create(&EngineLabel { engine: e.as_str() })
                .set(1);
        }
        if let Some(gpu) = GpuMemory::new(&devices) {
            r.register_collector(Box::new(gpu));
        }
        let c = &mut r;
        Metrics {
            jobs: registered(c, "kiln_worker_jobs", "Deliveries handled, by engine and outcome"),
            render: per_engine(c, "kiln_worker_render_seconds", "Time to render, rerank and encode one job", || Histogram::new(SECONDS)),
            queue_wait: per_engine(c, "kiln_worker_queue_wait_seconds", "Time from publish (or delivery) to the start of rendering", || Histogram::new(SECONDS)),
            batch_size: per_engine(c, "kiln_worker_batch_size", "Jobs in the batch each job was rendered in", || Histogram::new(BATCH_SIZES)),
            model_bytes: registered(c, "kiln_worker_model_bytes", "Bytes of model weights loaded, per device (one set per device, whatever the slot count)"),
            busy: registered(c, "kiln_worker_slots_busy", "Slots rendering now"),
            draining: registered(c, "kiln_worker_draining", "1 while the worker drains"),
            connected: registered(c, "kiln_worker_broker_connected", "1 while the broker connection is up"),
            events_failed: registered(c, "kiln_worker_event_publish_failures", "Events the broker did not confirm"),
            reconnects: registered(c, "kiln_worker_broker_reconnects", "Broker sessions replaced after the connection was lost"),
            redeliveries: registered(c, "kiln_worker_redeliveries_recognised", "Deliveries of an attempt already reported here, acked without rendering"),
            registry: r,
            worker,
            slots,
            engines,
        }
    }

    /// The bytes of model weights each device holds.
    pub fn set_model_bytes(&self, per_device: &[(tch::Device, u64)]) {
        for (device, bytes) in per_device {
            let device = crate::runtime::slots::device_label(*device);
            self.model_bytes
                .get_or_create(&DeviceLabel { device })
                .set(*bytes);
        }
    }

    /// A job of `engine` was rendered in a batch of `size` jobs.
    pub fn batch_size(&self, engine: EngineKind, size: usize) {
        self.batch_size
            .get_or_create(&EngineLabel {
                engine: engine.as_str(),
            })
            .observe(size as f64);
    }

    pub fn job(&self, engine: &str, outcome: Outcome) {
        let labels = JobLabels {
            engine: engine.to_string(),
            outcome: outcome.label(),
        };
        self.jobs.get_or_create(&labels).inc();
    }

    pub fn render_seconds(&self, engine: EngineKind, secs: f64) {
        self.render
            .get_or_create(&EngineLabel {
                engine: engine.as_str(),
            })
            .observe(secs);
    }

    pub fn queue_wait(&self, engine: EngineKind, secs: f64) {
        self.queue_wait
            .get_or_create(&EngineLabel {
                engine: engine.as_str(),
            })
            .observe(secs);
    }

    /// Everything as OpenMetrics text.
    pub fn render(&self) -> String {
        kiln_protocol::metrics::encode(&self.registry)
    }
}

/// `/livez`: 200 while the process serves, whatever the broker or a drain
/// do (a liveness probe must not restart a worker that reconnects or
/// drains), with the same body as `/readyz`.
async fn livez(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let (_, body) = health(&m);
    (StatusCode::OK, body)
}

/// `/readyz` (and `/healthz`, its older name): 503 while the broker is out
/// of reach or the worker drains.
async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    health(&m)
}

fn health(m: &Metrics) -> (StatusCode, axum::Json<serde_json::Value>) {
    let connected = m.connected.get() != 0;
    let draining = m.draining.get() != 0;
    let status = if !connected {
        "disconnected"
    } else if draining {
        "draining"
    } else {
        "ok"
    };
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": status,
        "worker": m.worker,
        "slots": m.slots,
        "busy": m.busy.get(),
        "engines": m.engines.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
    });
    (code, axum::Json(body))
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    // Off the runtime's threads: NVML answers from the driver, which may
    // be slow.
    let text = tokio::task::spawn_blocking(move || m.render())
        .await
        .unwrap_or_default();
    (
        [(header::CONTENT_TYPE, kiln_protocol::metrics::CONTENT_TYPE)],
        text,
    )
}

/// Binds `addr` and serves until the process ends; returns the bound address.
pub async fn serve(addr: SocketAddr, m: Arc<Metrics>) -> anyhow::Result<SocketAddr> {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "the metrics port {} is taken (another kiln-worker on this host?): give this one its own with --metrics-bind or KILN_METRICS_BIND, e.g. 0.0.0.0:{} (or 127.0.0.1:0 for any free port)",
            addr.port(),
            addr.port().wrapping_add(1)
        ),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("binding the metrics server to {addr}"))),
    };
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/healthz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(m);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_port_says_how_to_choose_another() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let m = Arc::new(Metrics::new("w".into(), 1, vec![tch::Device::Cpu], vec![]));
        let e = serve(addr, m).await.unwrap_err().to_string();
        assert!(
            e.contains(&format!("metrics port {} is taken", addr.port()))
                && e.contains("--metrics-bind")
                && !e.contains('\n'),
            "{e}"
        );
    }

    #[tokio::test]
    async fn exposition_has_counts_and_histograms() {
        let m = Metrics::new(
            "w".into(),
            2,
            vec![tch::Device::Cpu],
            vec![EngineKind::TestPattern],
        );
        m.set_model_bytes(&[(tch::Device::Cpu, 1234)]);
        m.batch_size(EngineKind::TestPattern, 4);
        m.batch_size(EngineKind::TestPattern, 2);
        m.job("test-pattern", Outcome::Succeeded);
        m.job("test-pattern", Outcome::Succeeded);
        m.job("test-pattern", Outcome::Cancelled);
        m.render_seconds(EngineKind::TestPattern, 0.3);
        m.render_seconds(EngineKind::TestPattern, 7.0);
        let text = m.render();
        assert!(
            text.contains(
                "kiln_worker_jobs_total{engine=\"test-pattern\",outcome=\"succeeded\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("kiln_worker_model_bytes{device=\"cpu\"} 1234"),
            "{text}"
        );
        assert!(
            text.contains("kiln_worker_batch_size_sum{engine=\"test-pattern\"} 6.0")
                && text.contains("kiln_worker_batch_size_count{engine=\"test-pattern\"} 2"),
            "{text}"
        );
        assert!(text
            .contains("kiln_worker_jobs_total{engine=\"test-pattern\",outcome=\"cancelled\"} 1"));
        assert!(text
            .contains("kiln_worker_render_seconds_bucket{le=\"0.5\",engine=\"test-pattern\"} 1"));
        assert!(text
            .contains("kiln_worker_render_seconds_bucket{le=\"10.0\",engine=\"test-pattern\"} 2"));
        assert!(text.contains("kiln_worker_render_seconds_count{engine=\"test-pattern\"} 2"));
        assert!(text.contains("kiln_worker_slots 2"));
    }
}
