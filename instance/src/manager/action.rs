//! What one step did ([`Action`]) and why it failed ([`ManagerError`]).

// Only the doc link on `ManagerError::reason` names it; the code never does.
#[cfg(doc)]
use scaled_contract::instance::InstanceProblem;

use crate::{
    bootstrap::BootstrapError,
    datadir::DataDirError,
    db::DbError,
    replication::ReplicationError,
    server::{Exit, ServerError},
    slots,
};

/// How long `pg_promote` may wait for the promotion to finish.
pub(super) const PROMOTE_WAIT_SECONDS: i32 = 60;

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
