//! The `kiln` command: submit prompt files to a Kiln dispatcher, watch them
//! render, collect the best images and a contact sheet.
//!
//! - [`input`]: prompt files (text, CSV, JSON Lines) read and checked with
//!   line numbers, so a bad file is refused before anything is sent.
//! - [`client`]: a client of the dispatcher's `/v1` API; requests and
//!   answers are the shared contract types of [`kiln_protocol::api`].
//! - [`config`]: the API address and token from flags, the environment or
//!   the config file `kiln login` writes.
//! - [`ui`]: what goes to stdout (results, as tables or JSON lines) and to
//!   stderr (progress, notes), `-o json`, `--quiet`, `NO_COLOR`.
//! - [`watch`]: progress display (bars on a terminal, lines otherwise).
//! - [`sheet`]: `manifest.jsonl`, `index.html` and the paged contact sheet
//!   (`contact-sheet-001.png`, ...).
//! - [`cmd`]: one module per command; [`Cli`] parses and [`run`] dispatches.
//! - [`error`]: errors, the exit codes scripts rely on, and how a server's
//!   [`kiln_protocol::api::Problem`] is printed.

pub mod client;
pub mod cmd;
pub mod config;
pub mod error;
pub mod input;
pub mod sheet;
pub mod ui;
pub mod watch;

use clap::{Parser, Subcommand};
use error::{Exit, Result};

const AFTER_HELP: &str = "\
Examples:
  kiln login --api-url https://kiln.example.com          # asks for the token, saves both
  kiln submit prompts.txt --engine dalle --wait          # prints the batch id, progress on stderr
  id=$(kiln submit prompts.csv --engine vqgan-clip)      # only the id is captured
  kiln submit prompts.jsonl -o json --wait | jq .state   # one JSON document: the batch as it ended
  kiln watch $id -o json                                 # NDJSON: the batch at every change
  kiln jobs $id --state failed -o json | jq -r .error
  kiln results $id --out results/                        # images, manifest.jsonl, contact sheet
  kiln retry $id --failed --wait
  kiln workers                                           # operators: the fleet
  kiln completions bash > ~/.local/share/bash-completion/completions/kiln

Output:
  stdout carries results only: a readable table, or with -o json one JSON
  document per line. Progress, bars, notes and prompts go to stderr; bars
  only when stderr is a terminal. --quiet leaves stderr to errors; NO_COLOR
  turns colours off.

Exit codes:
  0  every job succeeded (or there was nothing to wait for)
  1  some jobs failed or were cancelled, or a download failed
  2  usage or input error (bad arguments, a missing or bad prompt file, a request the server refused)
  3  the server is unreachable or unavailable, or answers what this kiln cannot read
  4  a local error (results, sheets or the config file cannot be written, or the config file read)
  A closed stdout (| head) ends a command quietly with 0.";

/// kiln: submit prompt files to a Kiln dispatcher, watch them render, collect the results.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Address of the Kiln API, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "KILN_API_URL", global = true, hide_env_values = true)]
    pub api_url: Option<String>,
    /// API token (from `kiln-dispatcher token create`).
    #[arg(long, env = "KILN_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Output format of what commands print on stdout.
    #[arg(
        short,
        long,
        value_enum,
        default_value_t,
        env = "KILN_OUTPUT",
        global = true
    )]
    pub output: ui::Output,
    /// Nothing on stderr but errors (no progress, bars or notes).
    #[arg(short, long, global = true)]
    pub quiet: bool,
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
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<Exit> {
    let (api_url, token) = (cli.api_url, cli.token);
    let ui = ui::Ui::new(cli.output, cli.quiet);
    let client = || {
        let settings = config::resolve(api_url.clone(), token.clone())?;
        client::Client::new(&settings)
    };
    match cli.command {
        Command::Submit(a) => cmd::submit::run(a, &ui, client).await,
        Command::Status(a) => cmd::status::run_status(a, &ui, client()?).await,
        Command::Watch(a) => cmd::status::run_watch(a, &ui, client()?).await,
        Command::Results(a) => cmd::results::run(a, &ui, client()?).await,
        Command::Sheet(a) => cmd::results::run_sheet(a, &ui),
        Command::Jobs(a) => cmd::jobs::run(a, &ui, client()?).await,
        Command::Cancel(a) => cmd::cancel::run(a, &ui, client()?).await,
        Command::Retry(a) => cmd::retry::run(a, &ui, client()?).await,
        Command::Batches(a) => cmd::batches::run(a, &ui, client()?).await,
        Command::Workers(a) => cmd::workers::run(a, &ui, client()?).await,
        Command::Login(a) => cmd::login::run(a, &ui, api_url.clone(), token.clone()).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "kiln", &mut std::io::stdout());
            Ok(Exit::Success)
        }
    }
}
