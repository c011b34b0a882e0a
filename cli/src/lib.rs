//! The `kiln` command: submit prompt files to a Kiln dispatcher, watch them
//! render, collect the best images and a contact sheet.
//!
//! - [`input`]: prompt files (text, CSV, JSON Lines) read and checked with
//!   line numbers, so a bad file is refused before anything is sent.
//! - [`client`]: a client of the dispatcher's `/v1` API; requests and
//!   answers are the shared contract types of [`kiln_protocol::api`].
//! - [`config`]: the API address and token from flags, the environment or
//!   the config file `kiln login` writes.
//! - [`watch`]: progress display (bars on a terminal, lines otherwise).
//! - [`sheet`]: `manifest.jsonl`, `index.html` and `contact-sheet.png`.
//! - [`cmd`]: one module per command; [`Cli`] parses and [`run`] dispatches.
//! - [`error`]: errors, the exit codes scripts rely on, and how a server's
//!   [`kiln_protocol::api::Problem`] is printed.

pub mod client;
pub mod cmd;
pub mod config;
pub mod error;
pub mod input;
pub mod sheet;
pub mod watch;

use clap::{Parser, Subcommand};
use error::{Exit, Result};

const EXIT_CODES: &str = "\
Exit codes:
  0  every job succeeded (or there was nothing to wait for)
  1  some jobs failed or were cancelled, or a download failed
  2  usage or input error (bad arguments, a bad prompt file, a request the server refused)
  3  the server is unreachable or unavailable";

/// kiln: submit prompt files to a Kiln dispatcher, watch them render, collect the results.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Address of the Kiln API, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "KILN_API_URL", global = true, hide_env_values = true)]
    pub api_url: Option<String>,
    /// API token (from `kiln-dispatcher token create`).
    #[arg(long, env = "KILN_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a prompt file (text, CSV or JSON Lines) as one batch.
    Submit(cmd::submit::SubmitArgs),
    /// Show a batch's progress once.
    Status(cmd::status::StatusArgs),
    /// Follow a batch until every job has finished.
    Watch(cmd::status::WatchArgs),
    /// Download a batch's images, write manifest.jsonl and a contact sheet.
    Results(cmd::results::ResultsArgs),
    /// Rebuild the contact sheet of a results folder from its manifest.
    Sheet(cmd::results::SheetArgs),
    /// List a batch's jobs, with each error.
    Jobs(cmd::jobs::JobsArgs),
    /// Cancel a batch or a job.
    Cancel(cmd::cancel::CancelArgs),
    /// Submit the failed jobs of a batch again, as a new linked batch.
    Retry(cmd::retry::RetryArgs),
    /// List recent batches.
    Batches(cmd::batches::BatchesArgs),
    /// Check an API address and token and save them for later commands.
    Login(cmd::login::LoginArgs),
    /// List the workers (id, state, engines, devices, jobs in hand, last
    /// seen), or drain one with `kiln workers drain ID` (operator tokens).
    Workers(cmd::workers::WorkersArgs),
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<Exit> {
    let (api_url, token) = (cli.api_url, cli.token);
    let client = || {
        let settings = config::resolve(api_url.clone(), token.clone())?;
        client::Client::new(&settings)
    };
    match cli.command {
        Command::Submit(a) => cmd::submit::run(a, client).await,
        Command::Status(a) => cmd::status::run_status(a, client()?).await,
        Command::Watch(a) => cmd::status::run_watch(a, client()?).await,
        Command::Results(a) => cmd::results::run(a, client()?).await,
        Command::Sheet(a) => cmd::results::run_sheet(a),
        Command::Jobs(a) => cmd::jobs::run(a, client()?).await,
        Command::Cancel(a) => cmd::cancel::run(a, client()?).await,
        Command::Retry(a) => cmd::retry::run(a, client()?).await,
        Command::Batches(a) => cmd::batches::run(a, client()?).await,
        Command::Workers(a) => cmd::workers::run(a, client()?).await,
        Command::Login(a) => cmd::login::run(a, api_url.clone(), token.clone()).await,
    }
}
