//! Entry point: `run` (PID 1 of the Postgres container), `copy-to DIR` (the init container),
//! `status` (print the local status document). Wiring only; the work is in the library.

use std::{io::IsTerminal, net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use scaled_contract::instance::{INSTANCE_CONFIG_PATH, INSTANCE_STATUS_PORT};
use scaled_instance::settings::{RunOptions, Settings};

#[derive(Parser)]
#[command(
    name = "scaled-instance",
    version,
    about = "The ScaledApp Postgres instance manager"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage Postgres as this container's PID 1.
    Run {
        /// The instance config (JSON InstanceConfig).
        #[arg(long, default_value = INSTANCE_CONFIG_PATH)]
        config: PathBuf,
        /// Read the primary's pod name from this file instead of the Kubernetes API (a missing
        /// file means the record cannot be confirmed).
        #[arg(long)]
        primary_file: Option<PathBuf>,
        /// Where a peer answers, POD=HOST:PORT (repeatable); default <pod>.$SCALED_PEER_DOMAIN.
        #[arg(long = "peer")]
        peers: Vec<String>,
        /// Directory for the Unix socket and the replication passfile (not on the data volume).
        #[arg(long, default_value = "/var/run/postgresql")]
        socket_dir: PathBuf,
        /// Address the status port binds.
        #[arg(long, default_value = "0.0.0.0")]
        http_address: IpAddr,
        /// Postgres listen_addresses.
        #[arg(long, default_value = "*")]
        listen_addresses: String,
        /// Pause between control-loop steps that changed nothing, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        tick_ms: u64,
    },
    /// Copy this executable into DIR (atomically, mode 0755); for the init container.
    CopyTo {
        /// Target directory.
        dir: PathBuf,
    },
    /// Print the local instance's status document.
    Status {
        /// Base URL of the instance manager.
        #[arg(long, default_value_t = format!("http://127.0.0.1:{INSTANCE_STATUS_PORT}"))]
        url: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            primary_file,
            peers,
            socket_dir,
            http_address,
            listen_addresses,
            tick_ms,
        } => {
            init_tracing();
            let options = RunOptions {
                config,
                primary_file,
                peers,
                socket_dir,
                http_address,
                listen_addresses,
                tick: Duration::from_millis(tick_ms),
            };
            let settings = match Settings::load(options) {
                Ok(settings) => settings,
                Err(error) => return fail(&error),
            };
            match scaled_instance::run(settings).await {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(error) => fail(&error),
            }
        }
        Command::CopyTo { dir } => match scaled_instance::copy::copy_self_to(&dir) {
            Ok(path) => {
                println!("{}", path.display());
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error),
        },
        Command::Status { url } => {
            let url = format!("{}/status", url.trim_end_matches('/'));
            let response = match reqwest::Client::new()
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await
            {
                Ok(response) => response,
                Err(error) => return fail(&error),
            };
            match response.text().await {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(error) => fail(&error),
            }
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if std::env::var("SCALED_LOG_FORMAT").is_ok_and(|format| format == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn fail(error: &dyn std::error::Error) -> ExitCode {
    eprintln!("scaled-instance: {}", scaled_contract::error_chain(error));
    ExitCode::FAILURE
}
