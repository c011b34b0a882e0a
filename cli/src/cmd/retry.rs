//! `kiln retry BATCH --failed`: submits the failed (and with `--cancelled`,
//! the cancelled) jobs of a batch again, as a new batch linked to the old
//! one by `retry_of`. Each job keeps its prompt and resolved parameters,
//! seed included.

use crate::client::{Client, Job};
use crate::cmd::submit::{self, BatchHeader};
use crate::error::{CliError, Exit, Result};
use crate::input::InputJob;
use crate::watch;
use kiln_protocol::{Engine, JobSpec, Limits, ParamsDto, Priority};
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(true).args(["failed", "cancelled"])))]
pub struct RetryArgs {
    pub batch: Uuid,
    /// Retry the jobs that failed.
    #[arg(long)]
    pub failed: bool,
    /// Retry the jobs that were cancelled.
    #[arg(long)]
    pub cancelled: bool,
    /// Wait for the new batch to finish, showing progress.
    #[arg(long)]
    pub wait: bool,
    /// Seconds between progress polls with --wait.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
}

/// The parameters to send again for `job`: those the server resolved,
/// without any it would refuse for the engine (DALL·E's fixed step count).
pub fn resubmit_params(engine: Engine, job: &Job) -> ParamsDto {
    let mut map = match &job.params {
        serde_json::Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    map.retain(|_, v| !v.is_null());
    let known = serde_json::to_value(ParamsDto::default()).expect("params encode");
    map.retain(|k, _| known.get(k).is_some());
    let mut dto: ParamsDto = serde_json::from_value(map.into()).unwrap_or_default();
    if let Err(e) = JobSpec::parse(
        engine,
        "x",
        &dto,
        0,
        &Limits {
            max_prompt_chars: usize::MAX,
            max_side: u32::MAX,
            max_steps: u32::MAX,
            max_candidates: u32::MAX,
        },
    ) {
        for f in e
            .errors
            .iter()
            .filter(|f| f.message.starts_with("not a parameter"))
        {
            let mut v = serde_json::to_value(&dto).expect("params encode");
            if let Some(m) = v.as_object_mut() {
                m.remove(f.field.trim_start_matches("params/"));
            }
            dto = serde_json::from_value(v).unwrap_or_default();
        }
    }
    dto
}

pub async fn run(args: RetryArgs, client: Client) -> Result<Exit> {
    if !(args.interval > 0.0 && args.interval.is_finite()) {
        return Err(CliError::Usage(
            "--interval must be a positive number of seconds".into(),
        ));
    }
    let batch = client.batch(args.batch).await?;
    let engine: Engine = batch
        .engine
        .parse()
        .map_err(|e: String| CliError::Other(anyhow::anyhow!("batch {}: {e}", batch.id)))?;
    let mut jobs = Vec::new();
    if args.failed {
        jobs.extend(client.all_jobs(batch.id, Some("failed")).await?);
    }
    if args.cancelled {
        jobs.extend(client.all_jobs(batch.id, Some("cancelled")).await?);
    }
    if jobs.is_empty() {
        eprintln!("batch {} has no jobs to retry", batch.id);
        return Ok(Exit::Success);
    }
    let inputs: Vec<InputJob> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| InputJob {
            line: i + 1,
            prompt: j.prompt.clone(),
            params: resubmit_params(engine, j),
        })
        .collect();
    let header = BatchHeader {
        engine,
        params: ParamsDto::default(),
        name: Some(match &batch.name {
            Some(n) => format!("retry of {n}"),
            None => format!("retry of {}", batch.id),
        }),
        priority: batch
            .priority
            .as_deref()
            .and_then(|p| serde_json::from_value::<Priority>(serde_json::Value::from(p)).ok()),
        metadata: Vec::new(),
        retry_of: Some(batch.id),
    };
    let n = inputs.len();
    let new = submit::send_batch(&client, &header, inputs, 1000).await?;
    eprintln!(
        "submitted batch {} retrying {n} job{} of batch {}",
        new.id,
        if n == 1 { "" } else { "s" },
        batch.id
    );
    println!("{}", new.id);
    if !args.wait {
        return Ok(Exit::Success);
    }
    let done = watch::watch(&client, new.id, Duration::from_secs_f64(args.interval)).await?;
    eprintln!("{}", watch::summary(&done));
    Ok(watch::outcome(&done))
}
