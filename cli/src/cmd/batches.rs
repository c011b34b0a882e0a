//! `kiln batches`: the most recent batches of this token's tenant.

use crate::client::Client;
use crate::error::{Exit, Result};
use crate::ui::Ui;

#[derive(Debug, clap::Args)]
pub struct BatchesArgs {
    /// How many to show.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

pub async fn run(args: BatchesArgs, ui: &Ui, client: Client) -> Result<Exit> {
    let page = client.batches(args.limit.clamp(1, 500), None).await?;
    for b in &page.items {
        if ui.json {
            ui.json_line(b)?;
            continue;
        }
        let c = b.counts;
        println!(
            "{}  {:<12} {:<10} {:>6}/{:<6} failed {:<5} {}",
            b.id,
            b.engine.as_str(),
            b.state.as_str(),
            c.succeeded,
            b.total,
            c.failed,
            b.name.as_deref().unwrap_or("")
        );
    }
    Ok(Exit::Success)
}
