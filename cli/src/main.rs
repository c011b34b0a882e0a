use clap::Parser;
use kiln_cli::{error::Exit, run, Cli};

#[tokio::main]
async fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                Exit::Usage.code()
            } else {
                Exit::Success.code()
            });
        }
    };
    let code = match run(cli).await {
        Ok(exit) => exit.code(),
        Err(kiln_cli::error::CliError::Closed) => Exit::Success.code(),
        Err(e) => {
            eprintln!("kiln: {e}");
            e.exit().code()
        }
    };
    std::process::exit(code);
}
