//! Redis Streams as work queues: one consumer group per stream, at-least-once delivery, explicit
//! acknowledgement after the effect commits, delayed retries of a consumer's own failures,
//! reclaiming of a dead consumer's messages with `XAUTOCLAIM`, and a dead-letter stream.
//! No database or HTTP in here; `crate::relay` moves the outbox into these streams.

use std::{collections::HashMap, time::Duration};

use redis::{
    AsyncCommands, Script,
    aio::MultiplexedConnection,
    streams::{
        StreamAutoClaimOptions, StreamClaimReply, StreamId, StreamPendingCountReply,
        StreamReadOptions, StreamReadReply,
    },
};

use crate::redis_client::{RedisCallError, RedisClient};

/// Analytics events.
pub use scaled_contract::ANALYTICS_QUEUE as ANALYTICS_STREAM;
/// Order confirmation emails.
pub use scaled_contract::EMAIL_QUEUE as EMAIL_STREAM;
/// Every queue this app has a handler for (the operator refuses worker pools naming others).
pub use scaled_contract::KNOWN_QUEUES as STREAMS;
/// The consumer group all workers join.
pub const GROUP: &str = scaled_contract::metrics::WORKER_GROUP;
/// Field of a stream entry holding the JSON message.
pub const PAYLOAD_FIELD: &str = "payload";

/// Moves a message to the dead-letter stream and out of the group in one atomic step, so it is
/// never both dead and pending, nor neither.
const DEAD_LETTER: &str = r"
redis.call('XADD', KEYS[2], '*', 'payload', ARGV[3], 'source_id', ARGV[2], 'reason', ARGV[4], 'attempts', ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
";

/// Failures of queue operations.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis failed or was too slow.
    #[error(transparent)]
    Redis(#[from] RedisCallError),
}

/// One delivery of one message.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Stream entry id.
    pub id: String,
    /// The JSON message (empty if the entry had no payload field).
    pub payload: String,
    /// 1 for the first delivery, then counted by Redis.
    pub attempt: u64,
}

/// The dead-letter stream of `stream`.
pub fn dead_letter_stream(stream: &str) -> String {
    format!("{stream}:dead")
}

/// One consumer of one stream, on a connection of its own (its reads block).
pub struct StreamConsumer {
    redis: RedisClient,
    connection: MultiplexedConnection,
    stream: String,
    consumer: String,
    dead_letter: Script,
}

impl StreamConsumer {
    /// Joins the group (creating stream and group if needed).
    pub async fn open(
        redis: RedisClient,
        stream: &str,
        consumer: &str,
    ) -> Result<Self, QueueError> {
        let mut connection = redis.dedicated().await?;
        ensure_group(&redis, &mut connection, stream).await?;
        Ok(StreamConsumer {
            redis,
            connection,
            stream: stream.to_string(),
            consumer: consumer.to_string(),
            dead_letter: Script::new(DEAD_LETTER),
        })
    }

    /// Opens a new connection in place of this one's (after it broke, or after a failover left
    /// it on a server that is no longer the primary), joining the group again.
    pub async fn reconnect(&mut self) -> Result<(), QueueError> {
        let mut connection = self.redis.dedicated().await?;
        ensure_group(&self.redis, &mut connection, &self.stream).await?;
        self.connection = connection;
        Ok(())
    }

    /// The stream consumed.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// New messages, waiting up to `block` for the first.
    pub async fn read_new(
        &mut self,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let options = StreamReadOptions::default()
            .group(GROUP, &self.consumer)
            .count(count)
            .block(block.as_millis() as usize);
        let budget = block + Duration::from_secs(2);
        let reply: Option<StreamReadReply> = self
            .redis
            .timed(
                "queue_read",
                budget,
                self.connection
                    .xread_options(&[&self.stream], &[">"], &options),
            )
            .await?;
        Ok(reply
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| key.ids)
            .map(|entry| delivery(entry, 1))
            .collect())
    }

    /// Claims messages that some consumer took and left unacknowledged for `min_idle` (it died,
    /// or hangs), with their delivery counts.
    pub async fn reclaim_abandoned(
        &mut self,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, QueueError> {
        let budget = Duration::from_secs(2);
        let options = StreamAutoClaimOptions::default().count(count);
        let claimed: redis::streams::StreamAutoClaimReply = self
            .redis
            .timed(
                "queue_reclaim",
                budget,
                self.connection.xautoclaim_options(
                    &self.stream,
                    GROUP,
                    &self.consumer,
                    min_idle.as_millis() as u64,
                    "0-0",
                    options,
                ),
            )
            .await?;
        if claimed.claimed.is_empty() {
            return Ok(Vec::new());
        }
        let counts = self.own_pending(0, count.max(100)).await?;
        Ok(claimed
            .claimed
            .into_iter()
            .map(|entry| {
                let attempt = counts.get(&entry.id).copied().unwrap_or(1);
                delivery(entry, attempt)
            })
            .collect())
    }

    /// Claims this consumer's own failed messages whose retry delay (`backoff(attempts so far)`)
    /// has passed.
    pub async fn due_retries(
        &mut self,
        backoff: impl Fn(u64) -> Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, QueueError> {
        let budget = Duration::from_secs(2);
        let first_delay = backoff(1).as_millis() as u64;
        let pending: StreamPendingCountReply = self
            .redis
            .timed(
                "queue_pending",
                budget,
                redis::cmd("XPENDING")
                    .arg(&self.stream)
                    .arg(GROUP)
                    .arg("IDLE")
                    .arg(first_delay)
                    .arg("-")
                    .arg("+")
                    .arg(count)
                    .arg(&self.consumer)
                    .query_async(&mut self.connection),
            )
            .await?;
        let mut due = Vec::new();
        for entry in pending.ids {
            let delivered = entry.times_delivered as u64;
            let delay = backoff(delivered).as_millis() as u64;
            if (entry.last_delivered_ms as u64) < delay {
                continue;
            }
            // The same idle threshold again: if another consumer claimed it meanwhile, XCLAIM
            // returns nothing and this one leaves it alone.
            let claimed: StreamClaimReply = self
                .redis
                .timed(
                    "queue_claim",
                    budget,
                    self.connection.xclaim(
                        &self.stream,
                        GROUP,
                        &self.consumer,
                        delay,
                        &[&entry.id],
                    ),
                )
                .await?;
            due.extend(
                claimed
                    .ids
                    .into_iter()
                    .map(|claimed| delivery(claimed, delivered + 1)),
            );
        }
        Ok(due)
    }

    async fn own_pending(
        &mut self,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<HashMap<String, u64>, QueueError> {
        let pending: StreamPendingCountReply = self
            .redis
            .timed(
                "queue_pending",
                Duration::from_secs(2),
                redis::cmd("XPENDING")
                    .arg(&self.stream)
                    .arg(GROUP)
                    .arg("IDLE")
                    .arg(min_idle_ms)
                    .arg("-")
                    .arg("+")
                    .arg(count)
                    .arg(&self.consumer)
                    .query_async(&mut self.connection),
            )
            .await?;
        Ok(pending
            .ids
            .into_iter()
            .map(|entry| (entry.id, entry.times_delivered as u64))
            .collect())
    }

    /// Acknowledges and deletes a handled message (deleting keeps `XLEN` equal to the backlog).
    pub async fn ack(&mut self, id: &str) -> Result<(), QueueError> {
        self.ack_all(&[id]).await
    }

    /// Acknowledges and deletes handled messages, all in one round trip.
    pub async fn ack_all<S: AsRef<str>>(&mut self, ids: &[S]) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = ids.iter().map(AsRef::as_ref).collect();
        let mut pipeline = redis::pipe();
        pipeline
            .xack(&self.stream, GROUP, &ids)
            .ignore()
            .xdel(&self.stream, &ids)
            .ignore();
        self.redis
            .timed(
                "queue_ack",
                Duration::from_secs(2),
                pipeline.query_async::<()>(&mut self.connection),
            )
            .await?;
        Ok(())
    }

    /// Moves a message to the dead-letter stream with the reason.
    pub async fn dead_letter(
        &mut self,
        delivery: &Delivery,
        reason: &str,
    ) -> Result<(), QueueError> {
        let mut invocation = self.dead_letter.key(&self.stream);
        invocation
            .key(dead_letter_stream(&self.stream))
            .arg(GROUP)
            .arg(&delivery.id)
            .arg(&delivery.payload)
            .arg(reason)
            .arg(delivery.attempt);
        self.redis
            .timed(
                "queue_dead_letter",
                Duration::from_secs(2),
                invocation.invoke_async::<i64>(&mut self.connection),
            )
            .await?;
        Ok(())
    }
}

/// Creates the group at the start of the stream (creating the stream too). Starting at `0`
/// rather than `$` matters: the relay may have added messages before the first worker existed.
pub async fn ensure_group(
    redis: &RedisClient,
    connection: &mut MultiplexedConnection,
    stream: &str,
) -> Result<(), QueueError> {
    let created: Result<(), RedisCallError> = redis
        .timed(
            "queue_create_group",
            Duration::from_secs(2),
            connection.xgroup_create_mkstream(stream, GROUP, "0"),
        )
        .await;
    match created {
        Ok(()) => Ok(()),
        Err(RedisCallError::Redis { source, .. }) if source.code() == Some("BUSYGROUP") => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Length and pending count of each stream, for the queue-depth gauges. Streams that do not exist
/// yet count as empty.
pub async fn depths(redis: &RedisClient) -> Vec<(&'static str, u64, u64)> {
    let mut connection = redis.connection();
    let mut out = Vec::new();
    for stream in STREAMS {
        let budget = Duration::from_millis(500);
        let length: u64 = redis
            .timed("queue_depth", budget, connection.xlen(stream))
            .await
            .unwrap_or(0);
        let pending: u64 = redis
            .timed(
                "queue_depth",
                budget,
                connection.xpending::<_, _, redis::streams::StreamPendingReply>(stream, GROUP),
            )
            .await
            .map(|reply| reply.count() as u64)
            .unwrap_or(0);
        out.push((stream, length, pending));
    }
    out
}

fn delivery(entry: StreamId, attempt: u64) -> Delivery {
    Delivery {
        payload: entry.get::<String>(PAYLOAD_FIELD).unwrap_or_default(),
        id: entry.id,
        attempt,
    }
}
