//! Postgres across shards: pools per shard primary and replica, routing of reads and writes, the
//! repositories, and migrations. No HTTP types in here; callers map [`DbError`] to responses.

mod cluster;
pub mod ids;
pub mod orders;
pub mod outbox;
pub mod users;
pub mod worker_effects;

use std::sync::Arc;

pub use cluster::{Cluster, Shard, WriteToken, watch_replicas};

/// The embedded migrations (`app/migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Failures talking to Postgres. Domain outcomes (email taken, user missing) are not errors;
/// repositories return them as values.
#[derive(Clone, Debug, thiserror::Error)]
pub enum DbError {
    /// The server could not be reached in time (down, pool exhausted, overloaded, read-only).
    #[error("failed to {operation}: shard {shard} {role} is unavailable")]
    Unavailable {
        /// What was being done.
        operation: &'static str,
        /// Shard index.
        shard: u32,
        /// `primary` or `replica`.
        role: &'static str,
        /// The driver's error.
        #[source]
        source: Arc<sqlx::Error>,
    },
    /// The statement failed for another reason (a bug, a schema mismatch).
    #[error("failed to {operation} on shard {shard}")]
    Query {
        /// What was being done.
        operation: &'static str,
        /// Shard index.
        shard: u32,
        /// The driver's error.
        #[source]
        source: Arc<sqlx::Error>,
    },
    /// Applying migrations failed.
    #[error("failed to migrate shard {shard}")]
    Migrate {
        /// Shard index.
        shard: u32,
        /// The migrator's error.
        #[source]
        source: Arc<sqlx::migrate::MigrateError>,
    },
}

impl DbError {
    /// Sorts a driver error into "try again later" or "broken".
    pub(crate) fn classify(
        operation: &'static str,
        shard: u32,
        role: &'static str,
        source: sqlx::Error,
    ) -> Self {
        if is_unavailable(&source) {
            DbError::Unavailable {
                operation,
                shard,
                role,
                source: Arc::new(source),
            }
        } else {
            DbError::Query {
                operation,
                shard,
                source: Arc::new(source),
            }
        }
    }

    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DbError::Unavailable { .. } => "unavailable",
            DbError::Query { .. } => "query",
            DbError::Migrate { .. } => "migrate",
        }
    }
}

/// Whether an error means the server is (for now) out of reach rather than the statement wrong.
fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            // 08: connection exception; 57: operator intervention (shutdown, statement timeout);
            // 53: insufficient resources (too many connections); 25006: read-only (a demoted
            // primary); 3D000: database missing (a replica that has not replayed it yet).
            code.starts_with("08")
                || code.starts_with("57")
                || code.starts_with("53")
                || code == "25006"
                || code == "3D000"
        }),
        _ => false,
    }
}

/// Whether a database error is a unique-key violation (SQLSTATE 23505).
pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(database) if database.code().as_deref() == Some("23505"))
}

/// Applies the embedded migrations to every shard primary. Safe to run from several processes
/// at once: sqlx holds a Postgres advisory lock while it migrates.
pub async fn migrate_all(cluster: &Cluster) -> Result<(), DbError> {
    let topology = cluster.topology();
    for shard in &topology.shards {
        MIGRATOR
            .run(&shard.primary)
            .await
            .map_err(|source| DbError::Migrate {
                shard: shard.index,
                source: Arc::new(source),
            })?;
        tracing::info!(shard = shard.index, "migrations applied");
    }
    Ok(())
}
