//! A new primary's data directory (initdb into a scratch directory, renamed into place when
//! complete) and the roles and database every primary must have (idempotent, run after every
//! start and promotion so changed passwords in the Secret are followed).
//!
//! Passwords reach Postgres only as SCRAM verifiers computed here (`ALTER ROLE ... PASSWORD
//! 'SCRAM-SHA-256$...'`), so the plain text is never in a statement, a server log or argv;
//! initdb reads the superuser's from a 0600 file that is deleted afterwards.

use std::{
    fs::OpenOptions,
    io::{ErrorKind, Write},
    os::unix::fs::OpenOptionsExt,
    path::PathBuf,
};

use postgres_protocol::password::scram_sha_256;
use scaled_contract::{Secret, instance::InstanceConfig};

use crate::{
    binaries::Binaries,
    datadir::{DataDir, DataDirError, Scratch},
    db::{Connector, DbError, quote_ident, quote_literal},
    process,
    settings::{Passwords, SUPERUSER},
};

/// Functions pg_rewind calls on its source; granted to the replication role so pg_rewind needs
/// no superuser.
pub const REWIND_FUNCTIONS: [&str; 4] = [
    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
    "pg_catalog.pg_stat_file(text, boolean)",
    "pg_catalog.pg_read_binary_file(text)",
    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
];

/// Errors while creating a cluster or its roles.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// Preparing or installing the directory failed.
    #[error("failed to prepare the new data directory")]
    DataDir(#[from] DataDirError),
    /// The password file for initdb could not be written.
    #[error("failed to write initdb's password file {path}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// initdb could not be run.
    #[error("failed to run initdb")]
    Spawn(#[source] std::io::Error),
    /// initdb failed.
    #[error("failed to initialise {path} with initdb ({status}): {tail}")]
    Initdb {
        /// The scratch directory.
        path: PathBuf,
        /// Exit status.
        status: std::process::ExitStatus,
        /// Its last lines of output.
        tail: String,
    },
    /// A role or the database could not be created or changed.
    #[error("failed to create or update roles and the database")]
    Roles(#[source] DbError),
}

/// Runs initdb into `<dataDir>.initdb.tmp` and renames the result into place.
pub async fn initdb(
    binaries: &Binaries,
    data_dir: &DataDir,
    superuser_password: &Secret,
) -> Result<(), BootstrapError> {
    data_dir.remove_scratch(Scratch::Initdb)?;
    let scratch = data_dir.scratch(Scratch::Initdb);
    let password_file = PasswordFile::create(
        scratch.with_extension("pwfile"),
        superuser_password.expose(),
    )?;
    let run = process::run_tool(
        "initdb",
        process::command(&binaries.tool("initdb"))
            .arg("-D")
            .arg(&scratch)
            .args(["-U", SUPERUSER])
            .arg(format!("--pwfile={}", password_file.path.display()))
            .args([
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                // C collation: identical on every image (glibc or musl) and immune to
                // collation changes between libc versions, which corrupt indexes.
                "--locale=C",
            ]),
    )
    .await
    .map_err(BootstrapError::Spawn)?;
    drop(password_file);
    if !run.status.success() {
        return Err(BootstrapError::Initdb {
            path: scratch,
            status: run.status,
            tail: run.tail,
        });
    }
    data_dir.install(Scratch::Initdb)?;
    Ok(())
}

/// A 0600 file deleted when dropped (on every path, errors included).
struct PasswordFile {
    path: PathBuf,
}

impl PasswordFile {
    fn create(path: PathBuf, contents: &str) -> Result<Self, BootstrapError> {
        let error = |source| BootstrapError::PasswordFile {
            path: path.clone(),
            source,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(source) if source.kind() == ErrorKind::NotFound => {}
            Err(source) => return Err(error(source)),
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(error)?;
        file.write_all(contents.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .map_err(error)?;
        Ok(PasswordFile { path })
    }
}

impl Drop for PasswordFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The statements that bring roles and the database to what the config and Secret say, given
/// which roles and whether the database exist already.
pub fn role_statements(
    config: &InstanceConfig,
    passwords: &Passwords,
    existing_roles: &[String],
) -> Vec<String> {
    let verifier = |secret: &Secret| quote_literal(&scram_sha_256(secret.expose().as_bytes()));
    let role = |name: &str, attributes: &str, secret: &Secret| {
        let verb = if existing_roles.iter().any(|existing| existing == name) {
            "ALTER ROLE"
        } else {
            "CREATE ROLE"
        };
        format!(
            "{verb} {} WITH {attributes} PASSWORD {}",
            quote_ident(name),
            verifier(secret)
        )
    };
    let mut statements = vec![
        format!(
            "ALTER ROLE {} WITH PASSWORD {}",
            quote_ident(SUPERUSER),
            verifier(&passwords.superuser)
        ),
        role(
            &config.app_user,
            "LOGIN NOSUPERUSER NOREPLICATION",
            &passwords.app,
        ),
        role(
            &config.replication_user,
            "LOGIN REPLICATION NOSUPERUSER",
            &passwords.replication,
        ),
    ];
    for function in REWIND_FUNCTIONS {
        statements.push(format!(
            "GRANT EXECUTE ON FUNCTION {function} TO {}",
            quote_ident(&config.replication_user)
        ));
    }
    statements
}

/// Creates or updates the roles, then creates the database if it is missing. Runs on a primary.
pub async fn ensure_roles_and_database(
    local: &mut Connector,
    config: &InstanceConfig,
    passwords: &Passwords,
) -> Result<(), BootstrapError> {
    let rows = local
        .query(
            "list roles",
            "SELECT rolname FROM pg_roles WHERE rolname = ANY($1)",
            &[&vec![
                config.app_user.clone(),
                config.replication_user.clone(),
            ]],
        )
        .await
        .map_err(BootstrapError::Roles)?;
    let existing: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    for statement in role_statements(config, passwords, &existing) {
        local
            .execute("set up roles", &statement)
            .await
            .map_err(BootstrapError::Roles)?;
    }
    let database = local
        .query(
            "look up the database",
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&config.database],
        )
        .await
        .map_err(BootstrapError::Roles)?;
    if database.is_empty() {
        // CREATE DATABASE cannot run inside a transaction block, so on its own.
        local
            .execute(
                "create the database",
                &format!(
                    "CREATE DATABASE {} OWNER {}",
                    quote_ident(&config.database),
                    quote_ident(&config.app_user)
                ),
            )
            .await
            .map_err(BootstrapError::Roles)?;
        tracing::info!(database = %config.database, owner = %config.app_user, "created the database");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn config() -> InstanceConfig {
        InstanceConfig {
            schema_version: 1,
            scaled_app: "shop".into(),
            data_dir: "/data/pgdata".into(),
            bin_dir: None,
            database: "app".into(),
            app_user: "app".into(),
            replication_user: "replicator".into(),
            instances: 2,
            parameters: BTreeMap::new(),
            synchronous_replication: false,
            fence_after_seconds: 10,
            postgres_port: 5432,
            status_port: 8008,
            reclone_after_seconds: 60,
            clone_max_rate_kib_per_second: None,
        }
    }

    fn passwords() -> Passwords {
        Passwords {
            superuser: Secret::new("super-secret-1"),
            replication: Secret::new("repl-secret-2"),
            app: Secret::new("app-secret-3"),
        }
    }

    #[test]
    fn role_statements_create_missing_roles_and_alter_existing_ones_without_plain_passwords() {
        let fresh = role_statements(&config(), &passwords(), &[]);
        assert!(fresh[1].starts_with("CREATE ROLE \"app\" WITH LOGIN"));
        assert!(fresh[2].starts_with("CREATE ROLE \"replicator\" WITH LOGIN REPLICATION"));
        let again = role_statements(
            &config(),
            &passwords(),
            &["app".into(), "replicator".into()],
        );
        assert!(again[1].starts_with("ALTER ROLE \"app\""));
        assert!(again[2].starts_with("ALTER ROLE \"replicator\""));
        for statement in fresh.iter().chain(&again) {
            assert!(
                !statement.contains("secret"),
                "plain password in {statement}"
            );
        }
        assert!(fresh[0].contains("'SCRAM-SHA-256$4096:"));
        assert!(fresh.iter().any(|statement| {
            statement.contains("pg_read_binary_file(text, bigint, bigint, boolean)")
        }));
    }
}
