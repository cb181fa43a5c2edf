//! Queue backlog of each ScaledApp, read from its own Redis.
//!
//! **Backlog** = the messages the worker group has not acknowledged: the entries never handed to
//! the group (its *lag*, `XINFO GROUPS`) plus the entries handed to a worker and not yet
//! acknowledged (*pending*, from the same reply). The two are disjoint, so nothing is counted
//! twice. A stream without the group (no worker has started yet) has all its entries as lag. A
//! group whose lag Redis cannot tell (Redis before 7, or deletions Redis cannot account for)
//! falls back to `XLEN - pending`: the app deletes each message when it acknowledges it, so the
//! stream holds exactly the lag and the pending entries. Dead-letter streams (`<queue>:dead`)
//! are not backlog: nothing consumes them. Stream length, lag and pending are served too, as
//! their own External metrics.
//!
//! One read (two pipelined round trips for all the ScaledApp's queues) at most every
//! [`QueueSettings::interval`] per ScaledApp, with a single flight. The connection is kept per
//! ScaledApp (the password is fetched from its Secret only to open one), dropped on any error and
//! when the ScaledApp goes away ([`QueueReader::retain`]). Redis down is an error (503), never a
//! zero: a zero would scale a pool down exactly when its backlog cannot be seen.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use redis::aio::MultiplexedConnection;
use redis::{IntoConnectionInfo, Value};
use scaled_contract::metrics::{
    QUEUE_BACKLOG, QUEUE_LAG, QUEUE_LENGTH, QUEUE_PENDING, WORKER_GROUP,
};

use super::app_key::AppKey;
use super::error::ApiError;
use crate::crd::ScaledApp;
use crate::names::{REDIS_PASSWORD_KEY, redis_primary_url, redis_secret_name};

/// How often Redis is read and how long it may take.
#[derive(Clone, Debug)]
pub struct QueueSettings {
    /// Least time between two reads of one ScaledApp's Redis (errors included).
    pub interval: Duration,
    /// Budget to connect, and for each round trip.
    pub timeout: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
        }
    }
}

/// One queue's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueReading {
    /// Queue (stream) name, as the ScaledApp names it (`email:send`).
    pub queue: String,
    /// `XLEN`.
    pub length: u64,
    /// Entries not yet handed to the worker group.
    pub lag: u64,
    /// Entries handed to a worker, not yet acknowledged.
    pub pending: u64,
}

impl QueueReading {
    /// Lag plus pending: what the workers still have to do.
    pub fn backlog(&self) -> u64 {
        self.lag + self.pending
    }

    /// The value of one of the served External metrics; `None` for another name.
    pub fn value(&self, metric: &str) -> Option<u64> {
        match metric {
            QUEUE_BACKLOG => Some(self.backlog()),
            QUEUE_LENGTH => Some(self.length),
            QUEUE_LAG => Some(self.lag),
            QUEUE_PENDING => Some(self.pending),
            _ => None,
        }
    }
}

/// Every queue of one ScaledApp, read at one time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueReadings {
    /// When Redis answered.
    pub timestamp: DateTime<Utc>,
    /// One reading per queue of [`app_queues`].
    pub queues: Vec<QueueReading>,
}

/// The queues a ScaledApp's worker pools consume, each once, in the order first named.
pub fn app_queues(app: &ScaledApp) -> Vec<String> {
    let mut queues: Vec<String> = Vec::new();
    for queue in app.spec.workers.iter().flat_map(|pool| &pool.queues) {
        if !queues.contains(queue) {
            queues.push(queue.clone());
        }
    }
    queues
}

/// Where a ScaledApp's Redis answers (the password stays out of `Debug`).
#[derive(Clone, PartialEq, Eq)]
struct Endpoint {
    url: String,
    password: Option<(String, String)>,
}

/// URL of a ScaledApp's Redis and the Secret key holding its password.
fn endpoint(app: &ScaledApp, key: &AppKey) -> Endpoint {
    match &app.spec.cache.external_redis {
        Some(external) => Endpoint {
            url: external.url.clone(),
            password: external
                .password_secret_ref
                .as_ref()
                .map(|reference| (reference.name.clone(), reference.key.clone())),
        },
        None => Endpoint {
            url: redis_primary_url(&key.name, &key.namespace),
            password: Some((redis_secret_name(&key.name), REDIS_PASSWORD_KEY.to_string())),
        },
    }
}

/// Reads backlogs, with a connection, a cache and a single flight per ScaledApp.
pub struct QueueReader {
    client: kube::Client,
    settings: QueueSettings,
    apps: std::sync::Mutex<HashMap<AppKey, Arc<tokio::sync::Mutex<AppQueues>>>>,
    reads: AtomicU64,
}

#[derive(Default)]
struct AppQueues {
    connection: Option<(Endpoint, MultiplexedConnection)>,
    refreshed: Option<(Instant, Result<Arc<QueueReadings>, ApiError>)>,
}

impl QueueReader {
    /// A reader fetching Redis passwords through `client`.
    pub fn new(client: kube::Client, settings: QueueSettings) -> Self {
        QueueReader {
            client,
            settings,
            apps: std::sync::Mutex::new(HashMap::new()),
            reads: AtomicU64::new(0),
        }
    }

    /// Reads of Redis made so far (one per refresh, answered or not).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Forgets (and disconnects) every ScaledApp not in `live`.
    pub fn retain(&self, live: &HashSet<AppKey>) {
        self.lock().retain(|key, _| live.contains(key));
    }

    /// ScaledApps with state held (for tests of eviction).
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<AppKey, Arc<tokio::sync::Mutex<AppQueues>>>> {
        self.apps
            .lock()
            .expect("the app map lock is never poisoned")
    }

    /// The backlog of every queue of `app`, read when the last read is older than the interval.
    pub async fn readings(&self, app: &ScaledApp) -> Result<Arc<QueueReadings>, ApiError> {
        let key = AppKey::of(app);
        let entry = self.lock().entry(key.clone()).or_default().clone();
        let mut state = entry.lock().await;
        if let Some((at, result)) = &state.refreshed
            && at.elapsed() < self.settings.interval
        {
            return result.clone();
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        let result = self.read(app, &key, &mut state).await.map(Arc::new);
        if result.is_err() {
            // A broken connection is not reused; the next read opens a new one (and re-reads
            // the password, which may have changed).
            state.connection = None;
        }
        state.refreshed = Some((Instant::now(), result.clone()));
        result
    }

    async fn read(
        &self,
        app: &ScaledApp,
        key: &AppKey,
        state: &mut AppQueues,
    ) -> Result<QueueReadings, ApiError> {
        let wanted = endpoint(app, key);
        let unavailable = |what: String| {
            ApiError::Unavailable(format!(
                "failed to read the queue backlog of ScaledApp {}/{} from Redis at {}: {what}",
                key.namespace, key.name, wanted.url
            ))
        };
        let reuse = matches!(&state.connection, Some((endpoint, _)) if endpoint.url == wanted.url);
        if !reuse {
            state.connection = None;
            let connection = self.connect(key, &wanted).await?;
            state.connection = Some((wanted.clone(), connection));
        }
        let (_, connection) = state
            .connection
            .as_mut()
            .expect("a connection was just ensured");
        let queues = app_queues(app);
        let readings =
            tokio::time::timeout(self.settings.timeout * 2, read_queues(connection, &queues))
                .await
                .map_err(|_| unavailable("timed out".into()))?
                .map_err(|error| unavailable(error.to_string()))?;
        Ok(QueueReadings {
            timestamp: Utc::now(),
            queues: readings,
        })
    }

    async fn connect(
        &self,
        key: &AppKey,
        endpoint: &Endpoint,
    ) -> Result<MultiplexedConnection, ApiError> {
        let unavailable = |what: String| {
            ApiError::Unavailable(format!(
                "failed to connect to the Redis of ScaledApp {}/{} at {}: {what}",
                key.namespace, key.name, endpoint.url
            ))
        };
        let mut info = endpoint
            .url
            .as_str()
            .into_connection_info()
            .map_err(|error| unavailable(error.to_string()))?;
        if let Some((secret, secret_key)) = &endpoint.password {
            let password = self.password(key, secret, secret_key).await?;
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(|error| unavailable(error.to_string()))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.timeout))
            .set_response_timeout(Some(self.settings.timeout));
        tokio::time::timeout(
            self.settings.timeout * 2,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| unavailable("timed out".into()))?
        .map_err(|error| unavailable(error.to_string()))
    }

    async fn password(
        &self,
        key: &AppKey,
        secret: &str,
        secret_key: &str,
    ) -> Result<String, ApiError> {
        let unavailable = |what: String| {
            ApiError::Unavailable(format!(
                "failed to read the Redis password of ScaledApp {}/{} (Secret {secret}, key {secret_key}): {what}",
                key.namespace, key.name
            ))
        };
        let secret = Api::<Secret>::namespaced(self.client.clone(), &key.namespace)
            .get(secret)
            .await
            .map_err(|error| unavailable(error.to_string()))?;
        let bytes = secret
            .data
            .as_ref()
            .and_then(|data| data.get(secret_key))
            .ok_or_else(|| unavailable("the key is missing".into()))?;
        String::from_utf8(bytes.0.clone()).map_err(|_| unavailable("the value is not UTF-8".into()))
    }
}

/// Length, lag and pending of each queue, in two pipelined round trips.
async fn read_queues(
    connection: &mut MultiplexedConnection,
    queues: &[String],
) -> Result<Vec<QueueReading>, redis::RedisError> {
    if queues.is_empty() {
        return Ok(Vec::new());
    }
    let mut lengths = redis::pipe();
    for queue in queues {
        lengths.cmd("EXISTS").arg(queue).cmd("XLEN").arg(queue);
    }
    let counts: Vec<u64> = lengths.query_async(connection).await?;
    let existing: Vec<(&String, u64)> = queues
        .iter()
        .zip(counts.chunks(2))
        .filter(|(_, pair)| pair[0] == 1)
        .map(|(queue, pair)| (queue, pair[1]))
        .collect();
    let mut groups = redis::pipe();
    for (queue, _) in &existing {
        groups.cmd("XINFO").arg("GROUPS").arg(*queue);
    }
    let replies: Vec<Value> = if existing.is_empty() {
        Vec::new()
    } else {
        groups.query_async(connection).await?
    };
    let mut readings: Vec<QueueReading> = queues
        .iter()
        .map(|queue| QueueReading {
            queue: queue.clone(),
            ..QueueReading::default()
        })
        .collect();
    for ((queue, length), reply) in existing.into_iter().zip(&replies) {
        let group = worker_group(reply);
        let (lag, pending) = match group {
            // No worker has joined: nothing was handed out yet.
            None => (length, 0),
            Some((lag, pending)) => (lag.unwrap_or(length.saturating_sub(pending)), pending),
        };
        if let Some(reading) = readings.iter_mut().find(|r| &r.queue == queue) {
            *reading = QueueReading {
                queue: queue.clone(),
                length,
                lag,
                pending,
            };
        }
    }
    Ok(readings)
}

/// `(lag, pending)` of [`WORKER_GROUP`] in an `XINFO GROUPS` reply (RESP2 or RESP3); the lag is
/// `None` when Redis cannot tell it.
fn worker_group(reply: &Value) -> Option<(Option<u64>, u64)> {
    let Value::Array(groups) = reply else {
        return None;
    };
    groups.iter().find_map(|group| {
        let fields = fields(group);
        let name = fields
            .iter()
            .find(|(k, _)| k == "name")
            .and_then(|(_, v)| text(v))?;
        if name != WORKER_GROUP {
            return None;
        }
        let number = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| integer(v))
        };
        Some((number("lag"), number("pending").unwrap_or(0)))
    })
}

fn fields(group: &Value) -> Vec<(String, &Value)> {
    match group {
        Value::Array(flat) => flat
            .chunks(2)
            .filter_map(|pair| match pair {
                [key, value] => Some((text(key)?, value)),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs
            .iter()
            .filter_map(|(key, value)| Some((text(key)?, value)))
            .collect(),
        _ => Vec::new(),
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

fn integer(value: &Value) -> Option<u64> {
    match value {
        Value::Int(number) => u64::try_from(*number).ok(),
        Value::BulkString(_) | Value::SimpleString(_) => text(value)?.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{render, runtime_config};
    use crate::test_support::{example, validated_example};

    #[test]
    fn the_operator_run_redis_is_reached_where_the_app_reaches_it_with_the_generated_password() {
        let app = example("shop");
        let key = AppKey::of(&app);
        let endpoint = endpoint(&app, &key);
        let validated = validated_example("shop");
        assert_eq!(endpoint.url, runtime_config(&validated).redis.url);
        let (secret, secret_key) = endpoint.password.expect("a password");
        let template = render(&validated)
            .secrets
            .into_iter()
            .find(|template| template.name() == secret)
            .expect("the operator generates this Secret");
        assert!(
            template.keys.contains(&secret_key.as_str()),
            "{:?}",
            template.keys
        );
    }

    #[test]
    fn each_queue_of_the_worker_pools_is_read_once() {
        let mut app = example("shop");
        let mut extra = app.spec.workers[0].clone();
        extra.name = "email-more".into();
        app.spec.workers.push(extra);
        assert_eq!(app_queues(&app), ["email:send", "analytics:track"]);
    }

    #[test]
    fn a_group_without_a_known_lag_falls_back_to_length_minus_pending() {
        let group = |lag: Value| {
            Value::Array(vec![Value::Array(vec![
                Value::BulkString(b"name".to_vec()),
                Value::BulkString(WORKER_GROUP.as_bytes().to_vec()),
                Value::BulkString(b"pending".to_vec()),
                Value::Int(3),
                Value::BulkString(b"lag".to_vec()),
                lag,
            ])])
        };
        assert_eq!(worker_group(&group(Value::Int(6))), Some((Some(6), 3)));
        assert_eq!(worker_group(&group(Value::Nil)), Some((None, 3)));
        let other = Value::Array(vec![Value::Map(vec![(
            Value::SimpleString("name".into()),
            Value::SimpleString("someone-else".into()),
        )])]);
        assert_eq!(worker_group(&other), None);
    }
}
