use clap::Parser;

/// Kiln's dispatcher: stores prompt jobs in PostgreSQL, publishes them to
/// RabbitMQ and serves the HTTP API.
#[derive(Parser)]
#[command(name = "kiln-dispatcher", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Apply migrations and serve the API.
    Serve,
}

fn main() {
    let _ = Cli::parse();
}
