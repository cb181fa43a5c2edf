//! Finding the Postgres server binaries the image ships, and their major version.
//!
//! Order: the config's `binDir`; a `postgres` on `PATH` (symlinks resolved, because images and
//! hosts often link only some tools into `/usr/local/bin`); `pg_config --bindir`; the highest
//! `/usr/lib/postgresql/<major>/bin` (Debian's layout). A candidate counts only when every tool
//! the manager runs is there, so the tools always come from one installation.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Every tool the instance manager runs.
pub const REQUIRED_TOOLS: [&str; 5] = [
    "postgres",
    "initdb",
    "pg_basebackup",
    "pg_rewind",
    "pg_controldata",
];

/// Errors while locating the binaries.
#[derive(Debug, thiserror::Error)]
pub enum BinariesError {
    /// The configured directory lacks a tool.
    #[error("failed to find {tool} in the configured binDir {dir}")]
    MissingInConfigured {
        /// The configured directory.
        dir: PathBuf,
        /// The missing tool.
        tool: &'static str,
    },
    /// No candidate directory holds every tool.
    #[error(
        "failed to find the Postgres server binaries (postgres, initdb, pg_basebackup, pg_rewind, \
         pg_controldata) on PATH, with pg_config --bindir or under /usr/lib/postgresql/*/bin"
    )]
    NotFound,
    /// `postgres --version` could not be run.
    #[error("failed to run {path} --version")]
    Version {
        /// The binary.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `postgres --version` printed something unexpected.
    #[error("failed to read a major version from {0:?}")]
    VersionText(String),
}

/// The chosen installation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binaries {
    dir: PathBuf,
    major: u32,
}

impl Binaries {
    /// Locates the binaries (see the module documentation for the order) and reads the version.
    pub fn discover(configured: Option<&Path>) -> Result<Self, BinariesError> {
        let dir = match configured {
            Some(dir) => {
                if let Some(tool) = missing_tool(dir) {
                    return Err(BinariesError::MissingInConfigured {
                        dir: dir.to_path_buf(),
                        tool,
                    });
                }
                dir.to_path_buf()
            }
            None => candidates()
                .into_iter()
                .find(|dir| missing_tool(dir).is_none())
                .ok_or(BinariesError::NotFound)?,
        };
        let postgres = dir.join("postgres");
        let output = Command::new(&postgres)
            .arg("--version")
            .output()
            .map_err(|source| BinariesError::Version {
                path: postgres.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let major = parse_server_major(&text).ok_or(BinariesError::VersionText(text))?;
        Ok(Binaries { dir, major })
    }

    /// Binaries in `dir` with a known major version (tests).
    pub fn new(dir: PathBuf, major: u32) -> Self {
        Binaries { dir, major }
    }

    /// The directory holding the tools.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Full path of one tool.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The server's major version (`15` for 15.18).
    pub fn major(&self) -> u32 {
        self.major
    }
}

fn missing_tool(dir: &Path) -> Option<&'static str> {
    REQUIRED_TOOLS
        .into_iter()
        .find(|tool| !dir.join(tool).is_file())
}

/// Candidate directories after the configured one, in order.
fn candidates() -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        for entry in std::env::split_paths(&path) {
            let postgres = entry.join("postgres");
            if postgres.is_file() {
                // `/usr/local/bin/postgres -> /usr/lib/postgresql/15/bin/postgres`: the other
                // tools live beside the target, not beside the link.
                let resolved = std::fs::canonicalize(&postgres).unwrap_or(postgres);
                if let Some(dir) = resolved.parent() {
                    found.push(dir.to_path_buf());
                }
            }
        }
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        let dir = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if !dir.is_empty() {
            found.push(PathBuf::from(dir));
        }
    }
    found.extend(debian_layout(Path::new("/usr/lib/postgresql")));
    found
}

/// `<root>/<major>/bin` directories, highest major first.
fn debian_layout(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut versions: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

/// The major version in `postgres --version` output: `postgres (PostgreSQL) 15.18 (Debian ...)`.
pub fn parse_server_major(text: &str) -> Option<u32> {
    let version = text.split(')').nth(1)?.split_whitespace().next()?;
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The major version in a data directory's `PG_VERSION` (`15`; `9.6` style is not ours).
pub fn parse_data_major(text: &str) -> Option<u32> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_major_versions_are_read_from_version_output() {
        assert_eq!(
            parse_server_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_server_major("postgres (PostgreSQL) 17.2\n"), Some(17));
        assert_eq!(
            parse_server_major("postgres (PostgreSQL) 18beta1\n"),
            Some(18)
        );
        assert_eq!(parse_server_major("nonsense"), None);
    }

    #[test]
    fn data_major_versions_refuse_old_two_part_versions() {
        assert_eq!(parse_data_major("15\n"), Some(15));
        assert_eq!(parse_data_major("9.6\n"), None);
    }

    #[test]
    fn the_debian_layout_prefers_the_highest_major() {
        let root = tempfile::tempdir().expect("a temporary directory");
        for major in ["9", "15", "13", "notaversion"] {
            std::fs::create_dir_all(root.path().join(major).join("bin")).expect("mkdir");
        }
        let dirs = debian_layout(root.path());
        assert_eq!(
            dirs,
            vec![
                root.path().join("15/bin"),
                root.path().join("13/bin"),
                root.path().join("9/bin")
            ]
        );
    }

    #[test]
    fn a_configured_directory_without_every_tool_is_refused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("postgres"), "").expect("write");
        let error = Binaries::discover(Some(dir.path())).expect_err("initdb is missing");
        assert!(error.to_string().contains("initdb"), "{error}");
    }
}
