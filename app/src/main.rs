//! Entry point: one binary, three modes (`serve`, `worker`, `migrate`), plus `password-token` and
//! hidden helpers for scripts (`local-config`, `seed`, `open-sessions`). Wiring only; the work is
//! in the library.

use std::{io::Write, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use scaled_app::{
    config::{self, Settings},
    queue, startup, telemetry,
    worker::FaultInjection,
};

#[derive(Parser)]
#[command(name = "scaled-app", about = "The ScaledApp service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (and /metrics on the metrics port).
    Serve,
    /// Consume queues.
    Worker {
        /// Streams to consume, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = queue::STREAMS.map(String::from))]
        queues: Vec<String>,
        /// Concurrent consumers per stream.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Test hook: pause between an effect's commit and its ack, in milliseconds.
        #[arg(long, default_value_t = 0, hide = true)]
        ack_delay_ms: u64,
    },
    /// Apply database migrations to every shard primary.
    Migrate,
    /// Issue a one-time token with which a user sets a new password (for accounts created before
    /// passwords existed, or a lost password). Prints the token; it is valid for 24 hours.
    PasswordToken {
        /// The user's id.
        #[arg(long)]
        user_id: i64,
    },
    /// Print a development config document (used by scripts/stack.sh).
    #[command(hide = true)]
    LocalConfig {
        /// One shard: PRIMARY[,REPLICA...] as host:port; repeat in shard order.
        #[arg(long = "shard", required = true)]
        shards: Vec<String>,
        /// Redis URL.
        #[arg(long)]
        redis: String,
        /// Hash slots.
        #[arg(long, default_value_t = 1024)]
        slots: u32,
        /// HTTP port.
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        /// Metrics port.
        #[arg(long, default_value_t = 9090)]
        metrics_port: u16,
    },
    /// Create users for benchmarks and write their ids, one per line (used by
    /// scripts/bench-app.sh).
    #[command(hide = true)]
    Seed {
        /// How many users.
        #[arg(long)]
        users: usize,
        /// Concurrent inserts.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// File for the ids.
        #[arg(long)]
        output: PathBuf,
    },
    /// Sign in the users of an ids file (as `seed` writes it) without passwords, and write one
    /// `<id>\t<cookie name>=<session id>` line per user; the sessions listed in the output file
    /// by an earlier run end (used by scripts/bench-app.sh before every run).
    #[command(hide = true)]
    OpenSessions {
        /// File of user ids, one a line.
        #[arg(long)]
        ids: PathBuf,
        /// Concurrent sign-ins.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// File for the sessions (mode 0600: they sign users in).
        #[arg(long)]
        output: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::LocalConfig {
        shards,
        redis,
        slots,
        http_port,
        metrics_port,
    } = &cli.command
    {
        return match config::local_config(shards, redis, *slots, *http_port, *metrics_port) {
            // A closed stdout (`| head`) is the reader's choice, not an error worth a panic.
            Ok(config) => match writeln!(std::io::stdout(), "{}", config.to_json()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(&error),
            },
            Err(error) => fail(&error),
        };
    }
    telemetry::init();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(error) => return fail(&error),
    };
    let result = match cli.command {
        Command::Serve => match startup::Application::build(settings).await {
            Ok(application) => {
                application
                    .run_until_stopped(startup::shutdown_on_signal())
                    .await
            }
            Err(error) => Err(error),
        },
        Command::Worker {
            queues,
            concurrency,
            ack_delay_ms,
        } => {
            let faults = FaultInjection {
                ack_delay: Duration::from_millis(ack_delay_ms),
            };
            startup::run_worker(
                settings,
                &queues,
                concurrency,
                faults,
                startup::shutdown_on_signal(),
            )
            .await
        }
        Command::Migrate => startup::run_migrations(settings).await,
        Command::PasswordToken { user_id } => {
            match startup::issue_password_token(settings, user_id).await {
                Ok(token) => match writeln!(std::io::stdout(), "{token}") {
                    Ok(()) => Ok(()),
                    Err(error) => return fail(&error),
                },
                Err(error) => Err(error),
            }
        }
        Command::Seed {
            users,
            concurrency,
            output,
        } => match startup::seed_users(settings, users, concurrency).await {
            Ok(ids) => {
                let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
                if let Err(error) = std::fs::write(&output, text) {
                    return fail(&error);
                }
                Ok(())
            }
            Err(error) => Err(error),
        },
        Command::OpenSessions {
            ids,
            concurrency,
            output,
        } => {
            let ids = match std::fs::read_to_string(&ids) {
                Ok(ids) => ids,
                Err(error) => return fail(&error),
            };
            let previous = match std::fs::read_to_string(&output) {
                Ok(previous) => previous,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(error) => return fail(&error),
            };
            match startup::open_sessions(settings, &ids, &previous, concurrency).await {
                Ok(lines) => match write_private(&output, &lines) {
                    Ok(()) => Ok(()),
                    Err(error) => return fail(&error),
                },
                Err(error) => Err(error),
            }
        }
        Command::LocalConfig { .. } => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// Writes `text` to `path`, readable by the owner only.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` applies to a new file only.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes())
}

/// Prints an error with its causes and returns failure.
fn fail(error: &dyn std::error::Error) -> ExitCode {
    eprintln!("error: {}", scaled_contract::error_chain(error));
    ExitCode::FAILURE
}
