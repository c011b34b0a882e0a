//! `kiln cancel ID`: cancels a batch, or a job when no batch has that id.

use crate::client::Client;
use crate::error::{CliError, Exit, Result};
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// A batch id or a job id.
    pub id: Uuid,
}

pub async fn run(args: CancelArgs, client: Client) -> Result<Exit> {
    let (kind, answer) = match client.cancel_batch(args.id).await {
        Ok(a) => ("batch", a),
        Err(e) if e.status() == Some(404) => match client.cancel_job(args.id).await {
            Ok(a) => ("job", a),
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
    // The answer is the batch or the job; say what the server says about it.
    let state = answer
        .get("state")
        .and_then(|s| s.as_str())
        .or_else(|| answer.pointer("/job/state").and_then(|s| s.as_str()))
        .or_else(|| answer.pointer("/batch/state").and_then(|s| s.as_str()));
    match state {
        Some(s) => println!("{kind} {}: {s}", args.id),
        None => println!("{kind} {}: cancel requested", args.id),
    }
    if let Some(m) = answer.get("message").and_then(|m| m.as_str()) {
        println!("{m}");
    }
    Ok(Exit::Success)
}
