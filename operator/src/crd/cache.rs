//! The `cache` section: the in-process L1 cache, Redis (run by the operator or external), and
//! their defaults.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{SecretKeyRef, enabled};

/// Cache layers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.redis) && has(self.externalRedis))").message("set either cache.redis (Redis run by the operator) or cache.externalRedis, not both"))]
pub struct CacheSpec {
    /// Default time to live of Redis (L2) cache entries, in seconds.
    #[serde(default = "cache_ttl")]
    #[schemars(range(min = 1, max = 604800))]
    pub default_ttl_seconds: i32,
    /// The in-process (L1) cache of each app pod.
    #[serde(default)]
    pub l1: L1CacheSpec,
    /// Redis run by the operator (a StatefulSet). Used when `externalRedis` is not set; omit for
    /// the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// An existing Redis to use instead of running one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_redis: Option<ExternalRedisSpec>,
}

impl Default for CacheSpec {
    fn default() -> Self {
        CacheSpec {
            default_ttl_seconds: cache_ttl(),
            l1: L1CacheSpec::default(),
            redis: None,
            external_redis: None,
        }
    }
}

fn cache_ttl() -> i32 {
    3600
}

/// In-process cache; bounded so a hot pod cannot run out of memory, and short-lived because
/// other pods' writes reach it only by invalidation messages.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct L1CacheSpec {
    /// Most entries per pod.
    #[serde(default = "l1_entries")]
    #[schemars(range(min = 1, max = 10000000))]
    pub max_entries: i64,
    /// Time to live of an entry, in seconds.
    #[serde(default = "l1_ttl")]
    #[schemars(range(min = 1, max = 3600))]
    pub ttl_seconds: i32,
}

impl Default for L1CacheSpec {
    fn default() -> Self {
        L1CacheSpec {
            max_entries: l1_entries(),
            ttl_seconds: l1_ttl(),
        }
    }
}

fn l1_entries() -> i64 {
    10_000
}
fn l1_ttl() -> i32 {
    30
}

/// Redis run by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// Redis container image.
    #[serde(default = "redis_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Redis `maxmemory` in MiB; the container's memory is set 25% above it for overhead.
    #[serde(default = "redis_memory")]
    #[schemars(range(min = 16, max = 262144))]
    pub max_memory_mib: i32,
    /// What Redis evicts when `maxmemory` is reached.
    #[serde(default)]
    pub max_memory_policy: MaxMemoryPolicy,
    /// Append-only-file persistence on a PVC, so queues and sessions survive a Redis restart.
    #[serde(default)]
    pub persistence: RedisPersistence,
    /// Replicas beside the primary. The operator fails over to the most up-to-date replica
    /// when the primary is lost, and the app waits for one replica to hold each queue message
    /// and session change before counting it as done, so a failover loses none of them. With
    /// 0 there is one Redis pod: losing it stops sign-ins and queue delivery until it is back.
    #[serde(default = "redis_replicas")]
    #[schemars(range(min = 0, max = 5))]
    pub replicas: i32,
}

impl Default for RedisSpec {
    fn default() -> Self {
        RedisSpec {
            image: redis_image(),
            max_memory_mib: redis_memory(),
            max_memory_policy: MaxMemoryPolicy::default(),
            persistence: RedisPersistence::default(),
            replicas: redis_replicas(),
        }
    }
}

fn redis_image() -> String {
    "redis:7.4-alpine".into()
}
fn redis_memory() -> i32 {
    256
}
fn redis_replicas() -> i32 {
    1
}

/// Redis eviction policies (`maxmemory-policy`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MaxMemoryPolicy {
    /// Evict any key, least recently used first. Caution: queues and sessions share Redis.
    AllkeysLru,
    /// Evict only keys with a TTL (cache entries, sessions), least recently used first; queues
    /// are never evicted. The default, because queue messages must not be lost.
    #[default]
    VolatileLru,
    /// Evict keys with a TTL, least frequently used first.
    VolatileLfu,
    /// Evict any key, least frequently used first.
    AllkeysLfu,
    /// Refuse writes when full.
    Noeviction,
}

impl MaxMemoryPolicy {
    /// The value Redis expects.
    pub fn as_redis(self) -> &'static str {
        match self {
            MaxMemoryPolicy::AllkeysLru => "allkeys-lru",
            MaxMemoryPolicy::VolatileLru => "volatile-lru",
            MaxMemoryPolicy::VolatileLfu => "volatile-lfu",
            MaxMemoryPolicy::AllkeysLfu => "allkeys-lfu",
            MaxMemoryPolicy::Noeviction => "noeviction",
        }
    }
}

/// Redis persistence.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisPersistence {
    /// Write an append-only file (fsync every second) to a PVC.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Volume size.
    #[serde(default = "redis_storage")]
    #[schemars(regex(pattern = r"^[0-9]+(Mi|Gi|Ti)$"))]
    pub size: String,
    /// StorageClass of the volume; the cluster default when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for RedisPersistence {
    fn default() -> Self {
        RedisPersistence {
            enabled: true,
            size: redis_storage(),
            storage_class_name: None,
        }
    }
}

fn redis_storage() -> String {
    "1Gi".into()
}

/// A Redis the operator does not run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRedisSpec {
    /// `redis://host:port/db` or `rediss://...`, without credentials.
    #[schemars(regex(pattern = r"^rediss?://[^@\s]+$"))]
    pub url: String,
    /// Secret key holding the Redis password; omit when Redis has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
}
