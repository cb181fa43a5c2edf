//! One Redis client per process, shared by the cache, sessions, rate limiter and queues, with a
//! time budget on every call: a slow or absent Redis costs a request at most that budget.

use std::{future::Future, time::Duration};

use redis::{
    IntoConnectionInfo, RedisError,
    aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
};
use scaled_contract::RedisSettings;

use crate::metrics::Metrics;
use scaled_contract::Secret;

/// How often the shared connection is checked (see [`RedisClient::keep_connected`]).
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Failures of one budgeted Redis call.
#[derive(Debug, thiserror::Error)]
pub enum RedisCallError {
    /// The call did not finish within its budget.
    #[error("failed to {operation} within {budget:?}")]
    Timeout {
        /// What was being done.
        operation: &'static str,
        /// The budget.
        budget: Duration,
    },
    /// Redis answered with an error or the connection failed.
    #[error("failed to {operation}")]
    Redis {
        /// What was being done.
        operation: &'static str,
        /// The client's error.
        #[source]
        source: RedisError,
    },
}

/// Shared handle; cheap to clone.
#[derive(Clone)]
pub struct RedisClient {
    client: redis::Client,
    manager: ConnectionManager,
    metrics: Metrics,
}

impl RedisClient {
    /// Prepares a client without connecting: the process starts (and serves from the database)
    /// while Redis is down, and the connection manager reconnects when it is back.
    pub fn new(
        settings: &RedisSettings,
        password: Option<&Secret>,
        metrics: Metrics,
    ) -> Result<Self, RedisError> {
        let mut info = settings.url.as_str().into_connection_info()?;
        if let Some(password) = password {
            let redis_settings = info
                .redis_settings()
                .clone()
                .set_password(password.expose());
            info = info.set_redis_settings(redis_settings);
        }
        let client = redis::Client::open(info)?;
        // Once a command finds the connection dropped, the manager reconnects in the background
        // and keeps trying (every 500 ms at most) until Redis answers again, so the first
        // request after an outage finds a connection. With a few retries it gave up while Redis
        // was away and the next request after its return failed (503 on a sign-in) only to
        // start the reconnect. Callers never wait on it longer than their `timed` budget.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(usize::MAX)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(RedisClient {
            client,
            manager,
            metrics,
        })
    }

    /// The shared, multiplexed, self-reconnecting connection.
    pub fn connection(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// A connection of its own, for commands that block (`XREADGROUP ... BLOCK`) and would
    /// otherwise stall every other user of the shared connection.
    pub async fn dedicated(&self) -> Result<MultiplexedConnection, RedisCallError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|source| self.failed("open a dedicated connection", source))
    }

    /// Pings through the shared connection every [`HEARTBEAT`] until `stop`. A connection that
    /// Redis dropped (a restart, a failover) is only noticed by the next command sent on it,
    /// which fails and starts the reconnect; without traffic that command would be the first
    /// request after Redis returned. The heartbeat notices within a second and the manager is
    /// connected again within half a second of Redis answering.
    pub async fn keep_connected(self, stop: tokio_util::sync::CancellationToken) {
        loop {
            let mut connection = self.connection();
            let command = redis::cmd("PING");
            let _ = self
                .timed(
                    "heartbeat",
                    HEARTBEAT,
                    command.query_async::<String>(&mut connection),
                )
                .await;
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(HEARTBEAT) => {}
            }
        }
    }

    /// The underlying client (pub/sub needs its own connection type).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Runs `call` within `budget`, counting failures by operation.
    pub async fn timed<T>(
        &self,
        operation: &'static str,
        budget: Duration,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, RedisCallError> {
        match tokio::time::timeout(budget, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(self.failed(operation, source)),
            Err(_) => {
                self.metrics
                    .redis_errors
                    .with_label_values(&[operation])
                    .inc();
                Err(RedisCallError::Timeout { operation, budget })
            }
        }
    }

    /// Records and wraps a Redis error.
    pub fn failed(&self, operation: &'static str, source: RedisError) -> RedisCallError {
        self.metrics
            .redis_errors
            .with_label_values(&[operation])
            .inc();
        RedisCallError::Redis { operation, source }
    }
}
