//! `kiln jobs BATCH [--state STATE]`: the jobs of a batch, with each error.

use crate::client::Client;
use crate::error::{Exit, Result};
use kiln_protocol::JobState;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    pub batch: Uuid,
    /// Only jobs in this state.
    #[arg(long, value_parser = state_parser())]
    pub state: Option<JobState>,
    /// Print one JSON object per job.
    #[arg(long)]
    pub json: bool,
}

/// Accepts exactly the words of [`JobState`] (and lists them in `--help`).
fn state_parser() -> impl clap::builder::TypedValueParser<Value = JobState> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(JobState::ALL.map(JobState::as_str))
        .map(|s| s.parse::<JobState>().expect("one of the listed states"))
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n.saturating_sub(3)).collect::<String>() + "..."
    }
}

pub async fn run(args: JobsArgs, client: Client) -> Result<Exit> {
    let jobs = client.all_jobs(args.batch, args.state).await?;
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
            job.state.as_str(),
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
        args.state.map(|s| format!(" {s}")).unwrap_or_default()
    );
    Ok(Exit::Success)
}
