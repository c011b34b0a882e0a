//! `kiln login`: checks an API address and token, then stores them in the
//! config file for later commands.

use crate::client::Client;
use crate::config::{self, FileConfig, Settings};
use crate::error::{CliError, Exit, Result};
use crate::ui::Ui;
use std::io::IsTerminal;

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Store the settings without checking them against the server.
    #[arg(long)]
    pub no_verify: bool,
}

/// `api_url` and `token` come from the global flags or the environment; a
/// missing token is asked for without echo on a terminal, or read from
/// standard input, so it stays out of the shell history and off the screen.
pub async fn run(
    args: LoginArgs,
    ui: &Ui,
    api_url: Option<String>,
    token: Option<String>,
) -> Result<Exit> {
    let api_url = api_url
        .filter(|s| !s.is_empty())
        .ok_or_else(|| CliError::Usage("kiln login needs --api-url (or KILN_API_URL)".into()))?;
    let api_url = config::normalize_url(&api_url)?;
    let token = match token.filter(|s| !s.is_empty()) {
        Some(t) => t,
        None => {
            let line = if std::io::stdin().is_terminal() {
                rpassword::prompt_password("API token (not shown): ")
            } else {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).map(|_| line)
            }
            .map_err(|e| CliError::Usage(format!("reading the token: {e}")))?;
            let t = line.trim().to_string();
            if t.is_empty() {
                return Err(CliError::Usage("no token given".into()));
            }
            t
        }
    };
    if !args.no_verify {
        let client = Client::new(&Settings {
            api_url: api_url.clone(),
            token: token.clone(),
        })?;
        client.batches(1, None).await?;
    }
    let path = config::save(&FileConfig {
        api_url: Some(api_url.clone()),
        token: Some(token),
    })?;
    ui.note(format_args!(
        "logged in to {api_url}; settings saved in {}",
        path.display()
    ));
    Ok(Exit::Success)
}
