//! The contract between the operator and the app: one JSON document, written by the operator into
//! the `<name>-config` ConfigMap under [`CONFIG_KEY`], mounted into every app and worker pod at
//! [`CONFIG_PATH`], and read by the app at start-up. A running app re-reads the file and applies
//! changes of [`RuntimeConfig::shard_map`] and [`RuntimeConfig::rate_limit`] live; every other
//! setting takes effect when the pods are replaced (the operator rolls them when the document
//! changes).
//!
//! Both sides compile against these types, so a field cannot be renamed on one side only.
//! Secrets never appear here: passwords reach the pods as environment variables whose names are
//! the `ENV_*` constants below, filled from the generated Secrets.
//!
//! Compatibility rule: fields may be added with `#[serde(default)]`; renaming or removing a field
//! needs a new [`RuntimeConfig::schema_version`].

mod error;
pub mod instance;
pub mod metrics;
pub mod replication;
pub mod secret;
mod shard_map;

pub use error::error_chain;
pub use secret::Secret;
pub use shard_map::{
    ShardEndpoints, ShardMap, ShardMapError, SlotRange, balanced_assignment, rebalance,
    slot_for_key,
};

use serde::{Deserialize, Serialize};

/// Key of the JSON document inside the ConfigMap.
pub const CONFIG_KEY: &str = "config.json";
/// Directory the ConfigMap is mounted at inside app and worker pods.
pub const CONFIG_DIR: &str = "/etc/scaled";
/// Full path of the document inside app and worker pods.
pub const CONFIG_PATH: &str = "/etc/scaled/config.json";
/// The schema version this crate writes and understands.
pub const SCHEMA_VERSION: u32 = 1;

/// Environment variable carrying the Postgres password of the application role.
pub const ENV_DATABASE_PASSWORD: &str = "SCALED_DATABASE_PASSWORD";
/// Environment variable carrying the Redis password (absent when Redis has none).
pub const ENV_REDIS_PASSWORD: &str = "SCALED_REDIS_PASSWORD";
/// Environment variable carrying the secret that keys the hash under which session ids are stored
/// in Redis (a dump of Redis then yields no usable cookie). ETags are plain content hashes.
pub const ENV_SESSION_SECRET: &str = "SCALED_SESSION_SECRET";
/// Environment variable carrying the session secret in use before the last rotation; unset or
/// empty when there is none. The app still accepts session tokens (and password-set tokens)
/// made under it, finding their sessions under the key it derives, but makes nothing new with
/// it: sessions survive a change of [`ENV_SESSION_SECRET`]. It can be removed once the absolute
/// session lifetime (`sessions.maxLifetimeSeconds`) has passed since the change.
pub const ENV_SESSION_SECRET_PREVIOUS: &str = "SCALED_SESSION_SECRET_PREVIOUS";
/// Environment variable naming the config file (defaults to [`CONFIG_PATH`]).
pub const ENV_CONFIG_PATH: &str = "SCALED_CONFIG";
/// Environment variable with the pod name, used as the queue consumer name.
pub const ENV_POD_NAME: &str = "SCALED_POD_NAME";

/// Queue of order confirmation emails.
pub const EMAIL_QUEUE: &str = "email:send";
/// Queue of analytics events.
pub const ANALYTICS_QUEUE: &str = "analytics:track";
/// Every queue the app has a handler for. A worker pool may only name these: a message on any
/// other stream would find no handler and go straight to the dead-letter stream, so the operator's
/// CRD refuses other names.
pub const KNOWN_QUEUES: [&str; 2] = [EMAIL_QUEUE, ANALYTICS_QUEUE];

/// Everything the app needs to know about the stack around it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// Version of this document's layout; the app refuses versions it does not know.
    pub schema_version: u32,
    /// Port the HTTP server listens on.
    pub http_port: u16,
    /// Port serving `/metrics` (kept apart so scraping never competes with user traffic).
    pub metrics_port: u16,
    /// Postgres connection settings shared by every shard.
    pub database: DatabaseSettings,
    /// Slot -> shard assignment and each shard's endpoints.
    pub shard_map: ShardMap,
    /// L1 (in-process) and L2 (Redis) cache settings.
    pub cache: CacheSettings,
    /// Redis connection (cache, sessions, rate limiter and queues share it).
    pub redis: RedisSettings,
    /// Per-client rate limiting.
    pub rate_limit: RateLimitSettings,
    /// Session store settings.
    pub sessions: SessionSettings,
    /// HTTP caching headers for CDN and browsers.
    pub cdn: CdnSettings,
    /// Queue behaviour shared by producers and workers.
    pub queues: QueueSettings,
}

/// Postgres settings that are the same for every shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSettings {
    /// Database name on every shard.
    pub name: String,
    /// Application role (its password is in [`ENV_DATABASE_PASSWORD`]).
    pub user: String,
    /// Connections each pod keeps open per shard primary.
    pub pool_size: u32,
    /// Extra connections a pod may open per shard primary under burst load.
    pub max_overflow: u32,
    /// How long a request waits for a pooled connection before answering 503.
    pub acquire_timeout_ms: u64,
    /// Statement timeout applied to every connection.
    pub statement_timeout_ms: u64,
    /// Milliseconds after a write during which the writer's reads of that shard go to the primary,
    /// as a fallback when no LSN token is available (read-your-writes).
    pub read_your_writes_window_ms: u64,
}

impl DatabaseSettings {
    /// Largest number of connections one pod opens to one primary.
    pub fn max_connections(&self) -> u32 {
        self.pool_size.saturating_add(self.max_overflow)
    }
}

/// Cache layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheSettings {
    /// Upper bound on L1 entries per pod.
    pub l1_max_entries: u64,
    /// Time to live of L1 entries, in seconds. Short, because other pods' writes reach L1 only
    /// through invalidation messages or expiry.
    pub l1_ttl_seconds: u64,
    /// Default time to live of L2 (Redis) entries, in seconds.
    pub default_ttl_seconds: u64,
    /// Budget for one Redis cache call; slower calls count as a miss.
    pub redis_timeout_ms: u64,
}

/// Redis connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedisSettings {
    /// `redis://host:port/db` without credentials.
    pub url: String,
    /// Whether a password is expected in [`ENV_REDIS_PASSWORD`].
    pub password_required: bool,
    /// How many Redis replicas must hold a write (`WAIT`) before the app counts it as durable:
    /// a queue message before its outbox row is deleted, a new or revoked session before the
    /// answer. 0 when Redis has no replicas (an external Redis, or `replicas: 0`): replication
    /// then cannot be waited for and a failover is not possible either.
    #[serde(default)]
    pub confirm_replicas: u32,
}

/// What the rate limiter does when Redis cannot be reached. Written as the variant's name
/// (`"FailOpen"`, `"FailClosed"`, `"Local"`); an app older than a variant refuses a document
/// that names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureMode {
    /// Allow the request (availability over strictness).
    FailOpen,
    /// Reject the request with 503 (strictness over availability).
    FailClosed,
    /// Each pod limits each client itself, with the same limits and windows, until Redis answers
    /// again: with N serving pods a client gets at most N times the limit.
    Local,
}

/// Sliding-window rate limiting per client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSettings {
    /// Requests allowed per window and client.
    pub limit: u32,
    /// Window length in seconds.
    pub window_seconds: u32,
    /// Behaviour when Redis is down.
    pub failure_mode: FailureMode,
    /// How many reverse proxies (load balancers, ingress controllers) every request passes
    /// through before the app. The client address is then the entry that many places from the
    /// right of `X-Forwarded-For` (the last one a trusted proxy appended); with 0 the header is
    /// ignored and the peer address of the connection is the client. Set it to exactly the
    /// number of proxies that append to the header: one too many lets a client choose its own
    /// address (and so its own rate-limit bucket), one too few limits a proxy instead of its
    /// clients.
    #[serde(default)]
    pub trusted_proxy_hops: u32,
}

/// Session store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionSettings {
    /// Session lifetime in seconds (sliding).
    pub ttl_seconds: u64,
    /// Most seconds a session lives after its sign-in, however active (documents written before
    /// the field existed get [`DEFAULT_SESSION_MAX_LIFETIME_SECONDS`]).
    #[serde(default = "default_session_max_lifetime")]
    pub max_lifetime_seconds: u64,
    /// Whether the session cookie carries `Secure` (false only for plain-HTTP development).
    pub cookie_secure: bool,
    /// Name of the session cookie.
    pub cookie_name: String,
}

/// Default absolute session lifetime: a day.
pub const DEFAULT_SESSION_MAX_LIFETIME_SECONDS: u64 = 24 * 60 * 60;

fn default_session_max_lifetime() -> u64 {
    DEFAULT_SESSION_MAX_LIFETIME_SECONDS
}

/// HTTP caching for public responses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdnSettings {
    /// `max-age` for public GET responses.
    pub max_age_seconds: u32,
}

/// Queue behaviour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueSettings {
    /// Deliveries before a message is moved to the dead-letter stream.
    pub max_attempts: u32,
    /// A message unacknowledged this long is reclaimed from its (presumably dead) consumer.
    pub claim_idle_ms: u64,
    /// First retry delay; doubles per attempt.
    pub retry_backoff_ms: u64,
}

/// Errors found when loading a [`RuntimeConfig`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The document is not valid JSON for this schema.
    #[error("failed to parse runtime config: {0}")]
    Parse(#[from] serde_json::Error),
    /// The document was written by a newer operator.
    #[error(
        "runtime config schema version {found} is not supported (this build understands {SCHEMA_VERSION})"
    )]
    UnsupportedVersion {
        /// Version in the document.
        found: u32,
    },
    /// The shard map is inconsistent.
    #[error("runtime config has an invalid shard map: {0}")]
    ShardMap(#[from] ShardMapError),
    /// A number is out of range.
    #[error("runtime config field {field} is invalid: {reason}")]
    Invalid {
        /// Field path.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

impl RuntimeConfig {
    /// Parses and checks a document.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let config: RuntimeConfig = serde_json::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Serialises the document the way the operator writes it (stable, pretty).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("RuntimeConfig has only serialisable fields")
    }

    /// Checks invariants that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(ConfigError::UnsupportedVersion {
                found: self.schema_version,
            });
        }
        self.shard_map.validate()?;
        let checks: [(bool, &'static str, &'static str); 5] = [
            (
                self.database.pool_size == 0,
                "database.poolSize",
                "must be at least 1",
            ),
            (
                self.rate_limit.limit == 0,
                "rateLimit.limit",
                "must be at least 1",
            ),
            (
                self.rate_limit.window_seconds == 0,
                "rateLimit.windowSeconds",
                "must be at least 1",
            ),
            (
                self.cache.l1_max_entries == 0,
                "cache.l1MaxEntries",
                "must be at least 1",
            ),
            (
                self.queues.max_attempts == 0,
                "queues.maxAttempts",
                "must be at least 1",
            ),
        ];
        match checks.into_iter().find(|(bad, _, _)| *bad) {
            Some((_, field, reason)) => Err(ConfigError::Invalid { field, reason }),
            None => Ok(()),
        }
    }

    /// A complete document for local development and tests: `shards` shards on the given
    /// primary/replica endpoints, Redis at `redis_url`, and the article's defaults elsewhere.
    pub fn local(
        shards: Vec<ShardEndpoints>,
        redis_url: &str,
        slots: u32,
    ) -> Result<Self, ConfigError> {
        let shard_map = ShardMap::balanced(slots, shards)?;
        let config = RuntimeConfig {
            schema_version: SCHEMA_VERSION,
            http_port: 8080,
            metrics_port: 9090,
            database: DatabaseSettings {
                name: "app".into(),
                user: "app".into(),
                pool_size: 20,
                max_overflow: 40,
                acquire_timeout_ms: 2_000,
                statement_timeout_ms: 5_000,
                read_your_writes_window_ms: 5_000,
            },
            shard_map,
            cache: CacheSettings {
                l1_max_entries: 10_000,
                l1_ttl_seconds: 30,
                default_ttl_seconds: 3_600,
                redis_timeout_ms: 50,
            },
            redis: RedisSettings {
                url: redis_url.to_string(),
                password_required: false,
                confirm_replicas: 0,
            },
            rate_limit: RateLimitSettings {
                limit: 100,
                window_seconds: 60,
                failure_mode: FailureMode::FailOpen,
                trusted_proxy_hops: 0,
            },
            sessions: SessionSettings {
                ttl_seconds: 3_600,
                max_lifetime_seconds: DEFAULT_SESSION_MAX_LIFETIME_SECONDS,
                cookie_secure: false,
                cookie_name: "sid".into(),
            },
            cdn: CdnSettings {
                max_age_seconds: 3_600,
            },
            queues: QueueSettings {
                max_attempts: 5,
                claim_idle_ms: 30_000,
                retry_backoff_ms: 1_000,
            },
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_document_written_before_the_session_lifetime_existed_gets_a_day() {
        let config =
            RuntimeConfig::local(two_shards(), "redis://127.0.0.1:6379", 16).expect("valid");
        let mut document: serde_json::Value =
            serde_json::from_str(&config.to_json()).expect("json");
        let sessions = document["sessions"].as_object_mut().expect("sessions");
        assert!(sessions.remove("maxLifetimeSeconds").is_some());
        let read: RuntimeConfig = serde_json::from_value(document).expect("an older document");
        assert_eq!(read.sessions.max_lifetime_seconds, 86_400);
    }

    use super::*;

    fn two_shards() -> Vec<ShardEndpoints> {
        (0..2)
            .map(|index| ShardEndpoints {
                index,
                primary: format!("127.0.0.1:{}", 5432 + index),
                replicas: vec![format!("127.0.0.1:{}", 6432 + index)],
            })
            .collect()
    }

    #[test]
    fn a_local_config_round_trips_through_json() {
        let config =
            RuntimeConfig::local(two_shards(), "redis://127.0.0.1:6379", 1024).expect("valid");
        let parsed = RuntimeConfig::from_json(&config.to_json()).expect("parses");
        assert_eq!(parsed, config);
    }

    #[test]
    fn a_newer_schema_version_is_refused() {
        let mut config =
            RuntimeConfig::local(two_shards(), "redis://127.0.0.1:6379", 16).expect("valid");
        config.schema_version = SCHEMA_VERSION + 1;
        let error = RuntimeConfig::from_json(&config.to_json()).expect_err("must refuse");
        assert!(
            matches!(error, ConfigError::UnsupportedVersion { .. }),
            "{error}"
        );
    }

    #[test]
    fn a_document_without_trusted_proxy_hops_trusts_no_proxy() {
        let config =
            RuntimeConfig::local(two_shards(), "redis://127.0.0.1:6379", 16).expect("valid");
        let mut document: serde_json::Value =
            serde_json::from_str(&config.to_json()).expect("json");
        let removed = document["rateLimit"]
            .as_object_mut()
            .expect("rateLimit is an object")
            .remove("trustedProxyHops");
        assert_eq!(removed, Some(serde_json::json!(0)), "written as camelCase");
        let parsed =
            RuntimeConfig::from_json(&document.to_string()).expect("older documents parse");
        assert_eq!(parsed.rate_limit.trusted_proxy_hops, 0);
    }

    #[test]
    fn a_zero_rate_limit_is_refused_with_the_field_name() {
        let mut config =
            RuntimeConfig::local(two_shards(), "redis://127.0.0.1:6379", 16).expect("valid");
        config.rate_limit.limit = 0;
        let error = config.validate().expect_err("must refuse");
        assert!(error.to_string().contains("rateLimit.limit"), "{error}");
    }

    #[test]
    fn every_failure_mode_is_written_by_its_name() {
        for (mode, name) in [
            (FailureMode::FailOpen, "FailOpen"),
            (FailureMode::FailClosed, "FailClosed"),
            (FailureMode::Local, "Local"),
        ] {
            assert_eq!(serde_json::to_value(mode).expect("json"), name);
            let read: FailureMode = serde_json::from_value(name.into()).expect("parses");
            assert_eq!(read, mode);
        }
    }
}
