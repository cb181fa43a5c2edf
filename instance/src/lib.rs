//! `scaled-instance`: the Postgres instance manager of a ScaledApp, PID 1 of every Postgres
//! container. It reads which pod the operator named primary, makes its own Postgres match
//! (initdb, clone, rewind, start, promote, fence) and reports what it sees:
//!
//! ```text
//! primary record (API/file) --> Manager::step --> Postgres child (postgres -D)
//!                                    |                 ^ settings (conf.rs), roles (bootstrap.rs),
//!                                    |                 | slots (slots.rs), clone/rewind (replication.rs)
//!                                    v
//!                         Report --> /healthz /readyz /status /metrics (http.rs, metrics.rs)
//! ```
//!
//! The contract with the operator (config document, status document, identity file, environment
//! variables, pod names, the typed primary record, the role names) is `scaled_contract::instance`;
//! replication sizing (WAL senders, slots, how much WAL a slot may hold) is
//! `scaled_contract::replication`, the one rule both sides apply.

pub mod binaries;
pub mod bootstrap;
pub mod conf;
pub mod copy;
pub mod datadir;
pub mod db;
pub mod http;
pub mod manager;
pub mod metrics;
pub mod process;
pub mod record;
pub mod replication;
pub mod server;
pub mod settings;
pub mod slots;

use std::net::SocketAddr;

pub use manager::{Action, Manager};
pub use settings::Settings;

/// Errors that stop `run` before the control loop starts.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Postgres refuses to run as root, and so does this manager.
    #[error(
        "failed to start: running as root; Postgres refuses to, so run as its user (securityContext.runAsUser)"
    )]
    Root,
    /// The binaries were not found.
    #[error("failed to find the Postgres binaries")]
    Binaries(#[from] binaries::BinariesError),
    /// The primary record source could not be set up.
    #[error("failed to set up the primary record source")]
    Record(#[from] record::RecordError),
    /// The HTTP port could not be bound.
    #[error("failed to bind the status port {address}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the instance manager until it is stopped; returns the process exit code.
pub async fn run(settings: Settings) -> Result<i32, RunError> {
    if nix::unistd::geteuid().is_root() {
        return Err(RunError::Root);
    }
    // Before the reaper starts: discovery runs tools with std's blocking wait.
    let binaries =
        binaries::Binaries::discover(settings.config.bin_dir.as_deref().map(std::path::Path::new))?;
    tracing::info!(dir = %binaries.dir().display(), major = binaries.major(), "found the Postgres binaries");
    let source = record::PrimarySource::from_settings(
        &settings.source,
        &settings.namespace,
        &settings.config.scaled_app,
        settings.shard,
    )?;
    process::become_subreaper();
    tokio::spawn(process::reap_orphans_forever());
    let report = http::Report::new(&settings.pod, settings.shard);
    let address = SocketAddr::new(settings.http_address, settings.config.status_port);
    http::serve(address, report.clone())
        .await
        .map_err(|source| RunError::Bind { address, source })?;
    let manager = Manager::new(settings, binaries, source, report);
    Ok(manager.run().await)
}
