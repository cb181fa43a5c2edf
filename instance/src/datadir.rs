//! The data directory: what it holds, whether this instance may touch it, and the moves that
//! replace it atomically.
//!
//! New data is always built in a sibling `<dataDir>.<kind>.tmp` and renamed into place when it
//! is complete, so a killed initdb or clone never leaves something at `dataDir` that looks
//! finished. Data to throw away is first renamed aside, for the same reason: a half-deleted
//! directory that still has `PG_VERSION` must never be started.
//!
//! [`DataDir::inspect`] only reads. A directory of another major version, or one without this
//! shard's identity, is reported and never modified.

use std::{
    fs::{self, File, OpenOptions},
    io::{ErrorKind, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use scaled_contract::instance::{
    DataIdentity, IDENTITY_FILE, InstanceProblem, REASON_FOREIGN_DATA_DIRECTORY,
    REASON_MAJOR_VERSION_MISMATCH, SETTINGS_FILE, parse_lsn,
};

use crate::binaries::{Binaries, parse_data_major};

/// Marker file that makes Postgres start as a standby.
pub const STANDBY_SIGNAL: &str = "standby.signal";
/// The line that makes `postgresql.conf` read the manager's settings last.
pub const INCLUDE_LINE: &str = "include 'scaled.conf'";

/// Errors while reading or moving data directories.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// A file or directory operation failed.
    #[error("failed to {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `pg_controldata` could not be run or failed.
    #[error("failed to read pg_control of {path} with pg_controldata: {detail}")]
    ControlData {
        /// The data directory.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError {
    let path = path.to_path_buf();
    move |source| DataDirError::Io {
        action,
        path,
        source,
    }
}

/// What a data directory holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataState {
    /// Missing or empty: initdb or a clone may create it.
    Empty,
    /// A data directory of this shard, of the server's major version.
    Ours {
        /// It has `standby.signal`: it was (and starts as) a standby.
        standby: bool,
    },
    /// Must not be touched; the problem says why.
    Refused(InstanceProblem),
}

/// The temporary siblings of a data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scratch {
    /// A new cluster being initialised.
    Initdb,
    /// A clone of the primary being copied.
    Clone,
    /// Old data on its way out.
    Discard,
}

impl Scratch {
    fn suffix(self) -> &'static str {
        match self {
            Scratch::Initdb => "initdb.tmp",
            Scratch::Clone => "clone.tmp",
            Scratch::Discard => "discard.tmp",
        }
    }
}

/// One data directory and the identity it must carry.
#[derive(Clone, Debug)]
pub struct DataDir {
    path: PathBuf,
    identity: DataIdentity,
}

impl DataDir {
    /// The data directory at `path` for the shard `identity`.
    pub fn new(path: PathBuf, identity: DataIdentity) -> Self {
        DataDir { path, identity }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The identity this directory must carry.
    pub fn identity(&self) -> &DataIdentity {
        &self.identity
    }

    /// `<dataDir>.<kind>.tmp`.
    pub fn scratch(&self, kind: Scratch) -> PathBuf {
        let mut name = self
            .path
            .file_name()
            .map(|name| name.to_os_string())
            .unwrap_or_default();
        name.push(".");
        name.push(kind.suffix());
        self.path.with_file_name(name)
    }

    /// Classifies the directory, reading only.
    pub fn inspect(&self, server_major: u32) -> Result<DataState, DataDirError> {
        let metadata = match fs::symlink_metadata(&self.path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(DataState::Empty),
            Err(error) => return Err(io_error("inspect", &self.path)(error)),
        };
        if !metadata.is_dir() {
            return Ok(DataState::Refused(problem(
                REASON_FOREIGN_DATA_DIRECTORY,
                format!(
                    "{} exists and is not a directory; remove it, or point dataDir elsewhere",
                    self.path.display()
                ),
            )));
        }
        let mut entries = fs::read_dir(&self.path).map_err(io_error("list", &self.path))?;
        if entries.next().is_none() {
            return Ok(DataState::Empty);
        }
        let version_path = self.path.join("PG_VERSION");
        let version_text = match fs::read_to_string(&version_path) {
            Ok(text) => text,
            Err(error) if error.kind() == ErrorKind::NotFound => {
                return Ok(DataState::Refused(problem(
                    REASON_FOREIGN_DATA_DIRECTORY,
                    format!(
                        "{} holds files but no PG_VERSION: it is not a Postgres data directory \
                         this instance created; it was left untouched",
                        self.path.display()
                    ),
                )));
            }
            Err(error) => return Err(io_error("read", &version_path)(error)),
        };
        match parse_data_major(&version_text) {
            Some(major) if major == server_major => {}
            _ => {
                return Ok(DataState::Refused(problem(
                    REASON_MAJOR_VERSION_MISMATCH,
                    format!(
                        "{} holds data of Postgres {} but the server binaries are Postgres \
                         {server_major}; upgrade the data (pg_upgrade) or use an image of its \
                         version; the directory was left untouched",
                        self.path.display(),
                        version_text.trim()
                    ),
                )));
            }
        }
        let identity_path = self.path.join(IDENTITY_FILE);
        let found = match fs::read_to_string(&identity_path) {
            Ok(text) => serde_json::from_str::<DataIdentity>(&text).ok(),
            Err(error) if error.kind() == ErrorKind::NotFound => None,
            Err(error) => return Err(io_error("read", &identity_path)(error)),
        };
        match found {
            Some(found) if found == self.identity => {}
            Some(found) => {
                return Ok(DataState::Refused(problem(
                    REASON_FOREIGN_DATA_DIRECTORY,
                    format!(
                        "{} belongs to ScaledApp {}/{} shard {}, not {}/{} shard {}; it was left \
                         untouched",
                        self.path.display(),
                        found.namespace,
                        found.scaled_app,
                        found.shard,
                        self.identity.namespace,
                        self.identity.scaled_app,
                        self.identity.shard
                    ),
                )));
            }
            None => {
                return Ok(DataState::Refused(problem(
                    REASON_FOREIGN_DATA_DIRECTORY,
                    format!(
                        "{} has no readable {IDENTITY_FILE}: this ScaledApp did not create it; \
                         it was left untouched",
                        self.path.display()
                    ),
                )));
            }
        }
        Ok(DataState::Ours {
            standby: self.path.join(STANDBY_SIGNAL).exists(),
        })
    }

    /// The major version in `PG_VERSION`, when there is one.
    pub fn data_major(&self) -> Option<u32> {
        fs::read_to_string(self.path.join("PG_VERSION"))
            .ok()
            .and_then(|text| parse_data_major(&text))
    }

    /// Removes a leftover scratch directory (a killed initdb or clone).
    pub fn remove_scratch(&self, kind: Scratch) -> Result<bool, DataDirError> {
        let path = self.scratch(kind);
        match fs::remove_dir_all(&path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == ErrorKind::NotFound => Ok(false),
            Err(error) => Err(io_error("remove leftover", &path)(error)),
        }
    }

    /// Finishes a scratch directory (identity, settings include, durable) and renames it into
    /// place. The data directory must be missing or empty.
    pub fn install(&self, kind: Scratch) -> Result<(), DataDirError> {
        let scratch = self.scratch(kind);
        write_identity(&scratch, &self.identity)?;
        ensure_settings_included(&scratch)?;
        sync_directory(&scratch)?;
        // rename(2) replaces an empty directory, so an empty mount subdirectory is fine.
        fs::rename(&scratch, &self.path).map_err(io_error("rename into place", &scratch))?;
        sync_parent(&self.path)
    }

    /// Moves the data directory aside and deletes it.
    pub fn discard(&self) -> Result<(), DataDirError> {
        let aside = self.scratch(Scratch::Discard);
        self.remove_scratch(Scratch::Discard)?;
        match fs::rename(&self.path, &aside) {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(io_error("move aside", &self.path)(error)),
        }
        sync_parent(&self.path)?;
        self.remove_scratch(Scratch::Discard)?;
        Ok(())
    }

    /// Creates or removes `standby.signal`.
    pub fn set_standby(&self, standby: bool) -> Result<(), DataDirError> {
        let path = self.path.join(STANDBY_SIGNAL);
        if standby {
            write_file(&path, b"", 0o600)
        } else {
            match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
                Err(error) => Err(io_error("remove", &path)(error)),
            }
        }
    }

    /// Reads `pg_control` with `pg_controldata`.
    pub async fn control_data(&self, binaries: &Binaries) -> Result<ControlData, DataDirError> {
        let output = crate::process::output(
            crate::process::command(&binaries.tool("pg_controldata"))
                .arg("-D")
                .arg(&self.path),
        )
        .await
        .map_err(|error| DataDirError::ControlData {
            path: self.path.clone(),
            detail: error.to_string(),
        })?;
        if !output.status.success() {
            return Err(DataDirError::ControlData {
                path: self.path.clone(),
                detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        parse_control_data(&String::from_utf8_lossy(&output.stdout)).ok_or_else(|| {
            DataDirError::ControlData {
                path: self.path.clone(),
                detail: "unexpected output".into(),
            }
        })
    }
}

fn problem(reason: &str, message: String) -> InstanceProblem {
    InstanceProblem {
        reason: reason.to_string(),
        message,
    }
}

/// Writes [`IDENTITY_FILE`] into `dir`.
pub fn write_identity(dir: &Path, identity: &DataIdentity) -> Result<(), DataDirError> {
    let text = serde_json::to_string_pretty(identity).expect("an identity always serialises");
    write_file(&dir.join(IDENTITY_FILE), text.as_bytes(), 0o600)
}

/// Appends [`INCLUDE_LINE`] to `postgresql.conf` unless it is there already.
pub fn ensure_settings_included(dir: &Path) -> Result<(), DataDirError> {
    let path = dir.join("postgresql.conf");
    let text = fs::read_to_string(&path).map_err(io_error("read", &path))?;
    if text.lines().any(|line| line.trim() == INCLUDE_LINE) {
        return Ok(());
    }
    let mut file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(io_error("open", &path))?;
    let addition = format!(
        "\n# Settings of the ScaledApp instance manager; {SETTINGS_FILE} is rewritten on every \
         start.\n{INCLUDE_LINE}\n"
    );
    file.write_all(addition.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error("append to", &path))
}

/// Writes a file atomically (temporary + rename) with `mode`, durably.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), DataDirError> {
    let mut temporary = path.as_os_str().to_os_string();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    let _ = fs::remove_file(&temporary);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(io_error("create", &temporary))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", &temporary))?;
    fs::rename(&temporary, path).map_err(io_error("rename", &temporary))
}

fn sync_directory(dir: &Path) -> Result<(), DataDirError> {
    File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(io_error("sync", dir))
}

fn sync_parent(path: &Path) -> Result<(), DataDirError> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_directory(parent),
        _ => Ok(()),
    }
}

/// What `pg_controldata` says about a data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlData {
    /// Database system identifier (equal on a primary and its replicas).
    pub system_identifier: String,
    /// `Database cluster state`, for example `shut down`, `in production`.
    pub cluster_state: String,
    /// Latest checkpoint location, bytes since 0/0.
    pub checkpoint_lsn: u64,
    /// Latest checkpoint's timeline.
    pub timeline: u32,
}

/// Parses `pg_controldata` output (run with `LC_ALL=C`, so the labels are English).
pub fn parse_control_data(text: &str) -> Option<ControlData> {
    let field = |label: &str| {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == label).then(|| value.trim().to_string())
        })
    };
    Some(ControlData {
        system_identifier: field("Database system identifier")?,
        cluster_state: field("Database cluster state")?,
        checkpoint_lsn: parse_lsn(&field("Latest checkpoint location")?)?,
        timeline: field("Latest checkpoint's TimeLineID")?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> DataIdentity {
        DataIdentity {
            namespace: "shop-ns".into(),
            scaled_app: "shop".into(),
            shard: 1,
        }
    }

    fn ours(dir: &Path) {
        fs::create_dir_all(dir).expect("mkdir");
        fs::write(dir.join("PG_VERSION"), "15\n").expect("write");
        write_identity(dir, &identity()).expect("identity");
    }

    #[test]
    fn a_missing_or_empty_directory_is_empty() {
        let root = tempfile::tempdir().expect("tempdir");
        let data = DataDir::new(root.path().join("pgdata"), identity());
        assert_eq!(data.inspect(15).expect("inspect"), DataState::Empty);
        fs::create_dir(data.path()).expect("mkdir");
        assert_eq!(data.inspect(15).expect("inspect"), DataState::Empty);
    }

    #[test]
    fn a_directory_with_this_shards_identity_is_ours_and_standby_signal_makes_it_a_standby() {
        let root = tempfile::tempdir().expect("tempdir");
        let data = DataDir::new(root.path().join("pgdata"), identity());
        ours(data.path());
        assert_eq!(
            data.inspect(15).expect("inspect"),
            DataState::Ours { standby: false }
        );
        data.set_standby(true).expect("standby");
        assert_eq!(
            data.inspect(15).expect("inspect"),
            DataState::Ours { standby: true }
        );
    }

    #[test]
    fn another_major_version_is_refused_with_its_reason() {
        let root = tempfile::tempdir().expect("tempdir");
        let data = DataDir::new(root.path().join("pgdata"), identity());
        ours(data.path());
        let DataState::Refused(problem) = data.inspect(17).expect("inspect") else {
            panic!("must be refused");
        };
        assert_eq!(problem.reason, REASON_MAJOR_VERSION_MISMATCH);
        assert!(
            problem.message.contains("Postgres 15"),
            "{}",
            problem.message
        );
    }

    #[test]
    fn missing_or_other_identities_and_stray_files_are_foreign() {
        let root = tempfile::tempdir().expect("tempdir");
        let data = DataDir::new(root.path().join("pgdata"), identity());
        fs::create_dir_all(data.path()).expect("mkdir");
        fs::write(data.path().join("notes.txt"), "mine").expect("write");
        let reason = |state| match state {
            DataState::Refused(problem) => problem.reason,
            other => panic!("must be refused, got {other:?}"),
        };
        assert_eq!(
            reason(data.inspect(15).expect("inspect")),
            REASON_FOREIGN_DATA_DIRECTORY
        );
        fs::write(data.path().join("PG_VERSION"), "15\n").expect("write");
        assert_eq!(
            reason(data.inspect(15).expect("inspect")),
            REASON_FOREIGN_DATA_DIRECTORY
        );
        let other = DataIdentity {
            shard: 2,
            ..identity()
        };
        write_identity(data.path(), &other).expect("identity");
        assert_eq!(
            reason(data.inspect(15).expect("inspect")),
            REASON_FOREIGN_DATA_DIRECTORY
        );
    }

    #[test]
    fn install_renames_a_finished_scratch_directory_into_place() {
        let root = tempfile::tempdir().expect("tempdir");
        let data = DataDir::new(root.path().join("pgdata"), identity());
        let scratch = data.scratch(Scratch::Clone);
        assert_eq!(scratch, root.path().join("pgdata.clone.tmp"));
        fs::create_dir_all(&scratch).expect("mkdir");
        fs::write(scratch.join("PG_VERSION"), "15\n").expect("write");
        fs::write(scratch.join("postgresql.conf"), "port = 5432\n").expect("write");
        data.install(Scratch::Clone).expect("install");
        assert!(!scratch.exists());
        assert_eq!(
            data.inspect(15).expect("inspect"),
            DataState::Ours { standby: false }
        );
        let conf = fs::read_to_string(data.path().join("postgresql.conf")).expect("read");
        assert_eq!(conf.matches(INCLUDE_LINE).count(), 1);
        ensure_settings_included(data.path()).expect("idempotent");
        let conf = fs::read_to_string(data.path().join("postgresql.conf")).expect("read");
        assert_eq!(conf.matches(INCLUDE_LINE).count(), 1);
        data.discard().expect("discard");
        assert!(!data.path().exists());
        assert!(!data.scratch(Scratch::Discard).exists());
    }

    #[test]
    fn control_data_output_is_parsed() {
        let text = "pg_control version number:            1300\n\
                    Database system identifier:           7311111111111111111\n\
                    Database cluster state:               shut down in recovery\n\
                    Latest checkpoint location:           0/3000060\n\
                    Latest checkpoint's REDO location:    0/3000028\n\
                    Latest checkpoint's TimeLineID:       2\n";
        assert_eq!(
            parse_control_data(text),
            Some(ControlData {
                system_identifier: "7311111111111111111".into(),
                cluster_state: "shut down in recovery".into(),
                checkpoint_lsn: 0x0300_0060,
                timeline: 2,
            })
        );
        assert_eq!(parse_control_data("garbage"), None);
    }
}
