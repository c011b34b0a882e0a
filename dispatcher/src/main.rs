use anyhow::Context;
use clap::Parser;
use kiln_dispatcher::config::Settings;
use kiln_dispatcher::{auth, connect_db, migrate, prune, Application};

/// Kiln's dispatcher: stores prompt jobs in PostgreSQL, publishes them to
/// RabbitMQ and serves the HTTP API.
#[derive(Parser)]
#[command(name = "kiln-dispatcher", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Apply pending migrations, then serve the API and run the relay,
    /// event consumer, dead-letter consumer and lease reaper.
    Serve(Box<Settings>),
    /// Apply pending migrations and exit.
    Migrate(Db),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Tenants' quotas and retention.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Print the OpenAPI document, with the intake limits these settings give.
    Openapi(Box<Settings>),
    /// Delete what retention lets go now (finished batches past their
    /// tenant's retention, unused uploads, their objects and orphan
    /// objects), as `serve` does every KILN_PRUNE_INTERVAL; prints JSON.
    Prune(Box<PruneArgs>),
}

#[derive(clap::Args)]
struct PruneArgs {
    /// Report what would be deleted (with the batch ids and orphan keys),
    /// deleting nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    db: Db,
    #[command(flatten)]
    s3: kiln_dispatcher::config::S3Settings,
    #[command(flatten)]
    retention: kiln_dispatcher::config::Retention,
}

#[derive(clap::Args)]
struct Db {
    #[arg(
        long,
        env = "KILN_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/kiln"
    )]
    database_url: String,
}

#[derive(clap::Subcommand)]
enum TokenCommand {
    /// Create a token for a tenant (created if new); the token is printed on
    /// the last line and never stored.
    Create {
        #[arg(long)]
        tenant: String,
        /// An operator's token: it may also list the workers and drain
        /// them (`GET /v1/workers`, `kiln workers`).
        #[arg(long)]
        operator: bool,
        #[command(flatten)]
        db: Db,
    },
    /// Revoke one token, or every token of a tenant.
    Revoke {
        /// The token to revoke.
        #[arg(long, conflicts_with = "tenant", required_unless_present = "tenant")]
        token: Option<String>,
        /// Revoke every token of this tenant.
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        db: Db,
    },
}

#[derive(clap::Subcommand)]
enum TenantCommand {
    /// Set a tenant's quotas; a quota not given keeps its value, and
    /// `default` returns it to the dispatcher's default.
    SetLimits {
        #[arg(long)]
        tenant: String,
        /// Jobs the tenant may have queued or running (a number or `default`).
        #[arg(long, value_parser = limit)]
        max_active_jobs: Option<Limit>,
        /// Batches the tenant may submit per minute (a number or `default`).
        #[arg(long, value_parser = limit)]
        submits_per_minute: Option<Limit>,
        #[command(flatten)]
        db: Db,
    },
    /// Set a tenant's retention: how long its finished batches and unused
    /// uploads are kept (`30d`, `12h`, …, or `default` for KILN_RETENTION).
    SetRetention {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_parser = retention)]
        retention: Retention,
        #[command(flatten)]
        db: Db,
    },
    /// Show a tenant's quotas and retention.
    Show {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        db: Db,
    },
}

/// A retention: a duration, or the dispatcher's default.
#[derive(Debug, Clone, Copy)]
struct Retention(Option<std::time::Duration>);

fn retention(s: &str) -> Result<Retention, String> {
    if s == "default" {
        return Ok(Retention(None));
    }
    kiln_dispatcher::config::parse_retention(s).map(|d| Retention(Some(d)))
}

/// A quota: a number, or the dispatcher's default.
#[derive(Debug, Clone, Copy)]
struct Limit(Option<i64>);

fn limit(s: &str) -> Result<Limit, String> {
    if s == "default" {
        return Ok(Limit(None));
    }
    match s.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(Limit(Some(n))),
        _ => Err(format!(
            "{s:?} is not a count (a whole number from 0) or `default`"
        )),
    }
}

async fn tenant_command(cmd: TenantCommand) -> anyhow::Result<()> {
    use kiln_dispatcher::quotas::{self, Quotas};
    let show = |tenant: &str, q: Quotas| {
        let own = |v: Option<i64>| v.map_or("the default".to_string(), |n| n.to_string());
        println!(
            "tenant {tenant}: max active jobs {}, submits per minute {}",
            own(q.max_active_jobs),
            own(q.submits_per_minute.map(i64::from))
        );
    };
    match cmd {
        TenantCommand::SetLimits {
            tenant,
            max_active_jobs,
            submits_per_minute,
            db: d,
        } => {
            let pool = db(&d).await?;
            let mut q = quotas::get(&pool, &tenant)
                .await?
                .with_context(|| format!("no tenant {tenant}"))?;
            if let Some(Limit(v)) = max_active_jobs {
                q.max_active_jobs = v;
            }
            if let Some(Limit(v)) = submits_per_minute {
                q.submits_per_minute = v
                    .map(i32::try_from)
                    .transpose()
                    .context("--submits-per-minute is too large")?;
            }
            let q = quotas::set(&pool, &tenant, q)
                .await?
                .with_context(|| format!("no tenant {tenant}"))?;
            show(&tenant, q);
        }
        TenantCommand::SetRetention {
            tenant,
            retention: Retention(r),
            db: d,
        } => {
            let pool = db(&d).await?;
            let r = prune::set_tenant_retention(&pool, &tenant, r)
                .await?
                .with_context(|| format!("no tenant {tenant}"))?;
            show_retention(&tenant, r);
        }
        TenantCommand::Show { tenant, db: d } => {
            let pool = db(&d).await?;
            let q = quotas::get(&pool, &tenant)
                .await?
                .with_context(|| format!("no tenant {tenant}"))?;
            show(&tenant, q);
            let r = prune::tenant_retention(&pool, &tenant)
                .await?
                .with_context(|| format!("no tenant {tenant}"))?;
            show_retention(&tenant, r);
        }
    }
    Ok(())
}

fn show_retention(tenant: &str, r: Option<std::time::Duration>) {
    match r {
        Some(d) => println!("tenant {tenant}: retention {}s", d.as_secs()),
        None => println!("tenant {tenant}: retention the default (KILN_RETENTION)"),
    }
}

async fn prune_command(args: PruneArgs) -> anyhow::Result<()> {
    let pool = db(&args.db).await?;
    let pruner = prune::Pruner::connect(pool, &args.s3, args.retention).await?;
    let report = if args.dry_run {
        pruner.dry_run().await?
    } else {
        pruner.pass(usize::MAX).await?
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn db(d: &Db) -> anyhow::Result<sqlx::PgPool> {
    let pool = connect_db(&d.database_url, 2).await?;
    migrate(&pool).await?;
    Ok(pool)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kiln_protocol::logging::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(settings) => {
            let app = Application::build(*settings).await?;
            let stop = app.stop_token();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutting down");
                stop.cancel();
            });
            app.run_until_stopped().await
        }
        Command::Migrate(d) => {
            db(&d).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Token(TokenCommand::Create {
            tenant,
            operator,
            db: d,
        }) => {
            let pool = db(&d).await?;
            let token = auth::issue_token(&pool, &tenant, operator).await?;
            let whose = if operator { "operator token" } else { "token" };
            println!("{whose} for tenant {tenant} (shown once; only its hash is stored):");
            println!("{token}");
            Ok(())
        }
        Command::Token(TokenCommand::Revoke {
            token,
            tenant,
            db: d,
        }) => {
            let pool = db(&d).await?;
            if let Some(t) = token {
                let done = auth::revoke_token(&pool, &t).await?;
                anyhow::ensure!(done, "no active token matches");
                println!("token revoked");
            } else {
                let tenant = tenant.context("give --token or --tenant")?;
                let n = auth::revoke_tenant(&pool, &tenant).await?;
                println!("revoked {n} tokens of tenant {tenant}");
            }
            Ok(())
        }
        Command::Tenant(cmd) => tenant_command(cmd).await,
        Command::Prune(args) => prune_command(*args).await,
        Command::Openapi(settings) => {
            println!("{}", kiln_dispatcher::openapi_json(&settings));
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.ok();
}
