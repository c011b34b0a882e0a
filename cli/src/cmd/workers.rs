//! `kiln workers`: the workers the dispatcher has heard from, and
//! `kiln workers drain ID`. Both need an operator's token.

use crate::client::Client;
use crate::error::{CliError, Exit, Result};
use crate::ui::Ui;
use chrono::Utc;
use kiln_protocol::api::Worker;

#[derive(Debug, clap::Args)]
pub struct WorkersArgs {
    #[command(subcommand)]
    pub command: Option<WorkersCommand>,
    /// The same as `-o json`.
    #[arg(long, hide = true)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum WorkersCommand {
    /// Ask a worker to drain: it takes no new jobs, finishes those it holds
    /// and exits.
    Drain {
        /// The worker's id, as `kiln workers` lists it.
        id: String,
    },
}

pub async fn run(args: WorkersArgs, ui: &Ui, client: Client) -> Result<Exit> {
    let ui = &ui.with_json(args.json);
    match args.command {
        None => list(ui, client).await,
        Some(WorkersCommand::Drain { id }) => {
            let answer = client
                .drain_worker(&id)
                .await
                .map_err(|e| match e.status() {
                    Some(404) => CliError::Usage(format!(
                        "no worker {id} in the registry (see kiln workers)"
                    )),
                    _ => e,
                })?;
            if ui.json {
                ui.json_line(&answer)?;
            } else {
                println!("{}", answer.message);
            }
            Ok(Exit::Success)
        }
    }
}

async fn list(ui: &Ui, client: Client) -> Result<Exit> {
    let workers = client.workers().await?.items;
    if ui.json {
        for w in &workers {
            ui.json_line(w)?;
        }
        return Ok(Exit::Success);
    }
    let rows: Vec<[String; 8]> = workers.iter().map(row).collect();
    let header = [
        "ID",
        "STATE",
        "ENGINES",
        "DEVICES",
        "SLOTS",
        "IN HAND",
        "LAST SEEN",
        "VERSION",
    ]
    .map(String::from);
    let mut widths = header.each_ref().map(|h| h.chars().count());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    ui.note(format_args!(
        "{} worker{}",
        workers.len(),
        if workers.len() == 1 { "" } else { "s" }
    ));
    Ok(Exit::Success)
}

fn row(w: &Worker) -> [String; 8] {
    let ago = (Utc::now() - w.last_seen).num_seconds().max(0);
    [
        w.id.clone(),
        w.state.to_string(),
        w.engines
            .iter()
            .map(|e| e.as_str())
            .collect::<Vec<_>>()
            .join(","),
        w.devices.join(","),
        w.slots.to_string(),
        format!("{}/{}", w.jobs_in_hand, w.capacity),
        format!("{ago}s ago"),
        w.version.clone(),
    ]
}
