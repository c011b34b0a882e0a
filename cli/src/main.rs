use clap::Parser;

/// kiln: submit prompt files to a Kiln dispatcher, watch them render, collect the results.
#[derive(Parser)]
#[command(name = "kiln", version)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
