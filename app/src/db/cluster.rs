//! The shard topology of one process: a pool per shard primary and replica, slot -> shard
//! routing, replica health, and reads that prefer a replica that has replayed far enough.
//!
//! The topology sits behind a lock holding an `Arc`, so a reloaded shard map is swapped in whole
//! while requests already routed keep the topology they started with.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use scaled_contract::{DatabaseSettings, ShardEndpoints, ShardMap, slot_for_key};
use sqlx::{
    PgPool, Postgres,
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_util::sync::CancellationToken;

use super::DbError;
use crate::metrics::Metrics;
use scaled_contract::Secret;

/// How often replicas are probed for health and replay position.
const REPLICA_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// A probe slower than this marks the replica unhealthy.
const REPLICA_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a read waits for a replica connection before falling back to the primary.
const REPLICA_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);

/// Proof of a committed write: replicas of `shard` that have replayed `lsn` see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteToken {
    /// Shard written to.
    pub shard: u32,
    /// WAL position (bytes since 0/0) at or after the commit.
    pub lsn: u64,
}

/// One streaming replica.
pub struct Replica {
    address: String,
    pool: PgPool,
    healthy: AtomicBool,
    replay_lsn: AtomicU64,
}

/// One shard: its primary and replicas.
pub struct Shard {
    /// Shard index.
    pub index: u32,
    /// Pool of the read-write primary.
    pub primary: PgPool,
    endpoints: ShardEndpoints,
    replicas: Vec<Arc<Replica>>,
    next_replica: AtomicUsize,
}

/// A complete, immutable routing table.
pub struct Topology {
    slots: u32,
    assignment: Vec<u32>,
    /// Shards by index.
    pub shards: Vec<Arc<Shard>>,
    map: ShardMap,
}

/// Connection settings shared by every pool.
struct PoolSettings {
    database: DatabaseSettings,
    password: Option<Secret>,
}

/// The live topology plus what is needed to build the next one.
pub struct Cluster {
    current: RwLock<Arc<Topology>>,
    settings: PoolSettings,
    metrics: Metrics,
}

impl Cluster {
    /// Builds pools for every endpoint of `map`. Pools connect lazily, so a shard that is down
    /// does not stop the process from starting; `/ready` reports it.
    pub fn new(
        map: &ShardMap,
        database: &DatabaseSettings,
        password: Option<Secret>,
        metrics: Metrics,
    ) -> Self {
        let settings = PoolSettings {
            database: database.clone(),
            password,
        };
        let topology = build_topology(map, &settings, &[]);
        Cluster {
            current: RwLock::new(Arc::new(topology)),
            settings,
            metrics,
        }
    }

    /// The topology in force now.
    pub fn topology(&self) -> Arc<Topology> {
        // A poisoned lock still holds a complete topology (it is only ever replaced whole).
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Swaps in a new shard map, keeping shards whose endpoints did not change (with their pools
    /// and replica health) and building pools only for new endpoints.
    pub fn replace_map(&self, map: &ShardMap) {
        let old = self.topology();
        let topology = build_topology(map, &self.settings, &old.shards);
        match self.current.write() {
            Ok(mut guard) => *guard = Arc::new(topology),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(topology),
        }
    }

    /// The shard owning a user id.
    pub fn shard_for_user(&self, user_id: i64) -> Arc<Shard> {
        self.topology().shard_for_key(&user_id.to_string())
    }

    /// Metrics of this process.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Copies pool sizes into the pool gauges (called when metrics are scraped).
    pub fn record_pool_metrics(&self) {
        let topology = self.topology();
        let max = i64::from(self.settings.database.max_connections());
        for shard in &topology.shards {
            let index = shard.index.to_string();
            let pools = std::iter::once(("primary", &shard.primary)).chain(
                shard
                    .replicas
                    .iter()
                    .map(|replica| ("replica", &replica.pool)),
            );
            let mut totals: HashMap<&str, (i64, i64, i64)> = HashMap::new();
            for (role, pool) in pools {
                let entry = totals.entry(role).or_default();
                entry.0 += i64::from(pool.size());
                entry.1 += pool.num_idle() as i64;
                entry.2 += max;
            }
            for (role, (open, idle, limit)) in totals {
                let gauge = |state: &str| {
                    self.metrics
                        .pool_connections
                        .with_label_values(&[index.as_str(), role, state])
                };
                gauge("open").set(open);
                gauge("idle").set(idle);
                gauge("in_use").set(open - idle);
                gauge("max").set(limit);
            }
        }
    }

    /// Runs a read on a replica of `shard` that has replayed `min_lsn`, falling back to the
    /// primary when none qualifies or the chosen one fails. `query` gets a pool and runs a single
    /// statement on it, so no read ever holds a transaction open.
    pub async fn read<T, Q, F>(
        &self,
        shard: &Shard,
        min_lsn: u64,
        operation: &'static str,
        query: Q,
    ) -> Result<T, DbError>
    where
        Q: Fn(PgPool) -> F,
        F: Future<Output = Result<T, sqlx::Error>>,
    {
        self.read_accepting(shard, min_lsn, operation, query, |_| true)
            .await
    }

    /// Like [`Cluster::read`], but a replica answer that `accept` refuses is asked again of the
    /// primary. Point reads use it for "not found": a row created a moment ago may not have
    /// reached the replica yet, and a 404 for a user who was just created would be wrong.
    pub async fn read_accepting<T, Q, F>(
        &self,
        shard: &Shard,
        min_lsn: u64,
        operation: &'static str,
        query: Q,
        accept: impl Fn(&T) -> bool,
    ) -> Result<T, DbError>
    where
        Q: Fn(PgPool) -> F,
        F: Future<Output = Result<T, sqlx::Error>>,
    {
        if let Some(replica) = shard.pick_replica(min_lsn) {
            self.metrics
                .db_queries
                .with_label_values(&[operation, "replica"])
                .inc();
            match query(replica.pool.clone()).await {
                Ok(value) if accept(&value) => return Ok(value),
                Ok(_) => {}
                Err(error) => match DbError::classify(operation, shard.index, "replica", error) {
                    DbError::Unavailable { source, .. } => {
                        tracing::warn!(replica = %replica.address, error = %source, "replica read failed; using the primary");
                        replica.healthy.store(false, Ordering::Release);
                        self.metrics
                            .db_errors
                            .with_label_values(&["replica_fallback"])
                            .inc();
                    }
                    other => return Err(other),
                },
            }
        }
        self.metrics
            .db_queries
            .with_label_values(&[operation, "primary"])
            .inc();
        query(shard.primary.clone())
            .await
            .map_err(|error| DbError::classify(operation, shard.index, "primary", error))
    }
}

impl Topology {
    /// The shard owning a key's slot.
    pub fn shard_for_key(&self, key: &str) -> Arc<Shard> {
        self.shards[self.shard_index_for_slot(slot_for_key(key, self.slots))].clone()
    }

    /// The map this topology was built from.
    pub fn map(&self) -> &ShardMap {
        &self.map
    }

    /// The slot count of the map.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    fn shard_index_for_slot(&self, slot: u32) -> usize {
        // Validated maps cover every slot and name existing shards.
        self.assignment[slot as usize] as usize
    }
}

impl Shard {
    /// A connection to the primary for a write.
    pub async fn acquire_primary(
        &self,
        operation: &'static str,
    ) -> Result<PoolConnection<Postgres>, DbError> {
        self.primary
            .acquire()
            .await
            .map_err(|error| DbError::classify(operation, self.index, "primary", error))
    }

    /// Maps a driver error from this shard's primary.
    pub fn primary_error(&self, operation: &'static str, error: sqlx::Error) -> DbError {
        DbError::classify(operation, self.index, "primary", error)
    }

    /// The WAL position after a commit made on `connection` (read on the same connection, so it
    /// is at or after that commit).
    pub async fn write_token(
        &self,
        connection: &mut sqlx::PgConnection,
    ) -> Result<WriteToken, DbError> {
        let lsn: i64 = sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0')::bigint")
            .fetch_one(connection)
            .await
            .map_err(|error| self.primary_error("read the commit position", error))?;
        Ok(WriteToken {
            shard: self.index,
            lsn: u64::try_from(lsn).unwrap_or(0),
        })
    }

    fn pick_replica(&self, min_lsn: u64) -> Option<&Arc<Replica>> {
        let count = self.replicas.len();
        if count == 0 {
            return None;
        }
        let start = self.next_replica.fetch_add(1, Ordering::Relaxed);
        // The probed position only ever lags the real one, so ">=" here is never optimistic.
        (0..count)
            .map(|offset| &self.replicas[(start + offset) % count])
            .find(|replica| {
                replica.healthy.load(Ordering::Acquire)
                    && replica.replay_lsn.load(Ordering::Acquire) >= min_lsn
            })
    }
}

fn build_topology(map: &ShardMap, settings: &PoolSettings, existing: &[Arc<Shard>]) -> Topology {
    let shards = map
        .shards
        .iter()
        .map(
            |endpoints| match existing.iter().find(|shard| shard.endpoints == *endpoints) {
                Some(shard) => shard.clone(),
                None => Arc::new(Shard {
                    index: endpoints.index,
                    primary: pool(
                        &endpoints.primary,
                        settings,
                        Duration::from_millis(settings.database.acquire_timeout_ms),
                    ),
                    replicas: endpoints
                        .replicas
                        .iter()
                        .map(|address| {
                            let timeout =
                                Duration::from_millis(settings.database.acquire_timeout_ms)
                                    .min(REPLICA_ACQUIRE_TIMEOUT);
                            Arc::new(Replica {
                                address: address.clone(),
                                pool: pool(address, settings, timeout),
                                // Unknown until the first probe: reads use the primary meanwhile.
                                healthy: AtomicBool::new(false),
                                replay_lsn: AtomicU64::new(0),
                            })
                        })
                        .collect(),
                    endpoints: endpoints.clone(),
                    next_replica: AtomicUsize::new(0),
                }),
            },
        )
        .collect();
    Topology {
        slots: map.slots,
        assignment: map.assignment(),
        shards,
        map: map.clone(),
    }
}

fn pool(address: &str, settings: &PoolSettings, acquire_timeout: Duration) -> PgPool {
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().unwrap_or(5432)),
        None => (address, 5432),
    };
    let database = &settings.database;
    let mut options = PgConnectOptions::new()
        .host(host)
        .port(port)
        .username(&database.user)
        .database(&database.name)
        .application_name("scaled-app")
        .options([
            (
                "statement_timeout",
                database.statement_timeout_ms.to_string(),
            ),
            // A backstop: no code path leaves a transaction open, but if one did, Postgres ends
            // it instead of letting it hold locks and a connection.
            (
                "idle_in_transaction_session_timeout",
                (database.statement_timeout_ms.saturating_mul(2)).to_string(),
            ),
        ]);
    if let Some(password) = &settings.password {
        options = options.password(password.expose());
    }
    PgPoolOptions::new()
        // poolSize connections stay open; up to maxOverflow more are opened under burst and
        // closed again after a minute idle.
        .min_connections(database.pool_size)
        .max_connections(database.max_connections())
        .idle_timeout(Duration::from_secs(60))
        .acquire_timeout(acquire_timeout)
        // A ping per checkout would double the round trips of a point read; a dead connection
        // surfaces as an I/O error instead, which reads answer by falling back and writes by 503.
        .test_before_acquire(false)
        .connect_lazy_with(options)
}

/// Probes every replica's health and replay position until `shutdown`.
pub async fn watch_replicas(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(REPLICA_PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let topology = cluster.topology();
        let probes = topology
            .shards
            .iter()
            .flat_map(|shard| shard.replicas.iter())
            .map(|replica| probe(replica.clone()));
        futures::future::join_all(probes).await;
    }
}

async fn probe(replica: Arc<Replica>) {
    let query =
        sqlx::query_scalar::<_, Option<i64>>("SELECT (pg_last_wal_replay_lsn() - '0/0')::bigint")
            .fetch_one(&replica.pool);
    match tokio::time::timeout(REPLICA_PROBE_TIMEOUT, query).await {
        Ok(Ok(Some(lsn))) => {
            replica
                .replay_lsn
                .store(u64::try_from(lsn).unwrap_or(0), Ordering::Release);
            replica.healthy.store(true, Ordering::Release);
        }
        // NULL means the server is no longer in recovery: it is not the replica the map names.
        Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
            if replica.healthy.swap(false, Ordering::AcqRel) {
                tracing::warn!(replica = %replica.address, "replica marked unhealthy");
            }
        }
    }
}
