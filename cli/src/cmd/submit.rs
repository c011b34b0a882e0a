//! `kiln submit FILE|-`: read a prompt file, check every line, send it as one
//! batch (JSON, or a streamed NDJSON body for large files), and optionally
//! wait for it.

use crate::client::{Client, RETRY};
use crate::cmd::status;
use crate::error::{CliError, Exit, Result};
use crate::input::{self, Format, InputJob};
use crate::ui::Ui;
use kiln_protocol::api::{Batch, BatchRequest, JobRequest};
use kiln_protocol::{Engine, JobSpec, Limits, ParamsDto, Priority};
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Prompt file (text, CSV or JSON Lines), or `-` for standard input.
    pub file: String,
    /// Generator to render with.
    #[arg(long, short, default_value = "vqgan-clip", value_parser = parse_engine)]
    pub engine: Engine,
    /// File format; guessed from the extension (.txt, .csv, .jsonl) or the content.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Image size as WIDTHxHEIGHT (multiples of 16).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<(u32, u32)>,
    /// Optimisation steps (vqgan-clip) or pattern steps (test-pattern).
    #[arg(long)]
    pub steps: Option<u32>,
    /// Seed for every job (default: the server draws one per job).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Images rendered per job before reranking.
    #[arg(long)]
    pub candidates: Option<u32>,
    /// Best images kept per job.
    #[arg(long)]
    pub keep: Option<u32>,
    /// Further parameters as a JSON object, e.g. '{"lr": 0.2}'.
    #[arg(long, value_name = "JSON")]
    pub params: Option<String>,
    #[arg(long, value_enum)]
    pub priority: Option<PriorityArg>,
    /// A name for the batch.
    #[arg(long)]
    pub name: Option<String>,
    /// Metadata as KEY=VALUE (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    pub meta: Vec<(String, String)>,
    /// Wait for the batch to finish, showing progress.
    #[arg(long)]
    pub wait: bool,
    /// Seconds between progress polls with --wait.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Files with more jobs than this are streamed as NDJSON.
    #[arg(long, default_value_t = 1000, hide = true)]
    pub stream_above: usize,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PriorityArg {
    Low,
    Normal,
    High,
}

impl From<PriorityArg> for Priority {
    fn from(p: PriorityArg) -> Priority {
        match p {
            PriorityArg::Low => Priority::Low,
            PriorityArg::Normal => Priority::Normal,
            PriorityArg::High => Priority::High,
        }
    }
}

pub fn parse_engine(s: &str) -> Result<Engine, String> {
    s.parse()
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?} is not WIDTHxHEIGHT, e.g. 256x256"))?;
    let n = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("{v:?} in {s:?} is not a whole number"))
    };
    Ok((n(w)?, n(h)?))
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

impl SubmitArgs {
    /// The batch-level parameters the options name, checked on their own.
    fn defaults(&self) -> Result<ParamsDto> {
        let mut dto = match &self.params {
            Some(json) => serde_json::from_str::<ParamsDto>(json)
                .map_err(|e| CliError::Usage(format!("--params: {e}")))?,
            None => ParamsDto::default(),
        };
        let opts = ParamsDto {
            width: self.size.map(|s| s.0),
            height: self.size.map(|s| s.1),
            steps: self.steps,
            seed: self.seed,
            candidates: self.candidates,
            keep: self.keep,
            ..Default::default()
        };
        dto = dto.overlay(&opts);
        if let Err(e) = JobSpec::parse(self.engine, "x", &dto, 0, &Limits::default()) {
            let lines: Vec<String> = e
                .errors
                .iter()
                .map(|f| format!("  {}: {}", option_name(&f.field), f.message))
                .collect();
            return Err(CliError::Usage(format!(
                "the options are invalid for engine {}:\n{}",
                self.engine,
                lines.join("\n")
            )));
        }
        Ok(dto)
    }
}

/// The option that sets a parameter, for error messages.
fn option_name(field: &str) -> String {
    match field.trim_start_matches("params/") {
        "width" | "height" => "--size".into(),
        f @ ("steps" | "seed" | "candidates" | "keep") => format!("--{f}"),
        f => format!("--params {f}"),
    }
}

/// Reads the prompt file, refusing it with every bad line.
pub fn read_jobs(args: &SubmitArgs, defaults: &ParamsDto) -> Result<Vec<InputJob>> {
    let (source, bytes) = if args.file == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut buf)
            .map_err(|e| CliError::Usage(format!("reading standard input: {e}")))?;
        ("<stdin>".to_string(), buf)
    } else {
        let bytes = std::fs::read(&args.file)
            .map_err(|e| CliError::Usage(format!("{}: {e}", args.file)))?;
        (args.file.clone(), bytes)
    };
    let format = args
        .format
        .or_else(|| Format::from_extension(Path::new(&args.file)))
        .unwrap_or_else(|| Format::sniff(&String::from_utf8_lossy(&bytes)));
    Ok(input::parse(
        &source,
        &bytes,
        format,
        args.engine,
        defaults,
        &Limits::default(),
    )?)
}

/// Sends a batch: one JSON body up to `stream_above` jobs, a streamed NDJSON
/// body above. Transient failures (no connection, a 5xx answer) are retried
/// with the same idempotency key, so a batch is never created twice.
pub async fn send_batch(
    client: &Client,
    header: &BatchRequest,
    jobs: Vec<InputJob>,
    stream_above: usize,
) -> Result<Batch> {
    let key = Uuid::new_v4();
    let jobs = Arc::new(jobs);
    let send = || async {
        if jobs.len() > stream_above {
            client
                .create_batch_ndjson(ndjson_body(header, jobs.clone()), key)
                .await
        } else {
            client
                .create_batch(&batch_request(header, &jobs), key)
                .await
        }
    };
    let mut answer = RETRY.retry(send, |e: &CliError, _| e.is_transient()).await;
    if let Err(CliError::Api { problem, .. }) = &mut answer {
        // Point the server's complaints at lines of the file.
        for e in &mut problem.errors {
            if let Some(line) = job_index(&e.pointer).and_then(|i| jobs.get(i)) {
                e.message = format!("(file line {}) {}", line.line, e.message);
            }
        }
    }
    answer
}

/// The job index in a pointer such as `/prompts/3` or `/jobs/3/params/seed`.
fn job_index(pointer: &str) -> Option<usize> {
    let rest = pointer
        .strip_prefix("/prompts/")
        .or_else(|| pointer.strip_prefix("/jobs/"))?;
    rest.split('/').next()?.parse().ok()
}

/// The parameters to send: none when nothing is set.
fn params_if_set(params: &ParamsDto) -> Option<ParamsDto> {
    (*params != ParamsDto::default()).then(|| params.clone())
}

fn job_request(job: &InputJob) -> JobRequest {
    JobRequest {
        prompt: job.prompt.clone(),
        params: params_if_set(&job.params),
    }
}

/// The batch without its jobs (and without `params` when none is set): the
/// first line of an NDJSON body.
fn header_only(header: &BatchRequest) -> BatchRequest {
    BatchRequest {
        params: header.params.as_ref().and_then(params_if_set),
        prompts: None,
        jobs: None,
        ..header.clone()
    }
}

/// The header of a batch (its `prompts` and `jobs` are ignored) with the
/// jobs: as `prompts` when no job has parameters of its own, else as `jobs`.
pub fn batch_request(header: &BatchRequest, jobs: &[InputJob]) -> BatchRequest {
    let mut request = header_only(header);
    if jobs.iter().all(|j| j.params == ParamsDto::default()) {
        request.prompts = Some(jobs.iter().map(|j| j.prompt.clone()).collect());
    } else {
        request.jobs = Some(jobs.iter().map(job_request).collect());
    }
    request
}

/// The NDJSON body as a stream of chunks, encoded as it is sent.
fn ndjson_body(header: &BatchRequest, jobs: Arc<Vec<InputJob>>) -> reqwest::Body {
    const CHUNK: usize = 1000;
    let mut first = serde_json::to_vec(&header_only(header)).expect("header encodes");
    first.push(b'\n');
    let n = jobs.len().div_ceil(CHUNK);
    let chunks = (0..n).map(move |i| {
        let mut buf = Vec::with_capacity(CHUNK * 64);
        for job in &jobs[i * CHUNK..((i + 1) * CHUNK).min(jobs.len())] {
            serde_json::to_writer(&mut buf, &job_request(job)).expect("job encodes");
            buf.push(b'\n');
        }
        Ok::<_, std::io::Error>(bytes::Bytes::from(buf))
    });
    let stream =
        futures::stream::iter(std::iter::once(Ok(bytes::Bytes::from(first))).chain(chunks));
    reqwest::Body::wrap_stream(stream)
}

pub async fn run(
    args: SubmitArgs,
    ui: &Ui,
    client: impl FnOnce() -> Result<Client>,
) -> Result<Exit> {
    let interval = status::interval(args.interval)?;
    let defaults = args.defaults()?;
    let jobs = read_jobs(&args, &defaults)?;
    let client = client()?;
    let header = BatchRequest {
        engine: args.engine.as_str().to_string(),
        params: Some(defaults),
        name: args.name.clone(),
        priority: args.priority.map(Into::into),
        metadata: (!args.meta.is_empty()).then(|| args.meta.iter().cloned().collect()),
        ..Default::default()
    };
    let n = jobs.len();
    let batch = send_batch(&client, &header, jobs, args.stream_above).await?;
    ui.note(format_args!(
        "submitted batch {} with {n} job{} on {}",
        batch.id,
        if n == 1 { "" } else { "s" },
        batch.engine
    ));
    status::created(&client, ui, &batch, args.wait.then_some(interval)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_metadata_parse() {
        assert_eq!(parse_size("64x32").unwrap(), (64, 32));
        assert!(parse_size("64").is_err());
        assert!(parse_size("ax2").is_err());
        assert_eq!(parse_meta("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_meta("=x").is_err());
    }

    #[test]
    fn pointers_name_jobs() {
        assert_eq!(job_index("/prompts/3"), Some(3));
        assert_eq!(job_index("/jobs/12/params/seed"), Some(12));
        assert_eq!(job_index("/engine"), None);
    }

    #[test]
    fn bodies_use_prompts_unless_a_job_has_parameters() {
        let header = BatchRequest {
            engine: Engine::TestPattern.as_str().into(),
            params: Some(ParamsDto {
                steps: Some(2),
                ..Default::default()
            }),
            name: Some("n".into()),
            priority: Some(Priority::High),
            metadata: Some([("k".to_string(), "v".to_string())].into()),
            ..Default::default()
        };
        let job = |p: &str, seed| InputJob {
            line: 1,
            prompt: p.into(),
            params: ParamsDto {
                seed,
                ..Default::default()
            },
        };
        let body = |jobs: &[InputJob]| serde_json::to_value(batch_request(&header, jobs)).unwrap();
        let b = body(&[job("a", None), job("b", None)]);
        assert_eq!(b["prompts"], serde_json::json!(["a", "b"]));
        assert_eq!(b["params"], serde_json::json!({"steps": 2}));
        assert_eq!(b["priority"], "high");
        assert_eq!(b["metadata"], serde_json::json!({"k": "v"}));
        let b = body(&[job("a", Some(4)), job("b", None)]);
        assert_eq!(
            b["jobs"],
            serde_json::json!([{"prompt": "a", "params": {"seed": 4}}, {"prompt": "b"}])
        );
        let head = serde_json::json!({
            "engine": "test-pattern", "params": {"steps": 2}, "name": "n",
            "priority": "high", "metadata": {"k": "v"},
        });
        assert_eq!(serde_json::to_value(header_only(&header)).unwrap(), head);
        let mut whole = head.clone();
        whole["prompts"] = serde_json::json!(["a"]);
        assert_eq!(body(&[job("a", None)]), whole);
        let bare = BatchRequest {
            params: Some(ParamsDto::default()),
            ..BatchRequest::default()
        };
        assert!(serde_json::to_value(header_only(&bare))
            .unwrap()
            .get("params")
            .is_none());
    }
}
