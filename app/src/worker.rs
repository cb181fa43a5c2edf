//! Queue workers: a loop around [`Worker::step`], which takes one batch of deliveries and returns
//! an [`Outcome`]; tests drive `step` directly.
//!
//! A message is acknowledged only after its effect committed. Effects deduplicate by event id in
//! the same transaction, so redelivery (a crash between commit and ack, a reclaim from a consumer
//! that was only slow, a relay that sent twice) never applies a message twice. Failures are
//! retried with exponential backoff by leaving the message pending; after
//! `queues.maxAttempts` deliveries it goes to the dead-letter stream.
//!
//! A step applies its whole batch together: one transaction per shard for all of its messages
//! (see `db::worker_effects`), then one acknowledgement round trip, so a busy queue costs a
//! fraction of a commit per message. A message that cannot be applied (malformed, its order
//! missing, rejected by the database) is dead-lettered or retried on its own; the rest of the
//! batch still applies once.

use std::{sync::Arc, time::Duration};

use scaled_contract::QueueSettings;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use prometheus::IntCounter;

use crate::{
    db::{
        Cluster, DbError,
        outbox::SIGN_UP_NOTICE,
        worker_effects::{self, Confirmation, Effect, Event, Notice},
    },
    metrics::Metrics,
    queue::{ANALYTICS_STREAM, Delivery, EMAIL_STREAM, QueueError, STREAMS, StreamConsumer},
    redis_client::RedisClient,
};

/// Most deliveries taken per step. A step takes what has arrived, up to this, so batches grow
/// with the load.
const BATCH: usize = 256;
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
    counts: OutcomeCounts,
    faults: FaultInjection,
    next_sweep: Instant,
    /// The last step failed on its connection: open a new one first.
    reconnect: bool,
}

/// `queue_messages_total` series of one stream, resolved once.
struct OutcomeCounts {
    processed: IntCounter,
    duplicate: IntCounter,
    retry: IntCounter,
    dead: IntCounter,
}

impl OutcomeCounts {
    fn new(metrics: &Metrics, stream: &str) -> Self {
        // The label comes from the fixed set of queues this app handles.
        let stream = STREAMS
            .iter()
            .find(|known| **known == stream)
            .copied()
            .unwrap_or("other");
        let series = |outcome: &str| metrics.queue_messages.with_label_values(&[stream, outcome]);
        OutcomeCounts {
            processed: series("processed"),
            duplicate: series("duplicate"),
            retry: series("retry"),
            dead: series("dead"),
        }
    }
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
            counts: OutcomeCounts::new(&metrics, stream),
            faults,
            next_sweep: Instant::now(),
            reconnect: false,
        })
    }

    /// Handles one batch: due retries and abandoned messages first (checked a few times per
    /// backoff period), otherwise new messages. A step that failed on its connection (broken,
    /// hung, or left on a demoted primary by a failover) makes the next one open a new one first.
    pub async fn step(&mut self) -> Result<Outcome, QueueError> {
        if self.reconnect {
            self.consumer.reconnect().await?;
            self.reconnect = false;
        }
        let result = self.step_on_connection().await;
        if let Err(QueueError::Redis(error)) = &result {
            self.reconnect = error.calls_for_new_connection();
        }
        result
    }

    async fn step_on_connection(&mut self) -> Result<Outcome, QueueError> {
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
        self.handle(deliveries).await?;
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

    async fn handle(&mut self, deliveries: Vec<Delivery>) -> Result<(), QueueError> {
        let stream = self.consumer.stream().to_string();
        let mut usable = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            if delivery.attempt > u64::from(self.settings.max_attempts) {
                self.consumer
                    .dead_letter(&delivery, "too many attempts")
                    .await?;
                self.counts.dead.inc();
                tracing::warn!(
                    stream,
                    id = delivery.id,
                    attempts = delivery.attempt - 1,
                    "message dead-lettered"
                );
            } else {
                usable.push(delivery);
            }
        }
        let outcomes = handle_messages(&self.cluster, &stream, &usable).await;
        let mut acknowledged = Vec::with_capacity(usable.len());
        let (mut applied, mut duplicates) = (0, 0);
        for (delivery, outcome) in usable.iter().zip(outcomes) {
            match outcome {
                Ok(Effect::Applied) => {
                    acknowledged.push(delivery.id.as_str());
                    applied += 1;
                }
                Ok(Effect::Duplicate) => {
                    acknowledged.push(delivery.id.as_str());
                    duplicates += 1;
                }
                Ok(Effect::Missing) => {
                    self.consumer
                        .dead_letter(delivery, "referenced data not found")
                        .await?;
                    self.counts.dead.inc();
                }
                Err(HandlerError::Permanent(reason)) => {
                    tracing::warn!(stream, id = delivery.id, reason, "message dead-lettered");
                    self.consumer.dead_letter(delivery, &reason).await?;
                    self.counts.dead.inc();
                }
                Err(HandlerError::Transient(error)) => {
                    // Left pending: `due_retries` picks it up after the backoff.
                    tracing::warn!(%error, stream, id = delivery.id, attempt = delivery.attempt, "message will be retried");
                    self.counts.retry.inc();
                }
            }
        }
        if applied > 0 && !self.faults.ack_delay.is_zero() {
            tokio::time::sleep(self.faults.ack_delay).await;
        }
        self.consumer.ack_all(&acknowledged).await?;
        self.counts.processed.inc_by(applied);
        self.counts.duplicate.inc_by(duplicates);
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
    /// Only order confirmations name an order.
    order_id: Option<i64>,
    user_id: i64,
}

/// An email message of a known type, with what that type needs.
enum Email {
    Confirmation(EmailMessage, i64),
    Notice(EmailMessage),
}

impl Email {
    fn parse(payload: &str) -> Result<Email, HandlerError> {
        let message: EmailMessage = serde_json::from_str(payload)
            .map_err(|error| HandlerError::Permanent(format!("malformed message: {error}")))?;
        match (message.kind.as_str(), message.order_id) {
            ("order_confirmation", Some(order_id)) => Ok(Email::Confirmation(message, order_id)),
            ("order_confirmation", None) => Err(HandlerError::Permanent(
                "malformed message: an order confirmation without order_id".into(),
            )),
            (SIGN_UP_NOTICE, _) => Ok(Email::Notice(message)),
            (other, _) => Err(HandlerError::Permanent(format!(
                "unknown email type {other:?}"
            ))),
        }
    }
}

#[derive(Deserialize)]
struct AnalyticsMessage {
    event_id: String,
    event: String,
    user_id: i64,
}

/// The outcome of each delivery, in order: parsed, then applied together.
async fn handle_messages(
    cluster: &Cluster,
    stream: &str,
    deliveries: &[Delivery],
) -> Vec<Result<Effect, HandlerError>> {
    let malformed =
        |error: serde_json::Error| HandlerError::Permanent(format!("malformed message: {error}"));
    match stream {
        EMAIL_STREAM => {
            let parsed: Vec<Result<Email, HandlerError>> = deliveries
                .iter()
                .map(|delivery| Email::parse(&delivery.payload))
                .collect();
            let confirmations: Vec<Confirmation> = parsed
                .iter()
                .flatten()
                .filter_map(|email| match email {
                    Email::Confirmation(message, order_id) => Some(Confirmation {
                        event_id: &message.event_id,
                        order_id: *order_id,
                        user_id: message.user_id,
                    }),
                    Email::Notice(_) => None,
                })
                .collect();
            let notices: Vec<Notice> = parsed
                .iter()
                .flatten()
                .filter_map(|email| match email {
                    Email::Notice(message) => Some(Notice {
                        event_id: &message.event_id,
                        user_id: message.user_id,
                    }),
                    Email::Confirmation(..) => None,
                })
                .collect();
            let mut confirmed =
                worker_effects::send_order_confirmations(cluster, stream, &confirmations)
                    .await
                    .into_iter();
            let mut noticed = worker_effects::send_sign_up_notices(cluster, stream, &notices)
                .await
                .into_iter();
            parsed
                .into_iter()
                .map(|email| {
                    let effects = match email? {
                        Email::Confirmation(..) => &mut confirmed,
                        Email::Notice(_) => &mut noticed,
                    };
                    effects
                        .next()
                        .expect("one effect per parsed message of its kind")
                        .map_err(HandlerError::Transient)
                })
                .collect()
        }
        ANALYTICS_STREAM => {
            let parsed: Vec<Result<AnalyticsMessage, HandlerError>> = deliveries
                .iter()
                .map(|delivery| serde_json::from_str(&delivery.payload).map_err(malformed))
                .collect();
            let batch: Vec<Event> = parsed
                .iter()
                .flatten()
                .map(|message| Event {
                    event_id: &message.event_id,
                    event: &message.event,
                    user_id: message.user_id,
                })
                .collect();
            let effects = worker_effects::count_events(cluster, stream, &batch).await;
            merge(parsed, effects)
        }
        other => deliveries
            .iter()
            .map(|_| {
                Err(HandlerError::Permanent(format!(
                    "no handler for stream {other}"
                )))
            })
            .collect(),
    }
}

/// Puts the effects of the parsed messages back between the parse failures.
fn merge<T>(
    parsed: Vec<Result<T, HandlerError>>,
    effects: Vec<Result<Effect, DbError>>,
) -> Vec<Result<Effect, HandlerError>> {
    let mut effects = effects.into_iter();
    parsed
        .into_iter()
        .map(|message| match message {
            Ok(_) => effects
                .next()
                .expect("one effect per parsed message")
                .map_err(HandlerError::Transient),
            Err(error) => Err(error),
        })
        .collect()
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
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        for stream in streams {
            for index in 0..concurrency.max(1) {
                let consumer = format!("{pod_name}-{stream}-{index}");
                let joining = self.join(stream.clone(), consumer, shutdown.clone());
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    if let Some(worker) = joining.await {
                        worker.run(shutdown).await;
                    }
                });
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Joins `stream`'s group, retrying until it works or `shutdown`: a worker pod that starts
    /// before Redis answers (or before its Service name resolves) waits for it instead of
    /// exiting into a crash loop; messages wait in the stream meanwhile.
    fn join(
        &self,
        stream: String,
        consumer: String,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = Option<Worker>> + Send + 'static {
        let (redis, cluster, settings, metrics, faults) = (
            self.redis.clone(),
            self.cluster.clone(),
            self.settings.clone(),
            self.metrics.clone(),
            self.faults,
        );
        async move {
            let mut pause = Duration::from_millis(200);
            loop {
                let joined = Worker::new(
                    redis.clone(),
                    cluster.clone(),
                    &stream,
                    &consumer,
                    settings.clone(),
                    metrics.clone(),
                    faults,
                )
                .await;
                match joined {
                    Ok(worker) => return Some(worker),
                    Err(error) => {
                        tracing::warn!(%error, stream, "cannot join the stream yet; retrying");
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
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
