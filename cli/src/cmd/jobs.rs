//! `kiln jobs BATCH [--state STATE]`: the jobs of a batch, with each error.

use crate::client::Client;
use crate::error::{Exit, Result};
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    pub batch: Uuid,
    /// Only jobs in this state.
    #[arg(long, value_parser = ["queued", "running", "succeeded", "failed", "cancelled"])]
    pub state: Option<String>,
    /// Print one JSON object per job.
    #[arg(long)]
    pub json: bool,
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n.saturating_sub(3)).collect::<String>() + "..."
    }
}

pub async fn run(args: JobsArgs, client: Client) -> Result<Exit> {
    let jobs = client.all_jobs(args.batch, args.state.as_deref()).await?;
    for job in &jobs {
        if args.json {
            println!(
                "{}",
                serde_json::to_string(job).map_err(anyhow::Error::from)?
            );
            continue;
        }
        let progress = job
            .progress
            .map(|p| format!(" {}/{}", p.step, p.total))
            .unwrap_or_default();
        println!(
            "{}  {:<9}{progress}  attempt {}/{}  {}",
            job.id,
            job.state,
            job.attempt,
            job.max_attempts,
            clip(&job.prompt, 60)
        );
        if let Some(e) = job.error.as_deref().filter(|e| !e.is_empty()) {
            println!("    error: {e}");
        }
    }
    eprintln!(
        "{} job{}{}",
        jobs.len(),
        if jobs.len() == 1 { "" } else { "s" },
        args.state
            .as_deref()
            .map(|s| format!(" {s}"))
            .unwrap_or_default()
    );
    Ok(Exit::Success)
}
