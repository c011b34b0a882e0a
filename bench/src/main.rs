//! `kiln-bench`: Kiln's benchmarks, each against the tool people would use
//! instead, measured in the same run on the same machine. Prints one JSON
//! document on standard output (progress goes to standard error).
//!
//! Cases (`kiln-bench [OPTIONS] [CASE]...`, default `all`):
//! - `ingest` ([`ingest`]): 100,000 prompts as NDJSON until durable and
//!   broker-confirmed, against Celery `apply_async` with and without
//!   publisher confirms.
//! - `queue` ([`queue`]): 5,000 test-pattern jobs through 1, 2, 4 workers,
//!   against a Celery worker doing the same work, and against the floor.
//! - `floor` ([`floor`]): the same work done by the simplest loop that
//!   makes the same calls to PostgreSQL, RabbitMQ and the bucket, with none
//!   of Kiln's logic: what the services themselves allow.
//! - `clip`, `vqgan`, `dalle` ([`models`]): model throughput against
//!   transformers, taming + transformers and min-dalle.
//! - `batching` ([`batching`]): one-candidate `dalle` and `vqgan-clip` jobs
//!   through a dispatcher and one worker at `--max-batch` 1 and larger,
//!   with the images compared between the runs. Not part of `all` (it takes
//!   minutes per size on the CPU).
//!
//! The services are the local stack's (`deploy/local/stack env`); each
//! run of cases 1 and 2 gets its own database (dropped afterwards) and an
//! emptied RabbitMQ virtual host (`KILN_BENCH_VHOST`, default
//! `kiln-bench`). Sizes default to what fits in minutes on the CPU, and to
//! the full sizes on CUDA.

use anyhow::{bail, Result};
use clap::Parser;
use serde_json::{json, Value};
use std::path::PathBuf;
use tch::{Device, Kind};

mod batching;
mod floor;
mod ingest;
mod kiln;
mod models;
mod queue;
mod stack;

const CASES: [&str; 6] = ["ingest", "queue", "floor", "clip", "vqgan", "dalle"];
/// Cases run only when named.
const NAMED_ONLY: [&str; 1] = ["batching"];

#[derive(Parser, Debug)]
#[command(
    name = "kiln-bench",
    version,
    about = "Kiln's benchmarks against their baselines; prints JSON"
)]
pub struct Options {
    /// Cases to run: ingest, queue, floor, clip, vqgan, dalle, batching, all
    /// (`models` = clip, vqgan, dalle; `all` leaves out batching).
    #[arg(default_value = "all")]
    cases: Vec<String>,
    /// Also write the JSON document to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measure Kiln only.
    #[arg(long)]
    no_baseline: bool,
    /// Folder of the Python baselines.
    #[arg(long, env = "KILN_BENCH_BASELINES", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/baselines"))]
    baselines: PathBuf,
    /// Python with torch, transformers, taming-transformers and min-dalle (cases 3-5).
    #[arg(long, env = "KILN_BENCH_PYTHON", default_value_os_t = home(".cache/kiln/venv/bin/python"))]
    python: PathBuf,
    /// Python with celery, boto3, sqlalchemy and psycopg2 (cases 1-2; see baselines/setup-venv.sh).
    #[arg(long, env = "KILN_BENCH_CELERY_PYTHON", default_value_os_t = home(".cache/kiln/bench-venv/bin/python"))]
    celery_python: PathBuf,
    /// Folder holding kiln-dispatcher and kiln-worker (default: this binary's folder).
    #[arg(long, env = "KILN_BENCH_BIN_DIR", default_value_os_t = exe_dir())]
    bin_dir: PathBuf,

    // Case 1.
    /// Batch sizes; the largest is compared with Celery.
    #[arg(long, value_delimiter = ',', default_value = "20000,100000")]
    ingest_jobs: Vec<usize>,

    // Case 2.
    #[arg(long, default_value_t = 5000)]
    queue_jobs: usize,
    /// Kiln worker processes (one slot each), one measurement per entry.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// Slots (jobs in flight) per Kiln worker process, one series of runs per entry.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    worker_slots: Vec<usize>,
    /// Concurrency of the Celery worker (prefork processes), one measurement per entry.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    celery_workers: Vec<usize>,

    // Case batching.
    /// Jobs per run of the batching case.
    #[arg(long, default_value_t = 8)]
    batching_jobs: usize,
    /// `--max-batch` of each run of the batching case (1 always runs first, as the baseline).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    batching_sizes: Vec<usize>,
    /// Engines of the batching case.
    #[arg(long, value_delimiter = ',', default_value = "dalle,vqgan-clip")]
    batching_engines: Vec<String>,
    /// Cutouts per step of the batching case's vqgan-clip jobs.
    #[arg(long, default_value_t = 4)]
    batching_cutn: usize,
    /// Steps of the batching case's vqgan-clip jobs.
    #[arg(long, default_value_t = 4)]
    batching_steps: usize,

    // Cases 3-5.
    /// cpu, cuda, cuda:K or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// fp32, fp16 or bf16 (default: fp32 on the CPU, fp16 on CUDA). CLIP's
    /// weights and DALL·E's BART use it; the VQGAN runs in fp32.
    #[arg(long)]
    dtype: Option<String>,
    /// Intra-op threads of the Python baselines (0: torch's default, as tch uses).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// CLIP batch sizes (default 1,8,16 on the CPU, 1,64,512 on CUDA).
    #[arg(long, value_delimiter = ',')]
    clip_batches: Vec<usize>,
    /// Timed seconds per CLIP batch size (at least 3 calls).
    #[arg(long, default_value_t = 3.0)]
    clip_seconds: f64,
    /// VQGAN+CLIP image sides.
    #[arg(long, value_delimiter = ',', default_value = "256,512")]
    vqgan_sizes: Vec<usize>,
    /// Cutouts per step (default 8 on the CPU, 32 on CUDA).
    #[arg(long)]
    cutn: Option<usize>,
    /// Timed VQGAN+CLIP steps for Kiln, after one warm-up step (default 3 on the CPU, 20 on CUDA).
    #[arg(long)]
    vqgan_steps: Option<usize>,
    /// VQGAN+CLIP jobs optimised at once by the engine, at the first size
    /// (default 1,2 on the CPU, 1,8 on CUDA): jobs per second for each.
    #[arg(long, value_delimiter = ',')]
    vqgan_jobs: Vec<usize>,
    /// DALL·E models (default mini on the CPU, mini,mega on CUDA).
    #[arg(long, value_delimiter = ',')]
    dalle_models: Vec<String>,
    /// DALL·E batch sizes (default 1,2 on the CPU, 1,8,16 on CUDA).
    #[arg(long, value_delimiter = ',')]
    dalle_batches: Vec<usize>,
    /// Timed DALL·E calls per batch size.
    #[arg(long, default_value_t = 1)]
    dalle_runs: usize,
    /// One untimed DALL·E call at batch 1 first, on both sides (default: on
    /// CUDA only, where the first call pays for kernel selection).
    #[arg(long)]
    dalle_warmup: Option<bool>,
}

fn home(rel: &str) -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(rel)
}

fn exe_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(PathBuf::from))
        .unwrap_or_default()
}

impl Options {
    fn on_cuda(&self) -> bool {
        self.device().map(|d| d.is_cuda()).unwrap_or(false)
    }

    pub fn device(&self) -> Result<Device> {
        kiln_worker::parse_device(&self.device)
    }

    pub fn kind(&self) -> Result<Kind> {
        Ok(match self.dtype.as_deref() {
            None if self.on_cuda() => Kind::Half,
            None | Some("fp32") => Kind::Float,
            Some("fp16") => Kind::Half,
            Some("bf16") => Kind::BFloat16,
            Some(other) => bail!("unknown dtype {other:?}; expected fp32, fp16 or bf16"),
        })
    }

    pub fn clip_batches(&self) -> Vec<usize> {
        match (self.clip_batches.is_empty(), self.on_cuda()) {
            (false, _) => self.clip_batches.clone(),
            (true, true) => vec![1, 64, 512],
            (true, false) => vec![1, 8, 16],
        }
    }

    pub fn vqgan_sizes(&self) -> Vec<usize> {
        self.vqgan_sizes.clone()
    }

    pub fn cutn(&self) -> usize {
        self.cutn.unwrap_or(if self.on_cuda() { 32 } else { 8 })
    }

    pub fn vqgan_jobs(&self) -> Vec<usize> {
        match (self.vqgan_jobs.is_empty(), self.on_cuda()) {
            (false, _) => self.vqgan_jobs.clone(),
            (true, true) => vec![1, 8],
            (true, false) => vec![1, 2],
        }
    }

    pub fn vqgan_steps(&self) -> usize {
        self.vqgan_steps
            .unwrap_or(if self.on_cuda() { 20 } else { 3 })
    }

    /// The Python side's timed seconds per size, matched to Kiln's steps.
    pub fn vqgan_seconds(&self) -> f64 {
        if self.on_cuda() {
            3.0
        } else {
            0.0
        }
    }

    pub fn dalle_models(&self) -> Vec<String> {
        match (self.dalle_models.is_empty(), self.on_cuda()) {
            (false, _) => self.dalle_models.clone(),
            (true, true) => vec!["mini".into(), "mega".into()],
            (true, false) => vec!["mini".into()],
        }
    }

    pub fn dalle_warmup(&self) -> bool {
        self.dalle_warmup.unwrap_or(self.on_cuda())
    }

    pub fn dalle_batches(&self) -> Vec<usize> {
        match (self.dalle_batches.is_empty(), self.on_cuda()) {
            (false, _) => self.dalle_batches.clone(),
            (true, true) => vec![1, 8, 16],
            (true, false) => vec![1, 2],
        }
    }
}

fn selected(o: &Options) -> Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for c in &o.cases {
        let names: &[&'static str] = match c.as_str() {
            "all" => &CASES,
            "models" => &CASES[3..],
            other => match CASES.iter().chain(&NAMED_ONLY).find(|n| **n == other) {
                Some(n) => std::slice::from_ref(n),
                None => bail!(
                    "unknown case {other:?}; expected one of {CASES:?}, {NAMED_ONLY:?}, all or models"
                ),
            },
        };
        for n in names {
            if !out.contains(n) {
                out.push(*n);
            }
        }
    }
    // The queue case measures the floor beside Kiln unless told not to:
    // once is enough.
    if out.contains(&"queue") && !o.no_baseline {
        out.retain(|c| *c != "floor");
    }
    Ok(out)
}

fn loadavg() -> Value {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| {
            let v: Vec<f64> = s
                .split_whitespace()
                .take(3)
                .filter_map(|x| x.parse().ok())
                .collect();
            json!(v)
        })
        .unwrap_or(Value::Null)
}

fn machine(o: &Options) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let gpu = match o.device() {
        Ok(Device::Cuda(_)) => std::process::Command::new("nvidia-smi")
            .args(["--query-gpu=name", "--format=csv,noheader"])
            .output()
            .ok()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string()),
        _ => None,
    };
    json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "gpu": gpu,
        "cuda_available": tch::Cuda::is_available(),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = Options::parse();
    let cases = selected(&o)?;
    let started = chrono::Utc::now();
    let mut results = serde_json::Map::new();
    let mut loads = serde_json::Map::new();
    let document = |results: &serde_json::Map<String, Value>,
                    loads: &serde_json::Map<String, Value>| {
        json!({
            "bench": "kiln-bench",
            "version": env!("CARGO_PKG_VERSION"),
            "started": started.to_rfc3339(),
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "machine": machine(&o),
            "load_average_1_5_15": loads,
            "cases": results,
        })
    };
    for case in &cases {
        let load_before = loadavg();
        let t = std::time::Instant::now();
        let r = match *case {
            "ingest" => ingest::run(&o).await,
            "queue" => queue::run(&o).await,
            "floor" => queue::floor(&o).await,
            "clip" => models::clip(&o).await,
            "vqgan" => models::vqgan(&o).await,
            "dalle" => models::dalle(&o).await,
            "batching" => batching::run(&o).await,
            _ => unreachable!("selected() only returns known cases"),
        };
        let mut v = ingest::flatten(r);
        v["wall_seconds"] = json!(t.elapsed().as_secs_f64());
        eprintln!("[{case}] done in {:.1} s", t.elapsed().as_secs_f64());
        loads.insert(
            case.to_string(),
            json!({"before": load_before, "after": loadavg()}),
        );
        results.insert(case.to_string(), v);
        // Written after every case, so that a long run keeps what it measured.
        if let Some(path) = &o.out {
            let text = serde_json::to_string_pretty(&document(&results, &loads))?;
            std::fs::write(path, format!("{text}\n"))?;
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&document(&results, &loads))?
    );
    Ok(())
}
