//! `kiln cancel ID`: cancels a batch, or a job when no batch has that id.

use crate::client::Client;
use crate::error::{CliError, Exit, Result};
use crate::ui::Ui;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// A batch id or a job id.
    pub id: Uuid,
}

pub async fn run(args: CancelArgs, ui: &Ui, client: Client) -> Result<Exit> {
    // Say what the server says about the batch or the job.
    let (kind, state, message) = match client.cancel_batch(args.id).await {
        Ok(a) if ui.json => return ui.json_line(&a).map(|()| Exit::Success),
        Ok(a) => ("batch", a.batch.state, a.message),
        Err(e) if e.status() == Some(404) => match client.cancel_job(args.id).await {
            Ok(a) if ui.json => return ui.json_line(&a).map(|()| Exit::Success),
            Ok(a) => ("job", a.job.state, a.message),
            Err(e) if e.status() == Some(404) => {
                return Err(CliError::Usage(format!(
                    "no batch or job {} (for this token)",
                    args.id
                )))
            }
            Err(e) => return Err(e),
        },
        Err(e) => return Err(e),
    };
    println!("{kind} {}: {state}", args.id);
    println!("{message}");
    Ok(Exit::Success)
}
