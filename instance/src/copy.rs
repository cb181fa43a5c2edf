//! `copy-to DIR`: the init container's only job. The operator image has no shell, so the
//! manager copies its own executable into the shared volume, atomically (a temporary name, then
//! rename), so the Postgres container never starts a half-written binary.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// The executable's name in the target directory.
pub const BINARY_NAME: &str = "scaled-instance";

/// Errors while copying.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The running executable could not be located.
    #[error("failed to locate the running executable")]
    CurrentExe(#[source] std::io::Error),
    /// A file operation failed.
    #[error("failed to {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Copies the running executable to `dir/scaled-instance`, mode 0755; returns the path.
pub fn copy_self_to(dir: &Path) -> Result<PathBuf, CopyError> {
    let source = std::env::current_exe().map_err(CopyError::CurrentExe)?;
    copy_executable(&source, dir)
}

/// Copies `source` to `dir/scaled-instance` atomically with mode 0755.
pub fn copy_executable(source: &Path, dir: &Path) -> Result<PathBuf, CopyError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| CopyError::Io {
            action,
            path,
            source,
        }
    };
    let bytes = fs::read(source).map_err(io("read", source))?;
    let target = dir.join(BINARY_NAME);
    let temporary = dir.join(format!(".{BINARY_NAME}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&temporary);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(&temporary)
        .map_err(io("create", &temporary))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(io("write", &temporary))?;
    // The umask may have narrowed the creation mode.
    fs::set_permissions(&temporary, fs::Permissions::from_mode(0o755))
        .map_err(io("set the mode of", &temporary))?;
    fs::rename(&temporary, &target).map_err(io("rename into place", &temporary))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_identical_executable_and_replaces_an_older_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("source");
        fs::write(&source, b"#!/bin/sh\necho hi\n").expect("write");
        let target_dir = dir.path().join("bin");
        fs::create_dir(&target_dir).expect("mkdir");
        fs::write(target_dir.join(BINARY_NAME), b"old").expect("write");
        let target = copy_executable(&source, &target_dir).expect("copy");
        assert_eq!(
            fs::read(&target).expect("read"),
            fs::read(&source).expect("read")
        );
        let mode = fs::metadata(&target).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        assert_eq!(
            fs::read_dir(&target_dir).expect("list").count(),
            1,
            "no temporary left"
        );
    }
}
