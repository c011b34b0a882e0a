use clap::Parser;
use kiln_worker::model_store::{ClipCommand, ModelsCommand};
use kiln_worker::runtime::{config::RunArgs, local::RenderArgs};

/// Kiln's worker: renders prompt jobs on one GPU.
#[derive(Parser)]
#[command(name = "kiln-worker", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Pull jobs from the broker, render them, upload the results.
    Run(Box<RunArgs>),
    /// Render one job locally into a directory (no broker, no bucket).
    Render(Box<RenderArgs>),
    /// Model directories: tiny test models, the toy-world models, published checkpoints.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// CLIP on its own: embeddings and scores.
    #[command(subcommand)]
    Clip(ClipCommand),
}

fn main() {
    let cli = Cli::parse();
    kiln_protocol::logging::init();
    let result = match cli.command {
        Command::Run(args) => {
            print_cuda();
            tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(kiln_worker::runtime::run(*args)))
        }
        Command::Render(args) => {
            print_cuda();
            kiln_worker::runtime::local::render(*args)
        }
        Command::Models(cmd) => kiln_worker::model_store::run_models(cmd),
        Command::Clip(cmd) => kiln_worker::model_store::run_clip(cmd),
    };
    match result {
        // Render threads may still hold a job after a drain timeout: leave
        // without waiting for them.
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("kiln-worker: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn print_cuda() {
    let n = if tch::Cuda::is_available() {
        tch::Cuda::device_count()
    } else {
        0
    };
    println!(
        "cuda available: {} ({n} device(s))",
        tch::Cuda::is_available()
    );
}
