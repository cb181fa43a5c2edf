//! One Redis client per process, shared by the cache, sessions, rate limiter and queues, with a
//! time budget on every call: a slow or absent Redis costs a request at most that budget.
//!
//! Redis may fail over (the operator promotes a replica and repoints the Service). The old
//! primary, once demoted, answers writes with `READONLY` (or `MASTERDOWN`, `LOADING` while it
//! resynchronises) on connections opened before the failover; the connection manager does not
//! count those as a broken connection and would keep talking to it for good. So any such answer
//! (see [`is_not_primary`]) replaces the shared connections with fresh ones, which reach the
//! current primary through the Service; the call that saw it fails like any Redis outage and
//! its caller degrades as it does for one. A call that runs out of its budget replaces them too:
//! a primary whose pod vanished sends no reset, and its connections hang instead of failing.

use std::{
    future::Future,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use redis::{
    IntoConnectionInfo, RedisError,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
};
use scaled_contract::RedisSettings;

use crate::metrics::Metrics;
use scaled_contract::Secret;

/// How often the shared connection is checked (see [`RedisClient::keep_connected`]).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Least time between two replacements of a connection: every request in flight on a demoted
/// primary sees its refusal, and one new connection serves them all.
const RECONNECT_AT_MOST_EVERY: Duration = Duration::from_millis(200);

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

impl RedisCallError {
    /// Whether the connection the call went on is of no further use: it broke, it hangs past
    /// its budget, or it reaches a server that is not the primary. A connection of its own (not
    /// a self-reconnecting one) should then be opened anew.
    pub fn calls_for_new_connection(&self) -> bool {
        match self {
            RedisCallError::Timeout { .. } => true,
            RedisCallError::Redis { source, .. } => {
                is_not_primary(source) || source.is_unrecoverable_error() || source.is_io_error()
            }
        }
    }
}

/// Shared handle; cheap to clone.
#[derive(Clone)]
pub struct RedisClient {
    client: redis::Client,
    shared: Arc<Replaceable>,
    durable: Arc<Replaceable>,
    confirm_replicas: u32,
    metrics: Metrics,
}

/// A self-reconnecting connection that can also be replaced outright (see the module docs).
struct Replaceable {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// The manager, and when it replaced the one before (`None`: the first).
    current: RwLock<(ConnectionManager, Option<Instant>)>,
}

impl Replaceable {
    fn new(client: redis::Client, config: ConnectionManagerConfig) -> Result<Self, RedisError> {
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Replaceable {
            client,
            config,
            current: RwLock::new((manager, None)),
        })
    }

    fn get(&self) -> ConnectionManager {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .clone()
    }

    /// Swaps in a new (lazy) manager, unless one was swapped in moments ago. Calls in flight keep
    /// the old one until they finish; it closes when its last clone is dropped.
    fn replace(&self) -> bool {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current
            .1
            .is_some_and(|replaced| replaced.elapsed() < RECONNECT_AT_MOST_EVERY)
        {
            return false;
        }
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(manager) => {
                *current = (manager, Some(Instant::now()));
                true
            }
            // Only a bad URL fails here, and that was checked when the first one was made.
            Err(_) => false,
        }
    }
}

/// Whether Redis answered as a server that is not (or not yet) the primary: `READONLY` (a
/// replica, e.g. a demoted primary), `MASTERDOWN` (a replica that lost its primary) or `LOADING`
/// (still loading its data). Such a server cannot take the write now, but the current primary,
/// reached through a new connection, can.
pub fn is_not_primary(error: &RedisError) -> bool {
    matches!(error.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
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
        let shared = Arc::new(Replaceable::new(client.clone(), config.clone())?);
        let durable = Arc::new(Replaceable::new(client.clone(), config)?);
        Ok(RedisClient {
            client,
            shared,
            durable,
            confirm_replicas: settings.confirm_replicas,
            metrics,
        })
    }

    /// The shared, multiplexed, self-reconnecting connection.
    pub fn connection(&self) -> ConnectionManager {
        self.shared.get()
    }

    /// A second shared connection, for writes followed by `WAIT` (sessions): `WAIT` blocks its
    /// connection until the replicas answer or its timeout passes, and on the shared one it
    /// would hold up every request's cache lookup and rate limit behind it.
    pub fn durable_connection(&self) -> ConnectionManager {
        self.durable.get()
    }

    /// How many replicas a write must reach before it counts as durable (0: none are waited
    /// for).
    pub fn confirm_replicas(&self) -> u32 {
        self.confirm_replicas
    }

    /// Waits up to `timeout` for [`RedisClient::confirm_replicas`] replicas to hold every write
    /// sent on `connection` so far: whether they do (true at once when none are to be waited
    /// for). Counted in `redis_replication_waits_total` under `operation`.
    pub async fn wait_for_replicas(
        &self,
        operation: &'static str,
        connection: &mut impl ConnectionLike,
        timeout: Duration,
    ) -> Result<bool, RedisCallError> {
        if self.confirm_replicas == 0 {
            return Ok(true);
        }
        // `WAIT n 0` would block for good: at least a millisecond.
        let millis = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut command = redis::cmd("WAIT");
        command.arg(self.confirm_replicas).arg(millis);
        let acknowledged: Result<u32, _> = self
            .timed(
                operation,
                timeout + Duration::from_secs(1),
                command.query_async(connection),
            )
            .await;
        let confirmed = acknowledged.map(|count| count >= self.confirm_replicas);
        let result = if matches!(confirmed, Ok(true)) {
            "confirmed"
        } else {
            "unconfirmed"
        };
        self.count_replication_wait(operation, result);
        confirmed
    }

    /// Counts a wait for replicas of `operation` with `result` (`confirmed`, `unconfirmed`,
    /// `skipped`).
    pub fn count_replication_wait(&self, operation: &'static str, result: &'static str) {
        self.metrics
            .replication_waits
            .with_label_values(&[operation, result])
            .inc();
    }

    /// Replaces the shared connections if `error` says they reach a server that is not the
    /// primary (see [`is_not_primary`]); true if that was the case. Calls through
    /// [`RedisClient::timed`] do this themselves; a caller that reads errors out of a pipeline's
    /// answers calls it for those.
    pub fn reconnect_if_not_primary(&self, error: &RedisError) -> bool {
        if !is_not_primary(error) {
            return false;
        }
        let replaced = self.shared.replace() | self.durable.replace();
        if replaced {
            self.metrics
                .redis_reconnects
                .with_label_values(&["not_primary"])
                .inc();
            tracing::warn!(%error, "Redis answered as a replica; reconnecting to reach the primary");
        }
        true
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

    /// Pings through both shared connections every [`HEARTBEAT`] until `stop`. A connection
    /// that Redis dropped (a restart, a failover) is only noticed by the next command sent on
    /// it, which fails and starts the reconnect; without traffic that command would be the first
    /// request after Redis returned. The heartbeat notices within a second and the manager is
    /// connected again within half a second of Redis answering. (A demoted primary answers
    /// `PING`; it is found out by the first write it refuses.)
    pub async fn keep_connected(self, stop: tokio_util::sync::CancellationToken) {
        loop {
            let (mut shared, mut durable) = (self.connection(), self.durable_connection());
            let (shared_ping, durable_ping) = (redis::cmd("PING"), redis::cmd("PING"));
            let _ = futures::future::join(
                self.timed(
                    "heartbeat",
                    HEARTBEAT,
                    shared_ping.query_async::<String>(&mut shared),
                ),
                self.timed(
                    "heartbeat",
                    HEARTBEAT,
                    durable_ping.query_async::<String>(&mut durable),
                ),
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
                self.reconnect_after_timeout(operation, budget);
                Err(RedisCallError::Timeout { operation, budget })
            }
        }
    }

    /// Replaces the shared connections after a call ran out of its budget. A server whose pod
    /// was deleted, or that was cut off the network, sends no reset: its connections hang
    /// rather than fail, and the connection manager, which reconnects only on errors that say
    /// the connection is gone, would keep sending into them until the kernel gives up (about
    /// 15 minutes). A new connection reaches whatever the Service points at now. Which
    /// connection the call used is not known here, so both are replaced (at most every
    /// [`RECONNECT_AT_MOST_EVERY`]); on a Redis that is merely slow that costs a connection
    /// set-up, and calls in flight finish on the old one.
    fn reconnect_after_timeout(&self, operation: &'static str, budget: Duration) {
        if self.shared.replace() | self.durable.replace() {
            self.metrics
                .redis_reconnects
                .with_label_values(&["timeout"])
                .inc();
            tracing::warn!(
                operation,
                ?budget,
                "a Redis call ran out of its budget; opening new connections in case the server is gone"
            );
        }
    }

    /// Records and wraps a Redis error (reconnecting if it came from a server that is not the
    /// primary).
    pub fn failed(&self, operation: &'static str, source: RedisError) -> RedisCallError {
        self.reconnect_if_not_primary(&source);
        self.metrics
            .redis_errors
            .with_label_values(&[operation])
            .inc();
        RedisCallError::Redis { operation, source }
    }
}
