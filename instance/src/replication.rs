//! Becoming and staying a replica: cloning the primary with `pg_basebackup` into a scratch
//! directory, rewinding a former primary with `pg_rewind`, asking the primary about this
//! replica's slot, and deciding when a replica cannot follow and must be cloned again.
//!
//! Child tools get the replication password through `PGPASSWORD` in their own environment,
//! never in argv (visible in `ps`) or in a log line.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use scaled_contract::{
    Secret,
    instance::{parse_lsn, slot_name},
};

use crate::{
    binaries::Binaries,
    conf::quote_conninfo_value,
    datadir::{DataDir, DataDirError, Scratch},
    db::{Connector, DbError},
    process,
    settings::PeerAddress,
};

/// Errors while cloning or rewinding.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// Preparing or installing the directory failed.
    #[error("failed to prepare the data directory")]
    DataDir(#[from] DataDirError),
    /// A tool could not be run.
    #[error("failed to run {tool}")]
    Spawn {
        /// The tool.
        tool: &'static str,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `pg_basebackup` failed.
    #[error("failed to clone {primary} with pg_basebackup ({status}): {tail}")]
    Clone {
        /// The primary's pod.
        primary: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// Its last lines of output.
        tail: String,
    },
    /// `pg_rewind` failed.
    #[error("failed to rewind from {primary} with pg_rewind ({status}): {tail}")]
    Rewind {
        /// The primary's pod.
        primary: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// Its last lines of output.
        tail: String,
    },
}

/// What a clone or rewind needs to reach the primary.
#[derive(Clone, Debug)]
pub struct Source<'a> {
    /// The primary's pod.
    pub pod: &'a str,
    /// Where it answers.
    pub address: &'a PeerAddress,
    /// The replication role.
    pub user: &'a str,
    /// Its password.
    pub password: &'a Secret,
}

/// Clones the primary into `<dataDir>.clone.tmp` through this pod's slot, makes it a standby and
/// renames it into place. A leftover scratch directory is removed first.
pub async fn clone(
    binaries: &Binaries,
    data_dir: &DataDir,
    source: &Source<'_>,
    own_pod: &str,
    max_rate_kib: Option<u32>,
) -> Result<(), ReplicationError> {
    data_dir.remove_scratch(Scratch::Clone)?;
    let scratch = data_dir.scratch(Scratch::Clone);
    let mut command = process::command(&binaries.tool("pg_basebackup"));
    command
        .arg("-h")
        .arg(&source.address.host)
        .arg("-p")
        .arg(source.address.port.to_string())
        .arg("-U")
        .arg(source.user)
        .arg("-D")
        .arg(&scratch)
        .args(["--wal-method=stream", "--checkpoint=fast", "--no-password"])
        .arg(format!("--slot={}", slot_name(own_pod)))
        .env("PGPASSWORD", source.password.expose())
        .env("PGAPPNAME", format!("{own_pod}-clone"))
        .env("PGCONNECT_TIMEOUT", "10");
    if let Some(rate) = max_rate_kib {
        // pg_basebackup accepts 32 kB/s .. 1 GB/s.
        command.arg(format!("--max-rate={}", rate.clamp(32, 1024 * 1024)));
    }
    let started = Instant::now();
    let run = process::run_tool("pg_basebackup", &mut command)
        .await
        .map_err(|source| ReplicationError::Spawn {
            tool: "pg_basebackup",
            source,
        })?;
    if !run.status.success() {
        return Err(ReplicationError::Clone {
            primary: source.pod.to_string(),
            status: run.status,
            tail: run.tail,
        });
    }
    std::fs::write(scratch.join(crate::datadir::STANDBY_SIGNAL), b"").map_err(|error| {
        DataDirError::Io {
            action: "write standby.signal into",
            path: scratch.clone(),
            source: error,
        }
    })?;
    data_dir.install(Scratch::Clone)?;
    tracing::info!(primary = source.pod, elapsed = ?started.elapsed(), "cloned the primary");
    Ok(())
}

/// Rewinds a former primary's data directory to follow `source`, then marks it a standby.
/// Postgres must be stopped.
pub async fn rewind(
    binaries: &Binaries,
    data_dir: &DataDir,
    source: &Source<'_>,
    own_pod: &str,
) -> Result<(), ReplicationError> {
    let conninfo = [
        ("host", source.address.host.as_str()),
        ("port", &source.address.port.to_string()),
        ("user", source.user),
        ("dbname", "postgres"),
        ("application_name", &format!("{own_pod}-rewind")),
        ("connect_timeout", "10"),
    ]
    .iter()
    .map(|(key, value)| format!("{key}={}", quote_conninfo_value(value)))
    .collect::<Vec<_>>()
    .join(" ");
    let run = process::run_tool(
        "pg_rewind",
        process::command(&binaries.tool("pg_rewind"))
            .arg(format!("--target-pgdata={}", data_dir.path().display()))
            .arg(format!("--source-server={conninfo}"))
            .env("PGPASSWORD", source.password.expose()),
    )
    .await
    .map_err(|source| ReplicationError::Spawn {
        tool: "pg_rewind",
        source,
    })?;
    if !run.status.success() {
        return Err(ReplicationError::Rewind {
            primary: source.pod.to_string(),
            status: run.status,
            tail: run.tail,
        });
    }
    data_dir.set_standby(true)?;
    Ok(())
}

/// This replica's slot as the primary shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotView {
    /// A walsender uses it now.
    pub active: bool,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
}

/// What the primary says, asked as the replication role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryView {
    /// The primary is itself in recovery (not promoted yet).
    pub in_recovery: bool,
    /// Its current WAL position (its insert position, or replay position while in recovery).
    pub current_lsn: Option<u64>,
    /// Its timeline.
    pub timeline: Option<u32>,
    /// This replica's slot, if it exists.
    pub slot: Option<SlotView>,
    /// A walsender streams to this replica (by `application_name`).
    pub streaming_to_me: bool,
}

/// Asks the primary about itself and about `own_pod`'s slot.
pub async fn ask_primary(peer: &mut Connector, own_pod: &str) -> Result<PrimaryView, DbError> {
    let rows = peer
        .query(
            "read the primary's position",
            "SELECT pg_is_in_recovery(), \
                    CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text \
                         ELSE pg_current_wal_lsn()::text END, \
                    CASE WHEN pg_is_in_recovery() THEN NULL \
                         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END",
            &[],
        )
        .await?;
    let row = rows.first();
    let in_recovery: bool = row.map(|row| row.get(0)).unwrap_or(true);
    let current_lsn = row
        .and_then(|row| row.get::<_, Option<String>>(1))
        .and_then(|text| parse_lsn(&text));
    let timeline = row
        .and_then(|row| row.get::<_, Option<i32>>(2))
        .and_then(|timeline| u32::try_from(timeline).ok());
    let slot = peer
        .query(
            "read this replica's slot",
            "SELECT active, wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot_name(own_pod)],
        )
        .await?
        .first()
        .map(|row| SlotView {
            active: row.get(0),
            wal_status: row.get(1),
        });
    let streaming_to_me = !peer
        .query(
            "look for this replica's walsender",
            "SELECT 1 FROM pg_stat_replication WHERE application_name = $1 \
             AND state IN ('streaming', 'catchup')",
            &[&own_pod],
        )
        .await?
        .is_empty();
    Ok(PrimaryView {
        in_recovery,
        current_lsn,
        timeline,
        slot,
        streaming_to_me,
    })
}

/// Drops this replica's slot on the primary when it is invalidated, so the primary creates a
/// fresh one (with WAL reserved) for the next clone. An invalidated slot cannot be streamed from.
pub async fn drop_lost_slot(peer: &mut Connector, own_pod: &str) -> Result<(), DbError> {
    peer.query(
        "drop the invalidated slot",
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name = $1 AND wal_status = 'lost' AND NOT active",
        &[&slot_name(own_pod)],
    )
    .await
    .map(|_| ())
}

/// Tracks whether a standby makes progress: WAL streaming or replay moving.
#[derive(Clone, Debug)]
pub struct Progress {
    last_progress: Instant,
    last_replayed: Option<u64>,
}

impl Progress {
    /// Starts counting now.
    pub fn new(now: Instant) -> Self {
        Progress {
            last_progress: now,
            last_replayed: None,
        }
    }

    /// Records what the standby reports: streaming counts as progress, and so does replay
    /// moving forward (a standby replaying a long local backlog does not stream yet).
    pub fn observe(&mut self, now: Instant, streaming: bool, replayed: Option<u64>) {
        let replay_moved = match (self.last_replayed, replayed) {
            (Some(before), Some(after)) => after > before,
            (None, Some(_)) => true,
            _ => false,
        };
        if replayed.is_some() {
            self.last_replayed = replayed;
        }
        if streaming || replay_moved {
            self.last_progress = now;
        }
    }

    /// Time since the last progress.
    pub fn stalled_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_progress)
    }
}

/// Why a replica that has not progressed for longer than its limit cannot follow `primary`, or
/// `None` when it can (or when that cannot be told: the primary does not answer as a primary).
pub fn cannot_follow(
    primary_pod: &str,
    own_pod: &str,
    own_timeline: Option<u32>,
    stalled_for: Duration,
    view: &PrimaryView,
) -> Option<String> {
    if view.in_recovery || view.streaming_to_me {
        return None;
    }
    let slot = slot_name(own_pod);
    let seconds = stalled_for.as_secs();
    Some(match &view.slot {
        None => format!(
            "replication slot {slot} is missing on primary {primary_pod}, and this replica has \
             not streamed for {seconds}s"
        ),
        Some(SlotView {
            wal_status: Some(status),
            ..
        }) if status == "lost" => format!(
            "replication slot {slot} on primary {primary_pod} was invalidated (wal_status lost, \
             max_slot_wal_keep_size exceeded): the WAL this replica needs is gone"
        ),
        _ => match (own_timeline, view.timeline) {
            (Some(own), Some(theirs)) if own != theirs => format!(
                "this replica is on timeline {own} and primary {primary_pod} on timeline \
                 {theirs}, and streaming has not resumed for {seconds}s (diverged history)"
            ),
            _ => format!(
                "this replica has not streamed from primary {primary_pod} for {seconds}s while \
                 it answers (the WAL it needs may be gone)"
            ),
        },
    })
}

/// The replication passfile's path in the socket directory.
pub fn passfile_path(socket_dir: &Path) -> std::path::PathBuf {
    socket_dir.join(".scaled-replication.pgpass")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(slot: Option<SlotView>) -> PrimaryView {
        PrimaryView {
            in_recovery: false,
            current_lsn: Some(1),
            timeline: Some(1),
            slot,
            streaming_to_me: false,
        }
    }

    #[test]
    fn progress_is_streaming_or_replay_moving() {
        let start = Instant::now();
        let mut progress = Progress::new(start);
        progress.observe(start + Duration::from_secs(1), false, Some(10));
        assert_eq!(
            progress.stalled_for(start + Duration::from_secs(5)),
            Duration::from_secs(4)
        );
        progress.observe(start + Duration::from_secs(6), false, Some(10));
        assert_eq!(
            progress.stalled_for(start + Duration::from_secs(7)),
            Duration::from_secs(6),
            "replay standing still is no progress"
        );
        progress.observe(start + Duration::from_secs(8), true, None);
        assert_eq!(
            progress.stalled_for(start + Duration::from_secs(8)),
            Duration::ZERO
        );
    }

    #[test]
    fn a_lost_or_missing_slot_is_named_in_the_reason() {
        let lost = view(Some(SlotView {
            active: false,
            wal_status: Some("lost".into()),
        }));
        let reason =
            cannot_follow("db-0", "db-1", Some(1), Duration::from_secs(30), &lost).expect("stuck");
        assert!(
            reason.contains("db_1") && reason.contains("invalidated"),
            "{reason}"
        );
        let missing = cannot_follow(
            "db-0",
            "db-1",
            Some(1),
            Duration::from_secs(30),
            &view(None),
        )
        .expect("stuck");
        assert!(
            missing.contains("db_1") && missing.contains("missing"),
            "{missing}"
        );
    }

    #[test]
    fn a_diverged_timeline_is_named_in_the_reason() {
        let mut diverged = view(Some(SlotView {
            active: false,
            wal_status: Some("reserved".into()),
        }));
        diverged.timeline = Some(3);
        let reason = cannot_follow("db-0", "db-1", Some(2), Duration::from_secs(30), &diverged)
            .expect("stuck");
        assert!(
            reason.contains("timeline 2") && reason.contains("timeline 3"),
            "{reason}"
        );
    }

    #[test]
    fn a_primary_still_in_recovery_or_streaming_to_us_is_no_reason_to_reclone() {
        let mut promoting = view(None);
        promoting.in_recovery = true;
        assert_eq!(
            cannot_follow("db-0", "db-1", Some(1), Duration::from_secs(99), &promoting),
            None
        );
        let mut streaming = view(None);
        streaming.streaming_to_me = true;
        assert_eq!(
            cannot_follow("db-0", "db-1", Some(1), Duration::from_secs(99), &streaming),
            None
        );
    }
}
