//! Queue workers: a loop around [`Worker::step`], which takes one batch of deliveries and returns
//! an [`Outcome`]; tests drive `step` directly.
//!
//! A message is acknowledged only after its effect committed. Effects deduplicate by event id in
//! the same transaction, so redelivery (a crash between commit and ack, a reclaim from a consumer
//! that was only slow, a relay that sent twice) never applies a message twice. Failures are
//! retried with exponential backoff by leaving the message pending; after
//! `queues.maxAttempts` deliveries it goes to the dead-letter stream.

use std::{sync::Arc, time::Duration};

use scaled_contract::QueueSettings;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    db::{
        Cluster, DbError,
        worker_effects::{self, Effect},
    },
    metrics::Metrics,
    queue::{ANALYTICS_STREAM, Delivery, EMAIL_STREAM, QueueError, StreamConsumer},
    redis_client::RedisClient,
};

/// Deliveries taken per step.
const BATCH: usize = 16;
/// Longest a step waits for new messages (also bounds how long shutdown waits).
const BLOCK: Duration = Duration::from_millis(1000);

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing arrived.
    Idle,
    /// Deliveries were handled (applied, skipped as duplicates, retried later or dead-lettered).
    Handled(usize),
}

/// Why a handler did not apply a message.
#[derive(Debug, thiserror::Error)]
enum HandlerError {
    /// Retrying cannot help (malformed message, referenced data missing).
    #[error("{0}")]
    Permanent(String),
    /// The database failed; retry later.
    #[error(transparent)]
    Transient(#[from] DbError),
}

/// Test hooks; all zero in production.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultInjection {
    /// Pause between an effect's commit and its ack: widens the window in which a crash leaves
    /// a committed but unacknowledged message.
    pub ack_delay: Duration,
}

/// One consumer of one stream.
pub struct Worker {
    consumer: StreamConsumer,
    cluster: Arc<Cluster>,
    settings: QueueSettings,
    metrics: Metrics,
    faults: FaultInjection,
    next_sweep: Instant,
}

impl Worker {
    /// Joins `stream`'s group as `consumer`.
    pub async fn new(
        redis: RedisClient,
        cluster: Arc<Cluster>,
        stream: &str,
        consumer: &str,
        settings: QueueSettings,
        metrics: Metrics,
        faults: FaultInjection,
    ) -> Result<Self, QueueError> {
        Ok(Worker {
            consumer: StreamConsumer::open(redis, stream, consumer).await?,
            cluster,
            settings,
            metrics,
            faults,
            next_sweep: Instant::now(),
        })
    }

    /// Handles one batch: due retries and abandoned messages first (checked a few times per
    /// backoff period), otherwise new messages.
    pub async fn step(&mut self) -> Result<Outcome, QueueError> {
        let mut deliveries = Vec::new();
        if Instant::now() >= self.next_sweep {
            self.next_sweep = Instant::now() + self.sweep_interval();
            let claim_idle = Duration::from_millis(self.settings.claim_idle_ms);
            deliveries.extend(self.consumer.reclaim_abandoned(claim_idle, BATCH).await?);
            let base = self.settings.retry_backoff_ms;
            deliveries.extend(
                self.consumer
                    .due_retries(|attempts| backoff(base, attempts), BATCH)
                    .await?,
            );
        }
        if deliveries.is_empty() {
            deliveries = self.consumer.read_new(BATCH, BLOCK).await?;
        }
        if deliveries.is_empty() {
            return Ok(Outcome::Idle);
        }
        let handled = deliveries.len();
        for delivery in deliveries {
            self.handle(delivery).await?;
        }
        Ok(Outcome::Handled(handled))
    }

    /// Steps until `shutdown`; the message in hand is finished first.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut pause = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.step().await {
                Ok(_) => pause = Duration::from_millis(100),
                Err(error) => {
                    tracing::warn!(%error, stream = self.consumer.stream(), "worker step failed; backing off");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn sweep_interval(&self) -> Duration {
        let period = self
            .settings
            .retry_backoff_ms
            .min(self.settings.claim_idle_ms / 2);
        Duration::from_millis(period).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }

    async fn handle(&mut self, delivery: Delivery) -> Result<(), QueueError> {
        let stream = self.consumer.stream().to_string();
        let count = |outcome: &str| {
            self.metrics
                .queue_messages
                .with_label_values(&[stream.as_str(), outcome])
                .inc()
        };
        if delivery.attempt > u64::from(self.settings.max_attempts) {
            self.consumer
                .dead_letter(&delivery, "too many attempts")
                .await?;
            count("dead");
            tracing::warn!(
                stream,
                id = delivery.id,
                attempts = delivery.attempt - 1,
                "message dead-lettered"
            );
            return Ok(());
        }
        match handle_message(&self.cluster, &stream, &delivery.payload).await {
            Ok(Effect::Applied) => {
                if !self.faults.ack_delay.is_zero() {
                    tokio::time::sleep(self.faults.ack_delay).await;
                }
                self.consumer.ack(&delivery.id).await?;
                count("processed");
            }
            Ok(Effect::Duplicate) => {
                self.consumer.ack(&delivery.id).await?;
                count("duplicate");
            }
            Ok(Effect::Missing) => {
                self.consumer
                    .dead_letter(&delivery, "referenced data not found")
                    .await?;
                count("dead");
            }
            Err(HandlerError::Permanent(reason)) => {
                tracing::warn!(stream, id = delivery.id, reason, "message dead-lettered");
                self.consumer.dead_letter(&delivery, &reason).await?;
                count("dead");
            }
            Err(HandlerError::Transient(error)) => {
                // Left pending: `due_retries` picks it up after the backoff.
                tracing::warn!(%error, stream, id = delivery.id, attempt = delivery.attempt, "message will be retried");
                count("retry");
            }
        }
        Ok(())
    }
}

/// Delay before the next try after `attempts` deliveries: base, 2 x base, 4 x base, ...
pub fn backoff(base_ms: u64, attempts: u64) -> Duration {
    let exponent = attempts.saturating_sub(1).min(16) as u32;
    Duration::from_millis(base_ms.saturating_mul(1 << exponent))
}

#[derive(Deserialize)]
struct EmailMessage {
    event_id: String,
    #[serde(rename = "type")]
    kind: String,
    order_id: i64,
    user_id: i64,
}

#[derive(Deserialize)]
struct AnalyticsMessage {
    event_id: String,
    event: String,
    user_id: i64,
}

async fn handle_message(
    cluster: &Cluster,
    stream: &str,
    payload: &str,
) -> Result<Effect, HandlerError> {
    let malformed =
        |error: serde_json::Error| HandlerError::Permanent(format!("malformed message: {error}"));
    match stream {
        EMAIL_STREAM => {
            let message: EmailMessage = serde_json::from_str(payload).map_err(malformed)?;
            if message.kind != "order_confirmation" {
                return Err(HandlerError::Permanent(format!(
                    "unknown email type {:?}",
                    message.kind
                )));
            }
            Ok(worker_effects::send_order_confirmation(
                cluster,
                stream,
                &message.event_id,
                message.order_id,
                message.user_id,
            )
            .await?)
        }
        ANALYTICS_STREAM => {
            let message: AnalyticsMessage = serde_json::from_str(payload).map_err(malformed)?;
            Ok(worker_effects::count_event(
                cluster,
                stream,
                &message.event_id,
                &message.event,
                message.user_id,
            )
            .await?)
        }
        other => Err(HandlerError::Permanent(format!(
            "no handler for stream {other}"
        ))),
    }
}

/// What every worker of a process shares.
pub struct WorkerPool {
    /// Redis.
    pub redis: RedisClient,
    /// Shards.
    pub cluster: Arc<Cluster>,
    /// Queue behaviour.
    pub settings: QueueSettings,
    /// Counters.
    pub metrics: Metrics,
    /// Test hooks.
    pub faults: FaultInjection,
}

impl WorkerPool {
    /// Starts `concurrency` workers per stream (consumer names `<pod>-<stream>-<n>`) and runs
    /// them until `shutdown`.
    pub async fn run(
        self,
        streams: &[String],
        concurrency: usize,
        pod_name: &str,
        shutdown: CancellationToken,
    ) -> Result<(), QueueError> {
        let mut tasks = tokio::task::JoinSet::new();
        for stream in streams {
            for index in 0..concurrency.max(1) {
                let consumer = format!("{pod_name}-{stream}-{index}");
                let worker = Worker::new(
                    self.redis.clone(),
                    self.cluster.clone(),
                    stream,
                    &consumer,
                    self.settings.clone(),
                    self.metrics.clone(),
                    self.faults,
                )
                .await?;
                tasks.spawn(worker.run(shutdown.clone()));
            }
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_attempt_from_the_base() {
        assert_eq!(backoff(100, 1), Duration::from_millis(100));
        assert_eq!(backoff(100, 2), Duration::from_millis(200));
        assert_eq!(backoff(100, 4), Duration::from_millis(800));
    }
}
