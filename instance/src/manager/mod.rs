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
    INSTANCE_SCHEMA_VERSION, InstanceProblem, InstanceRole, InstanceStatus, REASON_RECLONED,
    REASON_UNSUPPORTED_CONFIG, SETTINGS_FILE, parse_lsn,
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    binaries::Binaries,
    bootstrap::{self, BootstrapError},
    conf::{self, ServerMode, SettingsInputs, Upstream},
    datadir::{self, DataDir, DataDirError, DataState},
    db::{Connector, DbError},
    http::Report,
    record::{PrimarySource, Record},
    replication::{self, Progress, ReplicationError, Source},
    server::{Exit, Server, ServerError},
    settings::Settings,
    slots,
};

/// How long a fast shutdown may take before it becomes an immediate one.
pub const STOP_PATIENCE: Duration = Duration::from_secs(60);
/// How often a primary reconciles its replication slots.
pub const SLOT_INTERVAL: Duration = Duration::from_secs(3);
/// How long `pg_promote` may wait for the promotion to finish.
const PROMOTE_WAIT_SECONDS: i32 = 60;

/// What one step did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to change; the text says what the instance waits for.
    Waiting(String),
    /// Running as it should.
    Steady,
    /// The data directory is refused; the text says why.
    Refused(String),
    /// A new cluster was initialised (not started yet).
    Initialised,
    /// The primary was cloned into the data directory.
    Cloned {
        /// The primary's pod.
        primary: String,
    },
    /// A former primary's data was rewound to follow the primary.
    Rewound {
        /// The primary's pod.
        primary: String,
    },
    /// Postgres was started as a primary.
    StartedPrimary,
    /// Postgres was started as a standby.
    StartedStandby {
        /// The pod it streams from (`None`: it is about to be promoted).
        primary: Option<String>,
    },
    /// Roles and the database were brought up to date.
    RolesReady,
    /// Replication slots were created or dropped.
    SlotsChanged(slots::SlotPlan),
    /// The standby was promoted.
    Promoted {
        /// Its new timeline.
        timeline: Option<u32>,
    },
    /// The standby now follows another primary.
    Retargeted {
        /// The new primary's pod.
        primary: String,
    },
    /// The primary stopped accepting writes.
    Fenced {
        /// Why.
        reason: String,
    },
    /// The data was discarded to clone the primary again.
    Discarded {
        /// Why.
        reason: String,
    },
}

impl Action {
    /// Whether the step changed something (then the next step follows without a pause).
    pub fn changed_something(&self) -> bool {
        !matches!(
            self,
            Action::Waiting(_) | Action::Steady | Action::Refused(_)
        )
    }
}

/// Errors of one step. All but [`ManagerError::PostgresExited`] are retried on the next step.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// Postgres exited without being asked to.
    #[error("postgres exited unexpectedly with {0}")]
    PostgresExited(Exit),
    /// The data directory could not be read or changed.
    #[error("failed to handle the data directory")]
    DataDir(#[from] DataDirError),
    /// initdb or the role set-up failed.
    #[error("failed to bootstrap the primary")]
    Bootstrap(#[from] BootstrapError),
    /// A clone or rewind failed.
    #[error("failed to replicate")]
    Replication(#[from] ReplicationError),
    /// A query failed.
    #[error("failed to talk to postgres")]
    Db(#[from] DbError),
    /// Postgres could not be started or signalled.
    #[error("failed to control postgres")]
    Server(#[from] ServerError),
    /// `pg_promote` returned false.
    #[error(
        "failed to promote this standby: pg_promote did not finish within {PROMOTE_WAIT_SECONDS}s"
    )]
    Promote,
}

impl ManagerError {
    /// A CamelCase category for [`InstanceProblem::reason`].
    pub fn reason(&self) -> &'static str {
        match self {
            ManagerError::PostgresExited(_) => "PostgresExited",
            ManagerError::DataDir(_) => "DataDirectoryError",
            ManagerError::Bootstrap(_) => "BootstrapFailed",
            ManagerError::Replication(ReplicationError::Rewind { .. }) => "RewindFailed",
            ManagerError::Replication(_) => "CloneFailed",
            ManagerError::Db(_) => "QueryFailed",
            ManagerError::Server(_) => "ServerControlFailed",
            ManagerError::Promote => "PromoteFailed",
        }
    }
}

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

/// How long a named standby waits for the old primary to stop streaming before promoting.
const LAST_WAL_PATIENCE: Duration = Duration::from_secs(15);

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

    async fn as_primary(&mut self, record: Record) -> Result<Action, ManagerError> {
        match record {
            Record::Named { pod, .. } if pod == self.settings.pod => {}
            Record::Named { pod: other, .. } => {
                return self
                    .fence(format!("the primary record names {other}, not this pod"))
                    .await;
            }
            Record::NotChosen | Record::Unknown(_) | Record::Unconfirmed(_) => {
                let why = match &record {
                    Record::Unknown(why) | Record::Unconfirmed(why) => why.clone(),
                    _ => "the record names no primary".to_string(),
                };
                let limit =
                    Duration::from_secs(u64::from(self.settings.config.fence_after_seconds));
                let unconfirmed = self
                    .last_confirmed
                    .map_or(Duration::MAX, |confirmed| confirmed.elapsed());
                if unconfirmed >= limit {
                    return self
                        .fence(format!(
                            "the primary record has not confirmed this pod for \
                             fenceAfterSeconds ({}s): {why}",
                            limit.as_secs()
                        ))
                        .await;
                }
                return Ok(Action::Waiting(format!(
                    "cannot confirm the primary record ({why}); fencing in {}s",
                    (limit - unconfirmed).as_secs()
                )));
            }
        }
        if !self.observed.accepting {
            return Ok(Action::Waiting(
                "postgres is starting as primary".to_string(),
            ));
        }
        if !self.roles_ready {
            bootstrap::ensure_roles_and_database(
                &mut self.local,
                &self.settings.config,
                &self.settings.passwords,
            )
            .await?;
            self.roles_ready = true;
            return Ok(Action::RolesReady);
        }
        if Instant::now() >= self.next_slot_pass {
            self.next_slot_pass = Instant::now() + SLOT_INTERVAL;
            let (stateful_set, ordinal) = self.settings.stateful_set();
            let desired =
                slots::desired_slots(stateful_set, ordinal, self.settings.config.instances);
            let existing = slots::existing(&mut self.local).await?;
            let plan = slots::plan(stateful_set, &desired, &existing);
            if !plan.is_empty() {
                slots::apply(&mut self.local, &plan).await?;
                return Ok(Action::SlotsChanged(plan));
            }
        }
        Ok(Action::Steady)
    }

    async fn as_standby(
        &mut self,
        record: Record,
        upstream: Option<Upstream>,
    ) -> Result<Action, ManagerError> {
        let primary = match record {
            Record::Named { pod, .. } if pod == self.settings.pod => return self.promote().await,
            Record::Named { pod, .. } => pod,
            Record::NotChosen | Record::Unknown(_) | Record::Unconfirmed(_) => {
                return Ok(Action::Waiting(match &upstream {
                    Some(upstream) => format!(
                        "the primary record names nobody or cannot be read; still following {}",
                        upstream.pod
                    ),
                    None => "the primary record names nobody or cannot be read".to_string(),
                }));
            }
        };
        if upstream.as_ref().map(|upstream| upstream.pod.as_str()) != Some(primary.as_str()) {
            return self.retarget(primary);
        }
        if Instant::now() >= self.next_slot_pass && self.observed.accepting {
            // A rewound former primary still has its old slots; they would pin WAL forever.
            self.next_slot_pass = Instant::now() + SLOT_INTERVAL;
            let (stateful_set, _) = self.settings.stateful_set();
            let existing = slots::existing(&mut self.local).await?;
            let plan = slots::plan(stateful_set, &Default::default(), &existing);
            if !plan.is_empty() {
                slots::apply(&mut self.local, &plan).await?;
                return Ok(Action::SlotsChanged(plan));
            }
        }
        self.check_following(&primary).await
    }

    async fn check_following(&mut self, primary: &str) -> Result<Action, ManagerError> {
        let now = Instant::now();
        self.progress.observe(
            now,
            self.observed.receiver_streaming,
            self.observed.replayed_lsn,
        );
        let stalled = self.progress.stalled_for(now);
        let limit = Duration::from_secs(u64::from(self.settings.config.reclone_after_seconds));
        if stalled < limit {
            return Ok(Action::Steady);
        }
        let own_pod = self.settings.pod.clone();
        let view = match replication::ask_primary(self.peer(primary), &own_pod).await {
            Ok(view) => view,
            Err(error) => {
                return Ok(Action::Waiting(format!(
                    "not streaming for {}s, but primary {primary} does not answer either: {error}",
                    stalled.as_secs()
                )));
            }
        };
        let own_timeline = match self.observed.timeline {
            Some(timeline) => Some(timeline),
            None => self
                .data
                .control_data(&self.binaries)
                .await
                .ok()
                .map(|control| control.timeline),
        };
        match replication::cannot_follow(primary, &own_pod, own_timeline, stalled, &view) {
            None => {
                if view.streaming_to_me {
                    self.progress = Progress::new(now);
                }
                Ok(Action::Waiting(format!(
                    "not streaming for {}s; primary {primary} is not a primary yet",
                    stalled.as_secs()
                )))
            }
            Some(reason) => {
                let lost = view
                    .slot
                    .as_ref()
                    .and_then(|slot| slot.wal_status.as_deref())
                    == Some("lost");
                let action = self.discard_for_reclone(reason).await?;
                if lost
                    && let Err(error) =
                        replication::drop_lost_slot(self.peer(primary), &own_pod).await
                {
                    tracing::warn!(%error, "could not drop the invalidated slot; the next clone waits for it");
                }
                Ok(action)
            }
        }
    }

    async fn discard_for_reclone(&mut self, reason: String) -> Result<Action, ManagerError> {
        tracing::warn!(%reason, "this replica cannot follow; discarding its data to clone again");
        // Forgotten only once stopped: a SIGTERM meanwhile finds it and waits for it.
        if let Some(server) = &self.server {
            server.stop(STOP_PATIENCE).await;
        }
        self.server = None;
        self.local.reset();
        self.observed = LocalView::default();
        self.role = InstanceRole::Pending;
        self.data.discard()?;
        self.reclones += 1;
        self.last_reclone_reason = Some(reason.clone());
        self.problem = Some(InstanceProblem {
            reason: REASON_RECLONED.to_string(),
            message: reason.clone(),
        });
        Ok(Action::Discarded { reason })
    }

    fn retarget(&mut self, primary: String) -> Result<Action, ManagerError> {
        let mode = ServerMode::Standby {
            primary: Some(self.upstream(&primary)),
        };
        self.write_settings(&mode)?;
        let server = self
            .server
            .as_mut()
            .expect("retarget is only called with a running standby");
        // primary_conninfo and primary_slot_name are reloadable since Postgres 13.
        server.reload()?;
        server.set_mode(mode);
        self.progress = Progress::new(Instant::now());
        self.role = InstanceRole::Replica;
        Ok(Action::Retargeted { primary })
    }

    async fn promote(&mut self) -> Result<Action, ManagerError> {
        if !self.observed.accepting {
            return Ok(Action::Waiting(
                "named primary; waiting for the standby to accept connections to promote it"
                    .to_string(),
            ));
        }
        // In a planned switchover the old primary is shutting down and sends its last WAL on
        // the way out; promoting before the WAL receiver has it would leave those commits behind
        // on the old timeline. After a crash the receiver has already stopped, so this costs a
        // failover nothing. A primary that keeps streaming for long is not letting go (it may
        // not see the record): promote anyway, it fences itself.
        let named_since = *self.named_since.get_or_insert_with(Instant::now);
        if self.observed.receiver_streaming && named_since.elapsed() < LAST_WAL_PATIENCE {
            return Ok(Action::Waiting(
                "named primary; waiting for the old primary's last WAL before promoting".into(),
            ));
        }
        self.named_since = None;
        self.role = InstanceRole::Promoting;
        self.publish_role();
        tracing::info!("the primary record names this standby; promoting");
        let rows = self
            .local
            .query_within(
                "promote",
                "SELECT pg_promote(true, $1)",
                &[&PROMOTE_WAIT_SECONDS],
                Duration::from_secs(PROMOTE_WAIT_SECONDS as u64 + 10),
            )
            .await?;
        if !rows.first().is_some_and(|row| row.get::<_, bool>(0)) {
            return Err(ManagerError::Promote);
        }
        // Promotion only requests the end-of-recovery checkpoint; until it completes,
        // pg_control still shows the old timeline, and a pg_rewind against this server would
        // wrongly find "no rewind required". So wait for one before saying we are primary.
        self.local
            .query_within(
                "checkpoint after promotion",
                "CHECKPOINT",
                &[],
                Duration::from_secs(300),
            )
            .await?;
        self.write_settings(&ServerMode::Primary)?;
        let server = self
            .server
            .as_mut()
            .expect("promote is only called with a running standby");
        server.reload()?;
        server.set_mode(ServerMode::Primary);
        self.role = InstanceRole::Primary;
        self.fenced = false;
        self.roles_ready = false;
        self.next_slot_pass = Instant::now();
        self.refresh().await;
        Ok(Action::Promoted {
            timeline: self.observed.timeline,
        })
    }

    async fn fence(&mut self, reason: String) -> Result<Action, ManagerError> {
        tracing::warn!(%reason, "fencing: fast shutdown of the primary");
        self.role = InstanceRole::Fenced;
        self.publish_role();
        if let Some(server) = &self.server {
            let exit = server.stop(STOP_PATIENCE).await;
            if !exit.is_clean() {
                tracing::warn!(%exit, "the fenced postgres did not stop cleanly");
            }
        }
        self.server = None;
        self.local.reset();
        self.observed = LocalView::default();
        self.fenced = true;
        self.roles_ready = false;
        self.problem = Some(InstanceProblem {
            reason: "Fenced".to_string(),
            message: reason.clone(),
        });
        Ok(Action::Fenced { reason })
    }

    async fn while_stopped(&mut self, record: Record) -> Result<Action, ManagerError> {
        let state = self.data.inspect(self.binaries.major())?;
        if let DataState::Refused(problem) = state {
            self.role = InstanceRole::Refused;
            let message = problem.message.clone();
            self.problem = Some(problem);
            return Ok(Action::Refused(message));
        }
        if self.role == InstanceRole::Refused {
            // The directory was fixed by hand; whatever the problem was is gone.
            self.problem = None;
        }
        let own = self.settings.pod.clone();
        let primary = match record {
            Record::Named { pod, .. } => pod,
            Record::NotChosen | Record::Unknown(_) | Record::Unconfirmed(_) => {
                self.role = if self.fenced {
                    InstanceRole::Fenced
                } else {
                    InstanceRole::Pending
                };
                return Ok(Action::Waiting(match record {
                    Record::Unknown(why) => format!("cannot read the primary record: {why}"),
                    Record::Unconfirmed(why) => why,
                    _ => "no primary is named yet".to_string(),
                }));
            }
        };
        if primary == own {
            return match state {
                DataState::Empty => {
                    self.role = InstanceRole::Pending;
                    self.data.remove_scratch(datadir::Scratch::Clone)?;
                    bootstrap::initdb(
                        &self.binaries,
                        &self.data,
                        &self.settings.passwords.superuser,
                    )
                    .await?;
                    Ok(Action::Initialised)
                }
                // Promote rather than start it read-write: promotion switches to a new
                // timeline, which pg_rewind needs to tell the histories apart.
                DataState::Ours { standby: true } => {
                    self.start(ServerMode::Standby { primary: None })
                }
                DataState::Ours { standby: false } => self.start(ServerMode::Primary),
                DataState::Refused(_) => unreachable!("handled above"),
            };
        }
        match state {
            DataState::Empty => self.clone_from(&primary).await,
            DataState::Ours { standby: true } => self.start(ServerMode::Standby {
                primary: Some(self.upstream(&primary)),
            }),
            DataState::Ours { standby: false } => self.rewind_from(&primary).await,
            DataState::Refused(_) => unreachable!("handled above"),
        }
    }

    async fn clone_from(&mut self, primary: &str) -> Result<Action, ManagerError> {
        self.role = InstanceRole::Pending;
        let own_pod = self.settings.pod.clone();
        let slot = scaled_contract::instance::slot_name(&own_pod);
        let view = match replication::ask_primary(self.peer(primary), &own_pod).await {
            Ok(view) => view,
            Err(error) => {
                return Ok(Action::Waiting(format!(
                    "waiting for primary {primary} to answer before cloning it: {error}"
                )));
            }
        };
        if view.in_recovery {
            return Ok(Action::Waiting(format!(
                "waiting for {primary} to finish becoming primary before cloning it"
            )));
        }
        match view.slot {
            None => {
                return Ok(Action::Waiting(format!(
                    "waiting for primary {primary} to create replication slot {slot}"
                )));
            }
            Some(state) if state.wal_status.as_deref() == Some("lost") => {
                replication::drop_lost_slot(self.peer(primary), &own_pod).await?;
                return Ok(Action::Waiting(format!(
                    "dropped the invalidated slot {slot} on {primary}; waiting for a fresh one"
                )));
            }
            Some(_) => {}
        }
        self.role = InstanceRole::Cloning;
        self.publish_role();
        self.data.remove_scratch(datadir::Scratch::Initdb)?;
        self.data.remove_scratch(datadir::Scratch::Discard)?;
        let address = self.settings.peer_address(primary);
        let result = replication::clone(
            &self.binaries,
            &self.data,
            &Source {
                pod: primary,
                address: &address,
                user: &self.settings.config.replication_user,
                password: &self.settings.passwords.replication,
            },
            &own_pod,
            self.settings.config.clone_max_rate_kib_per_second,
        )
        .await;
        self.role = InstanceRole::Pending;
        result?;
        Ok(Action::Cloned {
            primary: primary.to_string(),
        })
    }

    async fn rewind_from(&mut self, primary: &str) -> Result<Action, ManagerError> {
        self.role = if self.fenced {
            InstanceRole::Fenced
        } else {
            InstanceRole::Pending
        };
        let own_pod = self.settings.pod.clone();
        match replication::ask_primary(self.peer(primary), &own_pod).await {
            Ok(view) if !view.in_recovery => {}
            Ok(_) => {
                return Ok(Action::Waiting(format!(
                    "waiting for {primary} to finish becoming primary before rewinding from it"
                )));
            }
            Err(error) => {
                return Ok(Action::Waiting(format!(
                    "this data was a primary; waiting for primary {primary} to answer to rewind \
                     from it: {error}"
                )));
            }
        }
        tracing::info!(%primary, "this data was a primary and another pod is named; rewinding");
        let address = self.settings.peer_address(primary);
        let result = replication::rewind(
            &self.binaries,
            &self.data,
            &Source {
                pod: primary,
                address: &address,
                user: &self.settings.config.replication_user,
                password: &self.settings.passwords.replication,
            },
            &own_pod,
        )
        .await;
        match result {
            Ok(()) => {
                self.fenced = false;
                Ok(Action::Rewound {
                    primary: primary.to_string(),
                })
            }
            Err(error) => {
                self.discard_for_reclone(format!(
                    "pg_rewind from {primary} failed, so the data is cloned again: {}",
                    error_chain(&error)
                ))
                .await
            }
        }
    }

    fn start(&mut self, mode: ServerMode) -> Result<Action, ManagerError> {
        self.write_settings(&mode)?;
        self.data
            .set_standby(matches!(mode, ServerMode::Standby { .. }))?;
        let server = Server::start(&self.binaries, &self.data, mode.clone())?;
        self.server = Some(server);
        self.local.reset();
        self.observed = LocalView::default();
        self.roles_ready = false;
        self.next_slot_pass = Instant::now();
        self.progress = Progress::new(Instant::now());
        Ok(match mode {
            ServerMode::Primary => {
                self.role = InstanceRole::Primary;
                self.fenced = false;
                Action::StartedPrimary
            }
            ServerMode::Standby { primary } => {
                self.role = InstanceRole::Replica;
                Action::StartedStandby {
                    primary: primary.map(|upstream| upstream.pod),
                }
            }
        })
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

    fn publish_role(&self) {
        let mut status = self.report.status();
        status.role = self.role;
        status.ready = false;
        self.report.publish(status, self.observed.accepting);
    }

    /// Observes the server (or the data directory) and publishes the status document.
    pub async fn refresh(&mut self) {
        let mut status = InstanceStatus {
            pod: self.settings.pod.clone(),
            shard: self.settings.shard,
            role: self.role,
            ready: false,
            server_major_version: Some(self.binaries.major()),
            data_major_version: self.data.data_major(),
            system_identifier: None,
            timeline: None,
            current_lsn: None,
            received_lsn: None,
            replayed_lsn: None,
            lag_bytes: None,
            lag_seconds: None,
            primary_pod: None,
            streaming_replicas: Vec::new(),
            problem: None,
            reclones: self.reclones,
            last_reclone_reason: self.last_reclone_reason.clone(),
        };
        let mode = self.server.as_ref().map(|server| server.mode().clone());
        match &mode {
            Some(mode) => {
                self.observed = self.observe_local().await;
                let view = &self.observed;
                status.system_identifier = view.system_identifier.clone();
                status.timeline = view.timeline;
                match mode {
                    ServerMode::Primary => {
                        // Ready only once the app can log in: roles and database exist.
                        status.ready = view.accepting
                            && !view.in_recovery
                            && self.role == InstanceRole::Primary
                            && self.roles_ready;
                        status.current_lsn = view.current_lsn;
                        status.primary_pod = Some(self.settings.pod.clone());
                        status.streaming_replicas = view.streaming_replicas.clone();
                    }
                    ServerMode::Standby { primary } => {
                        status.ready = view.accepting
                            && view.in_recovery
                            && self.role == InstanceRole::Replica;
                        status.received_lsn = view.received_lsn;
                        status.replayed_lsn = view.replayed_lsn;
                        status.lag_seconds = view.lag_seconds;
                        status.primary_pod = primary.as_ref().map(|upstream| upstream.pod.clone());
                        if let Some(upstream) = primary.clone() {
                            self.primary_lsn = self.primary_position(&upstream.pod).await;
                            status.lag_bytes = match (self.primary_lsn, self.observed.replayed_lsn)
                            {
                                (Some(primary), Some(replayed)) => {
                                    Some(primary.saturating_sub(replayed))
                                }
                                _ => None,
                            };
                        }
                    }
                }
                if status.ready {
                    // Working in its role again: what went wrong before is history (a re-clone
                    // stays visible in lastRecloneReason).
                    self.problem = None;
                }
            }
            None => {
                self.observed = LocalView::default();
                // pg_controldata only reads pg_control, so it is safe on a refused directory
                // too, as long as the version matches (another version's layout differs).
                if status.data_major_version == Some(self.binaries.major())
                    && let Ok(control) = self.data.control_data(&self.binaries).await
                {
                    status.system_identifier = Some(control.system_identifier);
                    status.timeline = Some(control.timeline);
                    status.current_lsn = Some(control.checkpoint_lsn);
                }
            }
        }
        status.problem = self.problem.clone();
        let up = self.observed.accepting;
        self.report.publish(status, up);
    }

    async fn primary_position(&mut self, pod: &str) -> Option<u64> {
        let rows = self
            .peer(pod)
            .query(
                "read the primary's position",
                "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
                 ELSE pg_current_wal_lsn()::text END",
                &[],
            )
            .await
            .ok()?;
        rows.first()
            .and_then(|row| row.get::<_, Option<String>>(0))
            .and_then(|text| parse_lsn(&text))
    }

    async fn observe_local(&mut self) -> LocalView {
        let rows = self
            .local
            .query(
                "observe the server",
                "SELECT pg_is_in_recovery(), \
                   CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
                   pg_last_wal_receive_lsn()::text, \
                   pg_last_wal_replay_lsn()::text, \
                   CASE WHEN NOT pg_is_in_recovery() THEN NULL \
                        WHEN pg_last_wal_receive_lsn() IS NOT NULL \
                             AND pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0::float8 \
                        ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END, \
                   CASE WHEN pg_is_in_recovery() \
                        THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), \
                                      (SELECT timeline_id FROM pg_control_checkpoint())) \
                        ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
                   coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false), \
                   (SELECT system_identifier::text FROM pg_control_system()), \
                   ARRAY(SELECT application_name::text FROM pg_stat_replication \
                         WHERE state = 'streaming' ORDER BY 1)",
                &[],
            )
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                tracing::debug!(%error, "the local server does not answer");
                return LocalView::default();
            }
        };
        let Some(row) = rows.first() else {
            return LocalView::default();
        };
        let lsn = |index: usize| {
            row.get::<_, Option<String>>(index)
                .and_then(|text| parse_lsn(&text))
        };
        LocalView {
            accepting: true,
            in_recovery: row.get(0),
            current_lsn: lsn(1),
            received_lsn: lsn(2),
            replayed_lsn: lsn(3),
            lag_seconds: row.get::<_, Option<f64>>(4).map(|seconds| seconds.max(0.0)),
            timeline: row
                .get::<_, Option<i32>>(5)
                .and_then(|timeline| u32::try_from(timeline).ok()),
            receiver_streaming: row.get(6),
            system_identifier: row.get(7),
            streaming_replicas: row.get(8),
        }
    }
}
