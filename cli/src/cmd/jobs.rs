//! `kiln jobs BATCH [--state STATE]`: the jobs of a batch, with each error.

use crate::client::Client;
use crate::error::{Exit, Result};
use crate::ui::Ui;
use kiln_protocol::JobState;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    pub batch: Uuid,
    /// Only jobs in this state.
    #[arg(long, value_parser = state_parser())]
    pub state: Option<JobState>,
    /// The same as `-o json`.
    #[arg(long, hide = true)]
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

pub async fn run(args: JobsArgs, ui: &Ui, client: Client) -> Result<Exit> {
    let ui = &ui.with_json(args.json);
    let jobs = client.all_jobs(args.batch, args.state).await?;
    for job in &jobs {
        if ui.json {
            ui.json_line(job)?;
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
    ui.note(format_args!(
        "{} job{}{}",
        jobs.len(),
        if jobs.len() == 1 { "" } else { "s" },
        args.state.map(|s| format!(" {s}")).unwrap_or_default()
    ));
    Ok(Exit::Success)
}
