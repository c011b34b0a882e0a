//! `kiln status BATCH` (one look) and `kiln watch BATCH` (follow to the end).

use crate::client::Client;
use crate::error::{CliError, Exit, Result};
use crate::watch;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    pub batch: Uuid,
    /// Print the batch as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    pub batch: Uuid,
    /// Seconds between polls.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
}

/// Prints the batch. Exits 1 when it has finished with jobs that did not
/// succeed, 0 otherwise.
pub async fn run_status(args: StatusArgs, client: Client) -> Result<Exit> {
    let batch = client.batch(args.batch).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&batch).map_err(anyhow::Error::from)?
        );
    } else {
        println!("{}", watch::summary(&batch));
        println!(
            "state {}, progress {:.1}%{}",
            batch.state,
            batch.progress * 100.0,
            batch
                .name
                .as_deref()
                .map(|n| format!(", name {n:?}"))
                .unwrap_or_default()
        );
    }
    Ok(if batch.is_finished() {
        watch::outcome(&batch)
    } else {
        Exit::Success
    })
}

pub async fn run_watch(args: WatchArgs, client: Client) -> Result<Exit> {
    if !(args.interval > 0.0 && args.interval.is_finite()) {
        return Err(CliError::Usage(
            "--interval must be a positive number of seconds".into(),
        ));
    }
    let done = watch::watch(&client, args.batch, Duration::from_secs_f64(args.interval)).await?;
    eprintln!("{}", watch::summary(&done));
    Ok(watch::outcome(&done))
}
