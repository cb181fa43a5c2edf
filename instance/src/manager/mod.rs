//! The control loop: one [`Manager::step`] reads the primary record, compares it with what runs
//! and what the data directory holds, does at most one thing about the difference, and returns
//! what it did ([`Action`]). [`Manager::run`] repeats it, publishes the status after every step,
//! and turns SIGTERM/SIGINT into a fast shutdown.
//!
//! The rules, in the order a step applies them:
//! - Postgres exited without being asked: fatal; the container restarts.
//! - A primary that the record no longer names is fenced at once (fast shutdown, which
//!   terminates sessions and rolls back open transactions); one the record has not confirmed for
//!   `fenceAfterSeconds` is fenced too. A fenced instance starts again only as the record says.
//! - A standby the record names is promoted; one whose primary changed follows the new one
//!   (reload); one that cannot follow is cloned again.
//! - Not running: a refused data directory is reported and never touched; otherwise the record
//!   decides: named -> start as primary (initdb first when empty); another pod named -> clone it
//!   (empty), start as its standby (standby data), or rewind from it (former primary data);
//!   nobody named or unreadable -> wait, reporting what the data directory holds.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use scaled_contract::error_chain;
use scaled_contract::instance::{
    INSTANCE_SCHEMA_VERSION, InstanceProblem, InstanceRole, REASON_UNSUPPORTED_CONFIG,
    SETTINGS_FILE,
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    binaries::Binaries,
    conf::{self, ServerMode, SettingsInputs, Upstream},
    datadir::{self, DataDir, DataDirError},
    db::Connector,
    http::Report,
    record::{PrimarySource, Record},
    replication::{self, Progress},
    server::Server,
    settings::Settings,
};

mod action;
mod observe;
mod primary;
mod standby;
mod stopped;

pub use action::{Action, ManagerError};

/// How long a fast shutdown may take before it becomes an immediate one.
pub const STOP_PATIENCE: Duration = Duration::from_secs(60);
/// How often a primary reconciles its replication slots.
pub const SLOT_INTERVAL: Duration = Duration::from_secs(3);

/// What the local server said at the last refresh.
#[derive(Clone, Debug, Default)]
struct LocalView {
    accepting: bool,
    in_recovery: bool,
    current_lsn: Option<u64>,
    received_lsn: Option<u64>,
    replayed_lsn: Option<u64>,
    lag_seconds: Option<f64>,
    timeline: Option<u32>,
    receiver_streaming: bool,
    system_identifier: Option<String>,
    streaming_replicas: Vec<String>,
}

/// The instance manager's state between steps.
pub struct Manager {
    settings: Settings,
    binaries: Binaries,
    data: DataDir,
    source: PrimarySource,
    report: Arc<Report>,
    local: Connector,
    peer: Option<(String, Connector)>,
    server: Option<Server>,
    role: InstanceRole,
    fenced: bool,
    last_confirmed: Option<Instant>,
    roles_ready: bool,
    next_slot_pass: Instant,
    progress: Progress,
    reclones: u32,
    last_reclone_reason: Option<String>,
    problem: Option<InstanceProblem>,
    config_problem: Option<InstanceProblem>,
    volume_bytes: Option<u64>,
    observed: LocalView,
    primary_lsn: Option<u64>,
    /// When the record first named this standby, while it waits to promote.
    named_since: Option<Instant>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Manager")
            .field("pod", &self.settings.pod)
            .field("role", &self.role)
            .finish()
    }
}

impl Manager {
    /// A manager; nothing runs until [`Manager::step`].
    pub fn new(
        settings: Settings,
        binaries: Binaries,
        source: PrimarySource,
        report: Arc<Report>,
    ) -> Self {
        let data = DataDir::new(settings.data_dir().to_path_buf(), settings.identity());
        let local = Connector::local(
            settings.socket_dir.clone(),
            settings.config.postgres_port,
            &settings.passwords.superuser,
        );
        let config_problem =
            (settings.config.schema_version != INSTANCE_SCHEMA_VERSION).then(|| InstanceProblem {
                reason: REASON_UNSUPPORTED_CONFIG.to_string(),
                message: format!(
                    "the instance config has schemaVersion {}; this scaled-instance understands \
                     {INSTANCE_SCHEMA_VERSION}: use a matching operator and instance manager",
                    settings.config.schema_version
                ),
            });
        let volume_bytes = settings
            .data_dir()
            .parent()
            .and_then(|volume| nix::sys::statvfs::statvfs(volume).ok())
            .map(|stats| stats.blocks() * stats.fragment_size());
        let now = Instant::now();
        Manager {
            settings,
            binaries,
            data,
            source,
            report,
            local,
            peer: None,
            server: None,
            role: InstanceRole::Pending,
            fenced: false,
            last_confirmed: None,
            named_since: None,
            roles_ready: false,
            next_slot_pass: now,
            progress: Progress::new(now),
            reclones: 0,
            last_reclone_reason: None,
            problem: None,
            config_problem,
            volume_bytes,
            observed: LocalView::default(),
            primary_lsn: None,
        }
    }

    /// The role right now.
    pub fn role(&self) -> InstanceRole {
        self.role
    }

    /// Repeats [`Manager::step`] until SIGTERM/SIGINT (fast shutdown; exit code 0 when Postgres
    /// stopped cleanly) or until Postgres exits on its own (exit code 1).
    pub async fn run(mut self) -> i32 {
        let (mut terminate, mut interrupt) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!(%error, "failed to install signal handlers");
                return 1;
            }
        };
        let mut last_wait = String::new();
        loop {
            let result = tokio::select! {
                biased;
                _ = terminate.recv() => return self.shutdown("SIGTERM").await,
                _ = interrupt.recv() => return self.shutdown("SIGINT").await,
                result = self.step() => result,
            };
            let changed = match result {
                Ok(action) => {
                    match &action {
                        Action::Waiting(reason) | Action::Refused(reason) => {
                            if *reason != last_wait {
                                tracing::info!(role = ?self.role, "{reason}");
                                last_wait = reason.clone();
                            }
                        }
                        Action::Steady => {}
                        other => {
                            tracing::info!(role = ?self.role, action = ?other, "step");
                            last_wait.clear();
                        }
                    }
                    action.changed_something()
                }
                Err(ManagerError::PostgresExited(exit)) => {
                    tracing::error!(%exit, "postgres exited unexpectedly; exiting so the container restarts");
                    self.server = None;
                    self.report.set_unhealthy();
                    self.refresh().await;
                    return 1;
                }
                Err(error) => {
                    let message = error_chain(&error);
                    tracing::warn!(role = ?self.role, "{message}");
                    self.problem = Some(InstanceProblem {
                        reason: error.reason().to_string(),
                        message,
                    });
                    last_wait.clear();
                    false
                }
            };
            self.refresh().await;
            if changed {
                continue;
            }
            let tick = self.settings.tick;
            let server_exit = async {
                match &self.server {
                    Some(server) => {
                        server.wait_exit().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                biased;
                _ = terminate.recv() => return self.shutdown("SIGTERM").await,
                _ = interrupt.recv() => return self.shutdown("SIGINT").await,
                _ = server_exit => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    async fn shutdown(&mut self, signal: &str) -> i32 {
        let Some(server) = self.server.take() else {
            tracing::info!("received {signal}; postgres is not running; exiting");
            return 0;
        };
        tracing::info!(
            "received {signal}; stopping postgres with a fast shutdown (sessions are terminated)"
        );
        let exit = server.stop(STOP_PATIENCE).await;
        if exit.is_clean() {
            tracing::info!("postgres stopped cleanly");
            0
        } else {
            tracing::warn!(%exit, "postgres did not stop cleanly");
            1
        }
    }

    /// One pass: read the record, act on the difference, return what was done.
    pub async fn step(&mut self) -> Result<Action, ManagerError> {
        if let Some(exit) = self.server.as_ref().and_then(Server::exited) {
            return Err(ManagerError::PostgresExited(exit));
        }
        if let Some(problem) = &self.config_problem {
            self.role = InstanceRole::Refused;
            self.problem = Some(problem.clone());
            return Ok(Action::Refused(problem.message.clone()));
        }
        let record = self
            .source
            .read()
            .await
            .for_pod(&self.settings.pod, self.settings.pod_uid.as_deref());
        if matches!(&record, Record::Named { pod, .. } if *pod == self.settings.pod) {
            self.last_confirmed = Some(Instant::now());
        }
        match self.server.as_ref().map(|server| server.mode().clone()) {
            Some(ServerMode::Primary) => self.as_primary(record).await,
            Some(ServerMode::Standby { primary }) => self.as_standby(record, primary).await,
            None => self.while_stopped(record).await,
        }
    }

    fn upstream(&self, pod: &str) -> Upstream {
        Upstream {
            pod: pod.to_string(),
            address: self.settings.peer_address(pod),
        }
    }

    fn peer(&mut self, pod: &str) -> &mut Connector {
        if self.peer.as_ref().map(|(name, _)| name.as_str()) != Some(pod) {
            let connector = Connector::peer(
                pod,
                &self.settings.peer_address(pod),
                &self.settings.config.replication_user,
                &self.settings.passwords.replication,
            );
            self.peer = Some((pod.to_string(), connector));
        }
        &mut self
            .peer
            .as_mut()
            .expect("the peer connector was set just above")
            .1
    }

    /// Writes `scaled.conf`, `pg_hba.conf` and the replication passfile for `mode`.
    fn write_settings(&self, mode: &ServerMode) -> Result<(), ManagerError> {
        let socket_dir = &self.settings.socket_dir;
        std::fs::create_dir_all(socket_dir).map_err(|source| DataDirError::Io {
            action: "create the socket directory",
            path: socket_dir.clone(),
            source,
        })?;
        let passfile = replication::passfile_path(socket_dir);
        let (text, ignored) = conf::render_settings(&SettingsInputs {
            config: &self.settings.config,
            pod: &self.settings.pod,
            mode,
            socket_dir,
            listen_addresses: &self.settings.listen_addresses,
            data_dir: self.data.path(),
            passfile: &passfile,
            volume_bytes: self.volume_bytes,
        });
        if !ignored.is_empty() {
            tracing::warn!(
                ?ignored,
                "parameters the instance manager owns were ignored"
            );
        }
        datadir::write_file(
            &passfile,
            conf::passfile_line(
                &self.settings.config.replication_user,
                self.settings.passwords.replication.expose(),
            )
            .as_bytes(),
            0o600,
        )?;
        datadir::write_file(
            &self.data.path().join(SETTINGS_FILE),
            text.as_bytes(),
            0o600,
        )?;
        datadir::write_file(
            &self.data.path().join("pg_hba.conf"),
            conf::render_hba(&self.settings.config).as_bytes(),
            0o600,
        )?;
        datadir::ensure_settings_included(self.data.path())?;
        Ok(())
    }
}
