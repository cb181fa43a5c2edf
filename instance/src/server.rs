//! The Postgres server as this process's child: `postgres -D <dataDir>` (not `pg_ctl`, so its
//! exit reaches us directly), its output on our stdout/stderr, and the shutdown modes.
//!
//! Shutdown is by signal to the postmaster: SIGINT is Postgres's *fast* shutdown (sessions are
//! terminated and their open transactions rolled back, then a checkpoint), SIGQUIT the
//! *immediate* one (no checkpoint; crash recovery at the next start), used only when a fast
//! shutdown does not finish in time.

use std::{
    process::{ExitStatus, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::sync::watch;

use crate::{binaries::Binaries, conf::ServerMode, datadir::DataDir, process};

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// `postgres` could not be spawned.
    #[error("failed to start postgres on {data_dir}")]
    Spawn {
        /// The data directory.
        data_dir: String,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A signal could not be delivered.
    #[error("failed to send {signal} to postgres (pid {pid})")]
    Signal {
        /// Which signal.
        signal: &'static str,
        /// The postmaster's pid.
        pid: i32,
        /// Why.
        #[source]
        source: nix::Error,
    },
}

/// How a server ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Status(ExitStatus),
    /// Its status was lost (reaped elsewhere).
    Unknown,
}

impl Exit {
    /// Exit code 0.
    pub fn is_clean(self) -> bool {
        matches!(self, Exit::Status(status) if status.success())
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Status(status) => write!(formatter, "{status}"),
            Exit::Unknown => formatter.write_str("an unknown status"),
        }
    }
}

/// A running postmaster.
#[derive(Debug)]
pub struct Server {
    pid: i32,
    mode: ServerMode,
    exit: watch::Receiver<Option<Exit>>,
}

impl Server {
    /// Starts `postgres -D <dataDir>` in `mode` (the settings file must already say so).
    pub fn start(
        binaries: &Binaries,
        data_dir: &DataDir,
        mode: ServerMode,
    ) -> Result<Self, ServerError> {
        let mut command = process::command(&binaries.tool("postgres"));
        command
            .arg("-D")
            .arg(data_dir.path())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        let mut tracked = process::spawn(&mut command).map_err(|source| ServerError::Spawn {
            data_dir: data_dir.path().display().to_string(),
            source,
        })?;
        let pid = tracked.pid();
        let (sender, exit) = watch::channel(None);
        tokio::spawn(async move {
            let status = match tracked.wait().await {
                Ok(status) => Exit::Status(status),
                Err(_) => Exit::Unknown,
            };
            let _ = sender.send(Some(status));
        });
        tracing::info!(pid, ?mode, "started postgres");
        Ok(Server { pid, mode, exit })
    }

    /// The postmaster's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The mode it was started in (a promotion changes it).
    pub fn mode(&self) -> &ServerMode {
        &self.mode
    }

    /// Records a mode change that happened without a restart (promotion, new upstream).
    pub fn set_mode(&mut self, mode: ServerMode) {
        self.mode = mode;
    }

    /// How it ended, if it has.
    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Waits until it has ended.
    pub async fn wait_exit(&self) -> Exit {
        let mut exit = self.exit.clone();
        loop {
            if let Some(status) = *exit.borrow_and_update() {
                return status;
            }
            if exit.changed().await.is_err() {
                return self.exited().unwrap_or(Exit::Unknown);
            }
        }
    }

    /// Asks the postmaster to re-read its configuration files.
    pub fn reload(&self) -> Result<(), ServerError> {
        self.signal(Signal::SIGHUP, "SIGHUP")
    }

    /// Fast shutdown; after `patience`, an immediate one. Returns how it ended.
    pub async fn stop(&self, patience: Duration) -> Exit {
        if let Some(exit) = self.exited() {
            return exit;
        }
        if let Err(error) = self.signal(Signal::SIGINT, "SIGINT") {
            tracing::warn!(%error, "fast shutdown could not be requested");
        }
        match tokio::time::timeout(patience, self.wait_exit()).await {
            Ok(exit) => exit,
            Err(_) => {
                tracing::warn!(
                    pid = self.pid,
                    "fast shutdown did not finish in {patience:?}; stopping immediately"
                );
                if let Err(error) = self.signal(Signal::SIGQUIT, "SIGQUIT") {
                    tracing::warn!(%error, "immediate shutdown could not be requested");
                }
                match tokio::time::timeout(Duration::from_secs(10), self.wait_exit()).await {
                    Ok(exit) => exit,
                    Err(_) => {
                        let _ = self.signal(Signal::SIGKILL, "SIGKILL");
                        self.wait_exit().await
                    }
                }
            }
        }
    }

    fn signal(&self, signal: Signal, name: &'static str) -> Result<(), ServerError> {
        kill(Pid::from_raw(self.pid), signal).map_err(|source| ServerError::Signal {
            signal: name,
            pid: self.pid,
            source,
        })
    }
}
