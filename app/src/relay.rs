//! The outbox relay: moves committed outbox rows of every shard into Redis Streams (or, for cache
//! invalidations, into the cache) and deletes them only after Redis accepted them.
//!
//! Rows are locked with `FOR UPDATE SKIP LOCKED`, so relays in several pods share the work without
//! sending a row twice while both are alive. A relay that dies after `XADD` but before its delete
//! commits leaves the rows to be sent again: delivery is at-least-once, and handlers deduplicate
//! by the event id inside the message.

use std::{sync::Arc, time::Duration};

use sqlx::Connection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    cache::UserCache,
    db::{Cluster, DbError, Shard, outbox, users},
    metrics::Metrics,
    queue::PAYLOAD_FIELD,
    redis_client::{RedisCallError, RedisClient},
};

/// Rows moved per transaction.
const BATCH: i64 = 200;
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
                () = self.wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
            pause = POLL;
            let topology = self.cluster.topology();
            for shard in &topology.shards {
                if let Err(error) = self.drain(shard).await {
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

    /// Relays full batches until the shard's outbox is empty.
    pub async fn drain(&self, shard: &Shard) -> Result<usize, RelayError> {
        let mut total = 0;
        loop {
            let moved = self.relay_batch(shard).await?;
            total += moved;
            if moved < BATCH as usize {
                return Ok(total);
            }
        }
    }

    async fn relay_batch(&self, shard: &Shard) -> Result<usize, RelayError> {
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
            return Ok(0);
        }
        let mut pipeline = redis::pipe();
        let mut messages = 0;
        let mut invalidations = Vec::new();
        for row in &rows {
            if row.stream == outbox::CACHE_INVALIDATION {
                if let Some(user_id) = row
                    .payload
                    .0
                    .get("user_id")
                    .and_then(serde_json::Value::as_i64)
                {
                    invalidations.push(user_id);
                }
            } else {
                pipeline
                    .xadd(
                        &row.stream,
                        "*",
                        &[(PAYLOAD_FIELD, row.payload.0.to_string())],
                    )
                    .ignore();
                messages += 1;
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
        if messages > 0 {
            let mut redis = self.redis.connection();
            self.redis
                .timed(
                    "outbox_relay",
                    Duration::from_secs(2),
                    pipeline.query_async::<()>(&mut redis),
                )
                .await?;
        }
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        outbox::delete(&mut transaction, &ids)
            .await
            .map_err(|error| shard.primary_error(OPERATION, error))?;
        transaction
            .commit()
            .await
            .map_err(|error| shard.primary_error(OPERATION, error))?;
        self.metrics.outbox_relayed.inc_by(rows.len() as u64);
        Ok(rows.len())
    }
}
