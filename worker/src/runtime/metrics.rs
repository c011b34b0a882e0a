//! `/livez`, `/readyz` (also as `/healthz`) and `/metrics` (Prometheus text
//! format) on a small HTTP port.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use kiln_protocol::Engine as EngineKind;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{b}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

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

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<(String, Outcome), u64>,
    render: BTreeMap<String, Histogram>,
    queue_wait: BTreeMap<String, Histogram>,
    /// Per engine: the sum of the batch sizes jobs were rendered in, and the job count.
    batch_size: BTreeMap<String, (u64, u64)>,
    /// Bytes of model weights per device, once loaded.
    model_bytes: Vec<(tch::Device, u64)>,
}

/// The worker's counters, shared by every task.
pub struct Metrics {
    inner: Mutex<Inner>,
    pub worker: String,
    pub slots: u32,
    pub busy: AtomicU32,
    pub draining: AtomicBool,
    pub connected: AtomicBool,
    pub events_failed: AtomicU64,
    /// Sessions replaced after the broker connection was lost.
    pub reconnects: AtomicU64,
    /// Deliveries of an attempt this worker had already reported, acked
    /// without rendering.
    pub redeliveries: AtomicU64,
    devices: Vec<tch::Device>,
    engines: Vec<EngineKind>,
}

impl Metrics {
    pub fn new(
        worker: String,
        slots: u32,
        devices: Vec<tch::Device>,
        engines: Vec<EngineKind>,
    ) -> Metrics {
        Metrics {
            inner: Mutex::default(),
            worker,
            slots,
            busy: AtomicU32::new(0),
            draining: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            events_failed: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            redeliveries: AtomicU64::new(0),
            devices,
            engines,
        }
    }

    /// The bytes of model weights each device holds.
    pub fn set_model_bytes(&self, per_device: &[(tch::Device, u64)]) {
        self.inner.lock().expect("metrics lock").model_bytes = per_device.to_vec();
    }

    /// A job of `engine` was rendered in a batch of `size` jobs.
    pub fn batch_size(&self, engine: EngineKind, size: usize) {
        let mut i = self.inner.lock().expect("metrics lock");
        let e = i.batch_size.entry(engine.to_string()).or_default();
        e.0 += size as u64;
        e.1 += 1;
    }

    pub fn job(&self, engine: &str, outcome: Outcome) {
        *self
            .inner
            .lock()
            .expect("metrics lock")
            .jobs
            .entry((engine.to_string(), outcome))
            .or_default() += 1;
    }

    pub fn render_seconds(&self, engine: EngineKind, secs: f64) {
        let mut i = self.inner.lock().expect("metrics lock");
        i.render
            .entry(engine.to_string())
            .or_default()
            .observe(secs);
    }

    pub fn queue_wait(&self, engine: EngineKind, secs: f64) {
        let mut i = self.inner.lock().expect("metrics lock");
        i.queue_wait
            .entry(engine.to_string())
            .or_default()
            .observe(secs);
    }

    pub async fn render(&self) -> String {
        let mut out = String::new();
        {
            let i = self.inner.lock().expect("metrics lock");
            out.push_str(
                "# HELP kiln_worker_jobs_total Deliveries handled, by engine and outcome.\n",
            );
            out.push_str("# TYPE kiln_worker_jobs_total counter\n");
            for ((engine, outcome), n) in &i.jobs {
                let _ = writeln!(
                    out,
                    "kiln_worker_jobs_total{{engine=\"{engine}\",outcome=\"{}\"}} {n}",
                    outcome.label()
                );
            }
            out.push_str(
                "# HELP kiln_worker_render_seconds Time to render, rerank and encode one job.\n",
            );
            out.push_str("# TYPE kiln_worker_render_seconds histogram\n");
            for (engine, h) in &i.render {
                h.write(
                    &mut out,
                    "kiln_worker_render_seconds",
                    &format!("engine=\"{engine}\""),
                );
            }
            out.push_str(
                "# HELP kiln_worker_queue_wait_seconds Time from publish (or delivery) to the start of rendering.\n",
            );
            out.push_str("# TYPE kiln_worker_queue_wait_seconds histogram\n");
            write_batches_and_models(&i, &mut out);
            for (engine, h) in &i.queue_wait {
                h.write(
                    &mut out,
                    "kiln_worker_queue_wait_seconds",
                    &format!("engine=\"{engine}\""),
                );
            }
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let flag = |b: &AtomicBool| u64::from(b.load(Ordering::Relaxed));
        let samples = [
            ("kiln_worker_slots", "gauge", u64::from(self.slots)),
            (
                "kiln_worker_slots_busy",
                "gauge",
                u64::from(self.busy.load(Ordering::Relaxed)),
            ),
            ("kiln_worker_draining", "gauge", flag(&self.draining)),
            (
                "kiln_worker_event_publish_failures_total",
                "counter",
                load(&self.events_failed),
            ),
            (
                "kiln_worker_broker_connected",
                "gauge",
                flag(&self.connected),
            ),
            (
                "kiln_worker_broker_reconnects_total",
                "counter",
                load(&self.reconnects),
            ),
            (
                "kiln_worker_redeliveries_recognised_total",
                "counter",
                load(&self.redeliveries),
            ),
        ];
        for (name, kind, value) in samples {
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {value}");
        }
        for e in &self.engines {
            let _ = writeln!(out, "kiln_worker_engine_loaded{{engine=\"{e}\"}} 1");
        }
        for device in &self.devices {
            let tch::Device::Cuda(k) = *device else {
                continue;
            };
            if let Some((used, total)) = gpu_memory(k).await {
                let _ = writeln!(
                    out,
                    "# TYPE kiln_worker_gpu_memory_used_bytes gauge\nkiln_worker_gpu_memory_used_bytes{{device=\"cuda:{k}\"}} {used}"
                );
                let _ = writeln!(
                    out,
                    "# TYPE kiln_worker_gpu_memory_total_bytes gauge\nkiln_worker_gpu_memory_total_bytes{{device=\"cuda:{k}\"}} {total}"
                );
            }
        }
        out
    }
}

/// The batch sizes per engine and the model bytes per device.
fn write_batches_and_models(i: &Inner, out: &mut String) {
    out.push_str("# HELP kiln_worker_batch_size Jobs in the batch each job was rendered in.\n");
    out.push_str("# TYPE kiln_worker_batch_size summary\n");
    for (engine, (sum, count)) in &i.batch_size {
        let _ = writeln!(
            out,
            "kiln_worker_batch_size_sum{{engine=\"{engine}\"}} {sum}\nkiln_worker_batch_size_count{{engine=\"{engine}\"}} {count}"
        );
    }
    out.push_str(
        "# HELP kiln_worker_model_bytes Bytes of model weights loaded, per device (one set per device, whatever the slot count).\n",
    );
    out.push_str("# TYPE kiln_worker_model_bytes gauge\n");
    for (device, bytes) in &i.model_bytes {
        let _ = writeln!(
            out,
            "kiln_worker_model_bytes{{device=\"{}\"}} {bytes}",
            crate::runtime::slots::device_label(*device)
        );
    }
}

/// Used and total memory of GPU `k` in bytes, as the driver reports them.
async fn gpu_memory(k: usize) -> Option<(u64, u64)> {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=memory.used,memory.total",
                "--format=csv,noheader,nounits",
                &format!("--id={k}"),
            ])
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let (used, total) = text.trim().split_once(',')?;
    let mib = |s: &str| s.trim().parse::<u64>().ok().map(|v| v * 1024 * 1024);
    Some((mib(used)?, mib(total)?))
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
    let connected = m.connected.load(Ordering::Relaxed);
    let draining = m.draining.load(Ordering::Relaxed);
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
        "busy": m.busy.load(Ordering::Relaxed),
        "engines": m.engines.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
    });
    (code, axum::Json(body))
}

async fn metrics(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render().await,
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
        let text = m.render().await;
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
            text.contains("kiln_worker_batch_size_sum{engine=\"test-pattern\"} 6")
                && text.contains("kiln_worker_batch_size_count{engine=\"test-pattern\"} 2"),
            "{text}"
        );
        assert!(text
            .contains("kiln_worker_jobs_total{engine=\"test-pattern\",outcome=\"cancelled\"} 1"));
        assert!(text
            .contains("kiln_worker_render_seconds_bucket{engine=\"test-pattern\",le=\"0.5\"} 1"));
        assert!(
            text.contains("kiln_worker_render_seconds_bucket{engine=\"test-pattern\",le=\"10\"} 2")
        );
        assert!(text.contains("kiln_worker_render_seconds_count{engine=\"test-pattern\"} 2"));
        assert!(text.contains("kiln_worker_slots 2"));
    }
}
