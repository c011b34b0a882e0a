//! `kiln status BATCH` (one look) and `kiln watch BATCH` (follow to the end).

use crate::client::Client;
use crate::error::{CliError, Exit, Result};
use crate::ui::Ui;
use crate::watch;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    pub batch: Uuid,
    /// The same as `-o json`.
    #[arg(long, hide = true)]
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
pub async fn run_status(args: StatusArgs, ui: &Ui, client: Client) -> Result<Exit> {
    let ui = &ui.with_json(args.json);
    let batch = client.batch(args.batch).await?;
    if ui.json {
        ui.json_line(&batch)?;
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

/// Follows the batch to its end; with `-o json`, prints it at every change.
pub async fn run_watch(args: WatchArgs, ui: &Ui, client: Client) -> Result<Exit> {
    let interval = interval(args.interval)?;
    let done = watch::watch(&client, args.batch, interval, ui, ui.json).await?;
    ui.note(watch::summary(&done));
    Ok(watch::outcome(&done))
}

/// `--interval` as a duration: a positive number of seconds.
pub fn interval(secs: f64) -> Result<Duration> {
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(CliError::Usage(
            "--interval must be a positive number of seconds".into(),
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// After a submit or a retry: prints the new batch (its id, or with
/// `-o json` the batch), and with `wait` follows it to its end (then with
/// `-o json` prints the batch as it ended instead).
pub async fn created(
    client: &Client,
    ui: &Ui,
    batch: &kiln_protocol::api::Batch,
    wait: Option<Duration>,
) -> Result<Exit> {
    let Some(interval) = wait else {
        if ui.json {
            ui.json_line(batch)?;
        } else {
            println!("{}", batch.id);
        }
        return Ok(Exit::Success);
    };
    if !ui.json {
        println!("{}", batch.id);
    }
    let done = watch::watch(client, batch.id, interval, ui, false).await?;
    if ui.json {
        ui.json_line(&done)?;
    }
    ui.note(watch::summary(&done));
    Ok(watch::outcome(&done))
}
