//! Configuration of `kiln-worker run`: command-line flags, each with an
//! environment variable where operators usually set it. Defaults point at
//! the local stack (`deploy/local/stack up`).

use crate::engine::Dtype;
use crate::runtime::scheduler::Batching;
use kiln_protocol::Engine as EngineKind;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `kiln-worker run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Engines to serve, comma-separated (vqgan-clip, dalle, test-pattern).
    #[arg(long, env = "KILN_ENGINES", value_delimiter = ',', required = true)]
    pub engines: Vec<EngineKind>,
    /// Model root holding clip/, vqgan/ and dalle/ (see `kiln-worker models`).
    #[arg(long, env = "KILN_MODELS", default_value = "models")]
    pub models: PathBuf,
    /// Render threads per device. The threads of a device share one copy
    /// of the models; each renders one batch at a time.
    #[arg(long, env = "KILN_SLOTS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub slots: u32,
    /// auto, cpu, cuda, cuda:K, a list (cuda:0,cuda:1) or all (every GPU):
    /// one set of models and one group of slots per device, in one process.
    #[arg(long, env = "KILN_DEVICE", default_value = "auto")]
    pub device: String,
    /// Jobs rendered together at most, as ENGINE=N (repeatable) or N for
    /// every engine. Defaults: dalle=8, test-pattern=1, and vqgan-clip=4 on
    /// CUDA, 1 on the CPU (where its convolutions gain nothing from a batch).
    #[arg(long = "max-batch", env = "KILN_MAX_BATCH", value_delimiter = ',', value_parser = parse_max_batch)]
    pub max_batch: Vec<(Option<EngineKind>, usize)>,
    /// How long a batch that is not full waits for more jobs, from the
    /// arrival of its oldest job (e.g. 50ms; 0 starts at once).
    #[arg(long, env = "KILN_BATCH_WINDOW", default_value = "50ms", value_parser = parse_duration)]
    pub batch_window: Duration,
    /// Precision of the transformers (DALL·E's BART, CLIP): auto (fp16 on
    /// CUDA, fp32 on the CPU), fp32, fp16 or bf16. VQGANs run in fp32.
    #[arg(long, env = "KILN_DTYPE", value_enum, default_value_t = Dtype::Auto)]
    pub dtype: Dtype,
    /// On SIGTERM/SIGINT, how long running jobs may take to finish before
    /// the worker exits and leaves them to be redelivered (e.g. 90s, 5m).
    #[arg(long, env = "KILN_DRAIN_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Address of the /livez, /readyz and /metrics server (port 0 picks a free port;
    /// the bound address is printed at start).
    #[arg(long, env = "KILN_METRICS_BIND", default_value = "0.0.0.0:9464")]
    pub metrics_bind: SocketAddr,
    /// Render time limit of one job per engine, as ENGINE=DURATION
    /// (repeatable, e.g. --time-limit vqgan-clip=30m).
    #[arg(long = "time-limit", value_parser = parse_time_limit)]
    pub time_limits: Vec<(EngineKind, Duration)>,
    /// Render time limit of engines without a --time-limit.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub default_time_limit: Duration,
    /// Interval of heartbeat events while a job runs.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// Interval of the worker's reports about itself to the dispatcher's
    /// worker registry (`kiln workers`); a worker not heard for three of
    /// them is shown as lost.
    #[arg(long, env = "KILN_WORKER_REPORT_INTERVAL", default_value = "15s", value_parser = parse_positive_duration)]
    pub report_interval: Duration,
    /// Shortest interval between two progress events of one job.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub progress_interval: Duration,
    /// Attempts of one bucket request (through a job's presigned URLs)
    /// before the job fails as retryable. The worker holds no bucket
    /// settings or credentials: each job carries the URLs it may use.
    #[arg(long, env = "KILN_S3_ATTEMPTS", default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub s3_attempts: u32,
    /// How long one wait on the broker may take (connecting, publishing an
    /// event and its confirm) before it counts as failed; a lost broker is
    /// reconnected to in place, with backoff.
    #[arg(long, env = "KILN_BROKER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub broker_timeout: Duration,
    /// Name of this worker in events (default: host name and process id).
    #[arg(long, env = "KILN_WORKER_ID")]
    pub worker_id: Option<String>,
    /// RabbitMQ, as the workers' user: it needs to consume the job queues,
    /// declare its own control queue and publish events, no more (see
    /// `kiln_protocol::topology::worker_permissions`). The default is the
    /// local stack's worker user.
    #[arg(
        long,
        env = "KILN_AMQP_URL",
        default_value = "amqp://kiln-worker:kiln-worker-dev-password@127.0.0.1:5672/%2f",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub amqp_url: String,
}

impl RunArgs {
    pub fn time_limit(&self, engine: EngineKind) -> Duration {
        let limits: BTreeMap<_, _> = self.time_limits.iter().copied().collect();
        limits
            .get(&engine)
            .copied()
            .unwrap_or(self.default_time_limit)
    }

    /// The engines to serve, sorted, each once.
    pub fn engine_set(&self) -> Vec<EngineKind> {
        let mut engines = self.engines.clone();
        engines.sort();
        engines.dedup();
        engines
    }

    /// The batch sizes and window of `--max-batch` and `--batch-window`,
    /// for a worker that renders on CUDA or not.
    pub fn batching(&self, on_cuda: bool) -> Batching {
        let mut max_batch: HashMap<EngineKind, usize> = DEFAULT_MAX_BATCH.iter().copied().collect();
        if on_cuda {
            max_batch.insert(EngineKind::VqganClip, 4);
        }
        // A bare N sets every engine; ENGINE=N wins over it, in any order.
        for (_, n) in self.max_batch.iter().filter(|(e, _)| e.is_none()) {
            for e in EngineKind::ALL {
                max_batch.insert(e, *n);
            }
        }
        for (e, n) in &self.max_batch {
            if let Some(e) = e {
                max_batch.insert(*e, *n);
            }
        }
        Batching {
            max_batch,
            window: self.batch_window,
        }
    }

    pub fn worker_name(&self) -> String {
        self.worker_id.clone().unwrap_or_else(default_worker_id)
    }
}

fn default_worker_id() -> String {
    let host = host_name().unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

/// This machine's (or container's) host name, if it has one.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}

/// `250ms`, `30s`, `5m`, `2h`, a plain number of seconds, ...: see
/// [`kiln_protocol::duration`].
pub use kiln_protocol::duration::parse as parse_duration;

/// A [`parse_duration`] of at least 100ms.
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!("{s:?} is too short; at least 100ms"));
    }
    Ok(d)
}

/// Jobs per batch when `--max-batch` does not say, on the CPU (CUDA:
/// vqgan-clip=4).
pub const DEFAULT_MAX_BATCH: [(EngineKind, usize); 3] = [
    (EngineKind::Dalle, 8),
    (EngineKind::TestPattern, 1),
    (EngineKind::VqganClip, 1),
];

/// `ENGINE=N` or `N` (every engine), N in 1..=256.
fn parse_max_batch(s: &str) -> Result<(Option<EngineKind>, usize), String> {
    let (engine, n) = match s.split_once('=') {
        Some((e, n)) => (Some(e.trim().parse::<EngineKind>()?), n),
        None => (None, s),
    };
    let n: usize = n
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not ENGINE=N or N"))?;
    if !(1..=256).contains(&n) {
        return Err(format!("a batch holds 1 to 256 jobs, not {n}"));
    }
    Ok((engine, n))
}

/// `ENGINE=DURATION`.
fn parse_time_limit(s: &str) -> Result<(EngineKind, Duration), String> {
    let (engine, d) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ENGINE=DURATION"))?;
    Ok((engine.trim().parse()?, parse_duration(d)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn time_limits_are_per_engine_with_a_default() {
        let cli = Cli::try_parse_from([
            "w",
            "--engines",
            "test-pattern,dalle",
            "--time-limit",
            "dalle=90s",
            "--default-time-limit",
            "10m",
        ])
        .unwrap();
        assert_eq!(
            cli.run.engines,
            [EngineKind::TestPattern, EngineKind::Dalle]
        );
        assert_eq!(
            cli.run.time_limit(EngineKind::Dalle),
            Duration::from_secs(90)
        );
        assert_eq!(
            cli.run.time_limit(EngineKind::TestPattern),
            Duration::from_secs(600)
        );
        assert!(Cli::try_parse_from(["w", "--engines", "sd"]).is_err());
        assert!(Cli::try_parse_from(["w", "--engines", "dalle", "--time-limit", "dalle"]).is_err());
        assert!(Cli::try_parse_from(["w", "--engines", "dalle", "--slots", "0"]).is_err());
    }

    #[test]
    fn max_batch_is_per_engine_with_defaults() {
        let cli = Cli::try_parse_from(["w", "--engines", "dalle"]).unwrap();
        let b = cli.run.batching(false);
        assert_eq!(b.max_batch(EngineKind::Dalle), 8);
        assert_eq!(b.max_batch(EngineKind::VqganClip), 1);
        assert_eq!(b.max_batch(EngineKind::TestPattern), 1);
        assert_eq!(cli.run.batching(true).max_batch(EngineKind::VqganClip), 4);
        assert_eq!(b.window, Duration::from_millis(50));
        let cli = Cli::try_parse_from([
            "w",
            "--engines",
            "dalle",
            "--max-batch",
            "dalle=16",
            "--max-batch",
            "4",
            "--batch-window",
            "0",
        ])
        .unwrap();
        let b = cli.run.batching(true);
        assert_eq!(b.max_batch(EngineKind::Dalle), 16, "ENGINE=N wins over N");
        assert_eq!(b.max_batch(EngineKind::TestPattern), 4);
        assert_eq!(b.window, Duration::ZERO);
        for bad in ["0", "dalle=0", "sd=4", "dalle=many", "300"] {
            assert!(
                Cli::try_parse_from(["w", "--engines", "dalle", "--max-batch", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
