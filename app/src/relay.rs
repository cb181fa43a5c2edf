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
//!
//! With Redis replicated (`confirm_replicas` > 0), a message Redis accepted is not yet safe: a
//! failover before it reached a replica loses it. So after the batch the relay sends `WAIT` on
//! the same connection and deletes the rows only once that many replicas hold every entry it
//! sent; otherwise the whole batch stays, its rows are sent again by a later pass (so a stream
//! may hold a message twice, which handlers already deduplicate by event id), and the relay
//! backs off (doubling from [`UNCONFIRMED_BACKOFF`] to [`MAX_UNCONFIRMED_BACKOFF`], rung or not)
//! so a replica down for minutes does not fill the streams with copies. The relay writes on a
//! connection of its own: `WAIT` blocks its connection, and on the shared one it would hold up
//! every request. Cache invalidations go through the cache's connection and are not waited for;
//! one lost in a failover leaves an entry stale for at most its TTL.

use std::{sync::Arc, time::Duration};

use redis::{RedisResult, aio::MultiplexedConnection};
use sqlx::Connection;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::{
    cache::UserCache,
    db::{Cluster, DbError, Shard, outbox, users},
    log_throttle::Throttle,
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
/// How long a batch waits for its replicas (`WAIT`): a healthy replica answers within a round
/// trip, so this is only spent while one is down or far behind.
const REPLICA_WAIT: Duration = Duration::from_millis(500);
/// The pause after the first batch whose replicas did not confirm it.
pub const UNCONFIRMED_BACKOFF: Duration = Duration::from_millis(500);
/// The longest pause between passes while replicas do not confirm.
pub const MAX_UNCONFIRMED_BACKOFF: Duration = Duration::from_secs(30);

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
    /// Rows left for a later pass because Redis refused them for now, or because the replicas
    /// did not confirm their batch.
    pub kept: usize,
    /// Whether a batch stayed because too few replicas confirmed it in time.
    pub unconfirmed: bool,
}

/// The relay task.
pub struct Relay {
    cluster: Arc<Cluster>,
    redis: RedisClient,
    cache: Arc<UserCache>,
    wake: Arc<Notify>,
    metrics: Metrics,
    /// The relay's own Redis connection (opened on first use, dropped after a failure so the
    /// next pass opens a new one, to the current primary).
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl Relay {
    /// A relay moving the outbox rows of `cluster` into `redis` (invalidations into `cache`),
    /// rung by `wake` after request handlers wrote rows.
    pub fn new(
        cluster: Arc<Cluster>,
        redis: RedisClient,
        cache: Arc<UserCache>,
        wake: Arc<Notify>,
        metrics: Metrics,
    ) -> Self {
        Relay {
            cluster,
            redis,
            cache,
            wake,
            metrics,
            connection: Mutex::new(None),
        }
    }

    /// Relays until `shutdown`, backing off while Redis or a shard is unavailable, or while the
    /// replicas do not confirm.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut last_sweep = tokio::time::Instant::now();
        let mut pause = POLL;
        let mut unconfirmed_in_a_row = 0;
        loop {
            if unconfirmed_in_a_row == 0 {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = self.wake.notified() => tokio::time::sleep(LINGER).await,
                    () = tokio::time::sleep(pause) => {}
                }
            } else {
                // Deaf to the bell: every new order rings it, and each pass would send the
                // whole waiting outbox again.
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
            pause = POLL;
            let topology = self.cluster.topology();
            let passes = topology.shards.iter().map(|shard| self.drain(shard));
            let mut unconfirmed = false;
            for (shard, result) in topology
                .shards
                .iter()
                .zip(futures::future::join_all(passes).await)
            {
                match result {
                    Ok(moved) => unconfirmed |= moved.unconfirmed,
                    Err(error) => {
                        tracing::warn!(%error, shard = shard.index, "outbox relay paused");
                        pause = Duration::from_secs(1);
                    }
                }
            }
            if unconfirmed {
                unconfirmed_in_a_row += 1;
                pause = pause.max(unconfirmed_backoff(unconfirmed_in_a_row));
                tracing::warn!(
                    retry_in = ?pause,
                    "Redis replicas did not confirm the relayed messages; outbox rows kept"
                );
            } else {
                unconfirmed_in_a_row = 0;
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
            total.unconfirmed |= moved.unconfirmed;
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
            // Held until the batch is confirmed: `WAIT` answers for every write on the connection,
            // so the shards take turns.
            let mut slot = self.connection.lock().await;
            let mut redis = match slot.clone() {
                Some(connection) => connection,
                None => {
                    let connection = self.redis.dedicated().await?;
                    *slot = Some(connection.clone());
                    connection
                }
            };
            let sent = self.send(&mut redis, &pipeline, messages, &mut done).await;
            let sent = match sent {
                Ok(sent) => sent,
                Err(error) => {
                    // Broken, or to a server that is no longer the primary: a new one next time.
                    *slot = None;
                    return Err(error.into());
                }
            };
            moved.kept = sent.kept;
            moved.dead = sent.dead;
            if sent.not_primary {
                *slot = None;
            }
            if !done.is_empty() && self.redis.confirm_replicas() > 0 {
                let confirmed = self
                    .redis
                    .wait_for_replicas("outbox_relay", &mut redis, REPLICA_WAIT)
                    .await;
                if !matches!(confirmed, Ok(true)) {
                    if let Err(error) = confirmed {
                        tracing::warn!(%error, "cannot ask Redis whether its replicas hold the batch");
                        *slot = None;
                    }
                    // Rolled back with the transaction: every row stays, to be sent again.
                    moved.kept += done.len();
                    moved.dead = 0;
                    moved.unconfirmed = true;
                    return Ok(moved);
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

    /// Sends the batch's messages on `redis`, dead-letters those Redis refuses for good, and adds
    /// the ids of both to `done`.
    async fn send(
        &self,
        redis: &mut MultiplexedConnection,
        pipeline: &redis::Pipeline,
        messages: Vec<&outbox::OutboxRow>,
        done: &mut Vec<i64>,
    ) -> Result<Sent, RedisCallError> {
        let answers: Vec<RedisResult<String>> = self
            .redis
            .timed(
                "outbox_relay",
                Duration::from_secs(2),
                pipeline.query_async(redis),
            )
            .await?;
        let mut sent = Sent::default();
        let mut refused = Vec::new();
        for (row, answer) in messages.into_iter().zip(answers) {
            match answer {
                Ok(_) => done.push(row.id),
                Err(error) if refused_for_good(&error) => refused.push((row, error)),
                Err(error) => {
                    sent.not_primary |= self.redis.reconnect_if_not_primary(&error);
                    static REFUSED: Throttle = Throttle::new(Duration::from_secs(5));
                    if let Some(left_out) = REFUSED.admit() {
                        tracing::warn!(%error, stream = row.stream, left_out, "Redis refused an outbox row for now; keeping it");
                    }
                    sent.kept += 1;
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
                        .query_async(redis),
                )
                .await;
            match parked {
                Ok(_) => {
                    tracing::warn!(stream = row.stream, reason, "outbox row dead-lettered");
                    done.push(row.id);
                    sent.dead += 1;
                }
                Err(error) => {
                    tracing::warn!(%error, stream = row.stream, "cannot dead-letter an outbox row; keeping it");
                    sent.kept += 1;
                }
            }
        }
        Ok(sent)
    }
}

/// What [`Relay::send`] did.
#[derive(Default)]
struct Sent {
    kept: usize,
    dead: usize,
    /// Some row was refused by a server that is not the primary.
    not_primary: bool,
}

/// The pause after the `in_a_row`-th unconfirmed pass in a row (from 1): doubling from
/// [`UNCONFIRMED_BACKOFF`], at most [`MAX_UNCONFIRMED_BACKOFF`].
pub fn unconfirmed_backoff(in_a_row: u32) -> Duration {
    let doublings = in_a_row.saturating_sub(1).min(16);
    (UNCONFIRMED_BACKOFF * 2u32.pow(doublings)).min(MAX_UNCONFIRMED_BACKOFF)
}

/// Whether Redis refused a command in a way that repeating it cannot fix (the key holds another
/// type, or the command itself is wrong), as opposed to a passing state (out of memory, loading,
/// a read-only replica, a failover).
fn refused_for_good(error: &redis::RedisError) -> bool {
    matches!(error.code(), Some("WRONGTYPE" | "ERR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unconfirmed_backoff_doubles_up_to_its_ceiling() {
        assert_eq!(unconfirmed_backoff(1), UNCONFIRMED_BACKOFF);
        assert_eq!(unconfirmed_backoff(2), UNCONFIRMED_BACKOFF * 2);
        assert_eq!(unconfirmed_backoff(4), UNCONFIRMED_BACKOFF * 8);
        assert_eq!(unconfirmed_backoff(7), MAX_UNCONFIRMED_BACKOFF);
        assert_eq!(unconfirmed_backoff(u32::MAX), MAX_UNCONFIRMED_BACKOFF);
    }
}
