use clap::Parser;

/// Kiln's worker: renders prompt jobs on one GPU.
#[derive(Parser)]
#[command(name = "kiln-worker", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Pull jobs from the broker and render them.
    Run,
}

fn main() {
    let _ = Cli::parse();
    println!("cuda available: {}", tch::Cuda::is_available());
}
