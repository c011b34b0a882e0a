//! `kiln retry BATCH --failed`: submits the failed (and with `--cancelled`,
//! the cancelled) jobs of a batch again, as a new batch linked to the old
//! one by `retry_of`. Each job keeps its prompt and resolved parameters,
//! seed included.

use crate::client::Client;
use crate::cmd::{status, submit};
use crate::error::{Exit, Result};
use crate::input::InputJob;
use crate::ui::Ui;
use kiln_protocol::api::{BatchRequest, Job};
use kiln_protocol::{Engine, JobState, ParamsDto};
use uuid::Uuid;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(true)))]
pub struct RetryArgs {
    pub batch: Uuid,
    /// Retry the jobs that failed.
    #[arg(long, group = "which")]
    pub failed: bool,
    /// Retry the jobs that were cancelled.
    #[arg(long, group = "which")]
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
    job.params.for_engine(engine)
}

pub async fn run(args: RetryArgs, ui: &Ui, client: Client) -> Result<Exit> {
    let interval = status::interval(args.interval)?;
    let batch = client.batch(args.batch).await?;
    let engine = batch.engine;
    let mut jobs = Vec::new();
    if args.failed {
        jobs.extend(client.all_jobs(batch.id, Some(JobState::Failed)).await?);
    }
    if args.cancelled {
        jobs.extend(client.all_jobs(batch.id, Some(JobState::Cancelled)).await?);
    }
    if jobs.is_empty() {
        ui.note(format_args!("batch {} has no jobs to retry", batch.id));
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
    let header = BatchRequest {
        engine: engine.as_str().to_string(),
        name: Some(match &batch.name {
            Some(n) => format!("retry of {n}"),
            None => format!("retry of {}", batch.id),
        }),
        priority: Some(batch.priority),
        retry_of: Some(batch.id),
        ..Default::default()
    };
    let n = inputs.len();
    let new = submit::send_batch(&client, &header, inputs, 1000).await?;
    ui.note(format_args!(
        "submitted batch {} retrying {n} job{} of batch {}",
        new.id,
        if n == 1 { "" } else { "s" },
        batch.id
    ));
    status::created(&client, ui, &new, args.wait.then_some(interval)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::{JobSpec, Limits};

    /// A failed DALL·E job as the server sends it: resolved parameters,
    /// including the 16 rows it reports as `steps`.
    fn dalle_job() -> Job {
        serde_json::from_value(serde_json::json!({
            "id": Uuid::now_v7(), "batch_id": Uuid::now_v7(), "engine": "dalle",
            "prompt": "a fox",
            "params": {"width": 256, "height": 256, "steps": 16, "seed": 7, "candidates": 4,
                       "keep": 1, "temperature": 1.0, "top_k": 256, "supercondition_factor": 16.0},
            "state": "failed", "attempt": 3, "max_attempts": 3, "progress": null,
            "error": "out of memory", "worker": null, "created_at": "2024-05-01T12:00:00Z",
            "started_at": null, "finished_at": "2024-05-01T12:00:09Z", "results": [],
        }))
        .unwrap()
    }

    #[test]
    fn resubmitted_params_keep_the_seed_and_drop_what_the_engine_refuses() {
        let job = dalle_job();
        let p = resubmit_params(Engine::Dalle, &job);
        assert_eq!(p.steps, None);
        assert_eq!(
            p,
            ParamsDto {
                steps: None,
                ..job.params.clone()
            }
        );
        assert!(JobSpec::parse(Engine::Dalle, "x", &p, 0, &Limits::default()).is_ok());
    }
}
