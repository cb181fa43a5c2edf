//! The outbox relay: moves committed outbox rows of every shard into Redis Streams (or, for cache
//! invalidations, into the cache) and deletes them only after Redis accepted them.
//!
//! Rows are locked with `FOR UPDATE SKIP LOCKED`, so relays in several pods share the work without
//! sending a row twice while both are alive. A relay that dies after `XADD` but before its delete
//! commits leaves the rows to be sent again: delivery is at-least-once, and handlers deduplicate
//! by the event id inside the message.
//!
//! Work is batched: a wake-up waits a moment for more orders, then one transaction per shard moves
//! everything waiting (up to [`BATCH`] rows, with one pipelined round trip to Redis), so the relay
//! costs a small fraction of a commit per order. Redis answers each `XADD` of the pipeline on its
//! own: a row Redis refuses for good (a key of the wrong type) goes to its stream's dead-letter
//! stream, a row refused for now (out of memory, a replica) stays for the next pass, and the rest
//! of the batch is relayed either way.

use std::{sync::Arc, time::Duration};

use redis::RedisResult;
use sqlx::Connection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    cache::UserCache,
    db::{Cluster, DbError, Shard, outbox, users},
    metrics::Metrics,
    queue::{PAYLOAD_FIELD, dead_letter_stream},
    redis_client::{RedisCallError, RedisClient},
};

/// Most rows moved per transaction.
pub const BATCH: i64 = 500;
/// How long a wake-up waits for more rows before moving them: orders arriving meanwhile share
/// the transaction.
const LINGER: Duration = Duration::from_millis(5);
/// Poll interval when nobody rings (rows written by other pods, or left by a dead one).
const POLL: Duration = Duration::from_millis(500);
/// How often interrupted email changes are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Failures of one relay pass.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The shard could not be read or written.
    #[error(transparent)]
    Db(#[from] DbError),
    /// Redis did not take the messages.
    #[error(transparent)]
    Redis(#[from] RedisCallError),
}

/// What one batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    /// Rows taken out of the outbox (relayed, applied to the cache, or dead-lettered).
    pub rows: usize,
    /// Rows moved to a dead-letter stream because Redis refused them for good.
    pub dead: usize,
    /// Rows left for a later pass because Redis refused them for now.
    pub kept: usize,
}

/// The relay task's dependencies.
pub struct Relay {
    /// Shards to drain.
    pub cluster: Arc<Cluster>,
    /// Where messages go.
    pub redis: RedisClient,
    /// Where invalidations go.
    pub cache: Arc<UserCache>,
    /// Rung by request handlers after they wrote outbox rows, for low latency.
    pub wake: Arc<Notify>,
    /// Counters.
    pub metrics: Metrics,
}

impl Relay {
    /// Relays until `shutdown`, backing off while Redis or a shard is unavailable.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut last_sweep = tokio::time::Instant::now();
        let mut pause = POLL;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => tokio::time::sleep(LINGER).await,
                () = tokio::time::sleep(pause) => {}
            }
            pause = POLL;
            let topology = self.cluster.topology();
            let passes = topology.shards.iter().map(|shard| self.drain(shard));
            for (shard, result) in topology
                .shards
                .iter()
                .zip(futures::future::join_all(passes).await)
            {
                if let Err(error) = result {
                    tracing::warn!(%error, shard = shard.index, "outbox relay paused");
                    pause = Duration::from_secs(1);
                }
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = tokio::time::Instant::now();
                if let Err(error) = users::sweep_email_changes(&self.cluster).await {
                    tracing::warn!(%error, "email change sweep failed");
                }
            }
        }
    }

    /// Relays full batches until the shard's outbox is empty (or holds only rows Redis refuses
    /// for now).
    pub async fn drain(&self, shard: &Shard) -> Result<Moved, RelayError> {
        let mut total = Moved::default();
        loop {
            let moved = self.relay_batch(shard).await?;
            total.rows += moved.rows;
            total.dead += moved.dead;
            total.kept += moved.kept;
            if moved.rows + moved.kept < BATCH as usize || moved.rows == 0 {
                return Ok(total);
            }
        }
    }

    async fn relay_batch(&self, shard: &Shard) -> Result<Moved, RelayError> {
        const OPERATION: &str = "relay the outbox";
        let mut connection = shard.acquire_primary(OPERATION).await?;
        let mut transaction = connection
            .begin()
            .await
            .map_err(|error| shard.primary_error(OPERATION, error))?;
        let rows = outbox::lock_batch(&mut transaction, BATCH)
            .await
            .map_err(|error| shard.primary_error(OPERATION, error))?;
        if rows.is_empty() {
            return Ok(Moved::default());
        }
        let mut pipeline = redis::pipe();
        pipeline.ignore_errors();
        let mut messages = Vec::new();
        let mut invalidations = Vec::new();
        let mut done = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.stream == outbox::CACHE_INVALIDATION {
                if let Some(user_id) = serde_json::from_str::<serde_json::Value>(&row.payload)
                    .ok()
                    .and_then(|payload| payload.get("user_id")?.as_i64())
                {
                    invalidations.push(user_id);
                }
                done.push(row.id);
            } else {
                pipeline.xadd(&row.stream, "*", &[(PAYLOAD_FIELD, row.payload.as_str())]);
                messages.push(row);
            }
        }
        if !invalidations.is_empty() {
            // Visible rows are committed, so the position now is at or after each of their commits.
            let lsn = outbox::current_lsn(&mut transaction)
                .await
                .map_err(|error| shard.primary_error(OPERATION, error))?;
            for user_id in invalidations {
                self.cache.invalidate_shared(user_id, lsn).await?;
            }
        }
        let mut moved = Moved::default();
        if !messages.is_empty() {
            let mut redis = self.redis.connection();
            let answers: Vec<RedisResult<String>> = self
                .redis
                .timed(
                    "outbox_relay",
                    Duration::from_secs(2),
                    pipeline.query_async(&mut redis),
                )
                .await?;
            let mut refused = Vec::new();
            for (row, answer) in messages.into_iter().zip(answers) {
                match answer {
                    Ok(_) => done.push(row.id),
                    Err(error) if refused_for_good(&error) => refused.push((row, error)),
                    Err(error) => {
                        tracing::warn!(%error, stream = row.stream, "Redis refused an outbox row for now; keeping it");
                        moved.kept += 1;
                    }
                }
            }
            for (row, error) in refused {
                let reason = format!("relay: Redis refused the message: {error}");
                let parked: Result<String, _> = self
                    .redis
                    .timed(
                        "outbox_dead_letter",
                        Duration::from_secs(2),
                        redis::cmd("XADD")
                            .arg(dead_letter_stream(&row.stream))
                            .arg("*")
                            .arg(PAYLOAD_FIELD)
                            .arg(&row.payload)
                            .arg("reason")
                            .arg(&reason)
                            .query_async(&mut redis),
                    )
                    .await;
                match parked {
                    Ok(_) => {
                        tracing::warn!(stream = row.stream, reason, "outbox row dead-lettered");
                        done.push(row.id);
                        moved.dead += 1;
                    }
                    Err(error) => {
                        tracing::warn!(%error, stream = row.stream, "cannot dead-letter an outbox row; keeping it");
                        moved.kept += 1;
                    }
                }
            }
        }
        if !done.is_empty() {
            outbox::delete(&mut transaction, &done)
                .await
                .map_err(|error| shard.primary_error(OPERATION, error))?;
            transaction
                .commit()
                .await
                .map_err(|error| shard.primary_error(OPERATION, error))?;
        }
        moved.rows = done.len();
        self.metrics.outbox_relayed.inc_by(moved.rows as u64);
        Ok(moved)
    }
}

/// Whether Redis refused a command in a way that repeating it cannot fix (the key holds another
/// type, or the command itself is wrong), as opposed to a passing state (out of memory, loading,
/// a read-only replica, a failover).
fn refused_for_good(error: &redis::RedisError) -> bool {
    matches!(error.code(), Some("WRONGTYPE" | "ERR"))
}
