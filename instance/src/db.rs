//! Connections the manager makes: to its own server over the Unix socket as the superuser, and to
//! a peer (the primary) over TCP as the replication role. Both authenticate with SCRAM; both are
//! kept and reused while they work, because SCRAM is deliberately slow.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio_postgres::{Client, Config, NoTls, Row, types::ToSql};

use scaled_contract::Secret;

use crate::settings::{PeerAddress, SUPERUSER};

/// How long connecting and any one query may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Connecting failed.
    #[error("failed to connect to {target}: {detail}")]
    Connect {
        /// Which server.
        target: String,
        /// Why (the server's message, without any password).
        detail: String,
    },
    /// A query failed.
    #[error("failed to {what} on {target}: {detail}")]
    Query {
        /// What the query was for.
        what: &'static str,
        /// Which server.
        target: String,
        /// The server's message.
        detail: String,
    },
    /// A query did not answer in time.
    #[error("failed to {what} on {target}: no answer in time")]
    Timeout {
        /// What the query was for.
        what: &'static str,
        /// Which server.
        target: String,
    },
}

/// Describes a Postgres error with its detail, which `Display` alone leaves out.
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {detail}", db.message()),
            None => db.message().to_string(),
        },
        None => error.to_string(),
    }
}

/// A lazily (re)connected client.
pub struct Connector {
    config: Config,
    target: String,
    client: Option<Arc<Client>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Connector")
            .field("target", &self.target)
            .field("connected", &self.client.is_some())
            .finish()
    }
}

impl Connector {
    /// The local server as the superuser, over the socket in `socket_dir`.
    pub fn local(socket_dir: PathBuf, port: u16, password: &Secret) -> Self {
        let mut config = Config::new();
        config
            .host_path(&socket_dir)
            .port(port)
            .user(SUPERUSER)
            .password(password.expose())
            .dbname("postgres")
            .application_name("scaled-instance")
            // The manager's own writes (roles, the database) must not wait for a synchronous
            // standby: on a new primary none exists yet, since replicas clone from it after
            // bootstrap, so a waiting commit would never return.
            .options("-c synchronous_commit=local")
            .connect_timeout(QUERY_TIMEOUT);
        Connector {
            config,
            target: format!("the local server ({})", socket_dir.display()),
            client: None,
        }
    }

    /// A peer's database `postgres` as the replication role.
    pub fn peer(pod: &str, address: &PeerAddress, user: &str, password: &Secret) -> Self {
        let mut config = Config::new();
        config
            .host(&address.host)
            .port(address.port)
            .user(user)
            .password(password.expose())
            .dbname("postgres")
            .application_name("scaled-instance")
            .connect_timeout(QUERY_TIMEOUT);
        Connector {
            config,
            target: format!("{pod} ({address})"),
            client: None,
        }
    }

    /// What this connects to, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Forgets the connection (after the server restarted).
    pub fn reset(&mut self) {
        self.client = None;
    }

    /// A working client, connecting when needed.
    pub async fn client(&mut self) -> Result<Arc<Client>, DbError> {
        if self
            .client
            .as_ref()
            .is_some_and(|client| client.is_closed())
        {
            self.client = None;
        }
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let connecting = self.config.connect(NoTls);
        let (client, connection) = tokio::time::timeout(QUERY_TIMEOUT, connecting)
            .await
            .map_err(|_| DbError::Connect {
                target: self.target.clone(),
                detail: "timed out".into(),
            })?
            .map_err(|error| DbError::Connect {
                target: self.target.clone(),
                detail: describe(&error),
            })?;
        tokio::spawn(async move {
            // Ends when the server closes the connection; the next use reconnects.
            let _ = connection.await;
        });
        let client = Arc::new(client);
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Rows of `sql`, within [`QUERY_TIMEOUT`].
    pub async fn query(
        &mut self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, DbError> {
        self.query_within(what, sql, params, QUERY_TIMEOUT).await
    }

    /// Rows of `sql`, within `limit` (for calls that wait on purpose, like `pg_promote`).
    pub async fn query_within(
        &mut self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        limit: Duration,
    ) -> Result<Vec<Row>, DbError> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(limit, client.query(sql, params)).await;
        self.settle(what, outcome)
    }

    /// Runs statements that return nothing (DDL with literals already quoted).
    pub async fn execute(&mut self, what: &'static str, sql: &str) -> Result<(), DbError> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(QUERY_TIMEOUT, client.batch_execute(sql)).await;
        self.settle(what, outcome)
    }

    /// The result of a call made within a time limit; a closed or timed-out connection is
    /// forgotten (it may be wedged), so the next call starts afresh.
    fn settle<T>(
        &mut self,
        what: &'static str,
        outcome: Result<Result<T, tokio_postgres::Error>, tokio::time::error::Elapsed>,
    ) -> Result<T, DbError> {
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                if error.is_closed() {
                    self.reset();
                }
                Err(DbError::Query {
                    what,
                    target: self.target.clone(),
                    detail: describe(&error),
                })
            }
            Err(_) => {
                self.reset();
                Err(DbError::Timeout {
                    what,
                    target: self.target.clone(),
                })
            }
        }
    }
}

/// A double-quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A single-quoted SQL literal (standard_conforming_strings is on since 9.1).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted_safely() {
        assert_eq!(quote_ident("app"), "\"app\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
