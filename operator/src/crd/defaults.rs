//! Defaults of the ScaledApp spec, the article's numbers. serde applies them when a field is
//! absent and schemars writes them into the CRD schema, so `kubectl get -o yaml` shows what the
//! operator uses.

use std::collections::BTreeMap;

use super::spec::*;

impl Default for AppSpec {
    fn default() -> Self {
        AppSpec {
            image: None,
            port: app_port(),
            metrics_port: metrics_port(),
            replicas: app_replicas(),
            resources: app_resources(),
            env: Vec::new(),
            pod_labels: BTreeMap::new(),
            pod_annotations: BTreeMap::new(),
        }
    }
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        AutoscalingSpec {
            enabled: true,
            target_cpu_utilization_percent: cpu_target(),
            target_requests_per_second: rps_target(),
            target_response_time_ms: Some(500),
            scale_up: scale_up(),
            scale_down: scale_down(),
        }
    }
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

impl Default for L1CacheSpec {
    fn default() -> Self {
        L1CacheSpec {
            max_entries: l1_entries(),
            ttl_seconds: l1_ttl(),
        }
    }
}

impl Default for RedisSpec {
    fn default() -> Self {
        RedisSpec {
            image: redis_image(),
            max_memory_mib: redis_memory(),
            max_memory_policy: MaxMemoryPolicy::default(),
            persistence: RedisPersistence::default(),
        }
    }
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

impl Default for DatabaseSpec {
    fn default() -> Self {
        DatabaseSpec {
            image: postgres_image(),
            bin_dir: None,
            run_as_user: None,
            shards: shards(),
            replicas_per_shard: replicas_per_shard(),
            slots: slots(),
            storage: StorageSpec::default(),
            pool: PoolSpec::default(),
            synchronous_replication: false,
            failover: FailoverSpec::default(),
            resources: postgres_resources(),
        }
    }
}

impl Default for FailoverSpec {
    fn default() -> Self {
        FailoverSpec {
            delay_seconds: failover_delay(),
            fence_after_seconds: fence_after(),
        }
    }
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: postgres_storage(),
            storage_class_name: None,
        }
    }
}

impl Default for PoolSpec {
    fn default() -> Self {
        PoolSpec {
            size: pool_size(),
            max_overflow: pool_overflow(),
            acquire_timeout_ms: acquire_timeout(),
        }
    }
}

impl Default for RateLimitSpec {
    fn default() -> Self {
        RateLimitSpec {
            requests: rate_limit(),
            window_seconds: rate_window(),
            failure_mode: RateLimitFailureMode::default(),
            trusted_proxy_hops: 0,
        }
    }
}

impl Default for CdnSpec {
    fn default() -> Self {
        CdnSpec {
            max_age_seconds: cdn_max_age(),
        }
    }
}

impl Default for SessionSpec {
    fn default() -> Self {
        SessionSpec {
            ttl_seconds: session_ttl(),
            max_lifetime_seconds: session_max_lifetime(),
            cookie_secure: true,
        }
    }
}

pub(super) fn enabled() -> bool {
    true
}
pub(super) fn app_port() -> u16 {
    8080
}
pub(super) fn metrics_port() -> u16 {
    9090
}
pub(super) fn app_replicas() -> ReplicaRange {
    ReplicaRange { min: 3, max: 50 }
}
pub(super) fn app_resources() -> ResourceSpec {
    ResourceSpec {
        requests: ResourceAmounts {
            cpu: "250m".into(),
            memory: "256Mi".into(),
        },
        limits: Some(ResourceAmounts {
            cpu: "1".into(),
            memory: "512Mi".into(),
        }),
    }
}
pub(super) fn cpu_target() -> i32 {
    70
}
pub(super) fn rps_target() -> i32 {
    1000
}
pub(super) fn scale_up() -> ScalingRules {
    ScalingRules {
        stabilization_window_seconds: 0,
        max_percent_per_minute: 100,
        max_pods_per_minute: 4,
    }
}
pub(super) fn scale_down() -> ScalingRules {
    ScalingRules {
        stabilization_window_seconds: 300,
        max_percent_per_minute: 10,
        max_pods_per_minute: 1,
    }
}
pub(super) fn cache_ttl() -> i32 {
    3600
}
pub(super) fn l1_entries() -> i64 {
    10_000
}
pub(super) fn l1_ttl() -> i32 {
    30
}
pub(super) fn redis_image() -> String {
    "redis:7.4-alpine".into()
}
pub(super) fn redis_memory() -> i32 {
    256
}
pub(super) fn redis_storage() -> String {
    "1Gi".into()
}
pub(super) fn postgres_image() -> String {
    "postgres:17-alpine".into()
}
pub(super) fn shards() -> i32 {
    1
}
pub(super) fn replicas_per_shard() -> i32 {
    2
}
pub(super) fn slots() -> i32 {
    1024
}
pub(super) fn postgres_storage() -> String {
    "10Gi".into()
}
pub(super) fn postgres_resources() -> ResourceSpec {
    ResourceSpec {
        requests: ResourceAmounts {
            cpu: "500m".into(),
            memory: "1Gi".into(),
        },
        limits: Some(ResourceAmounts {
            cpu: "2".into(),
            memory: "2Gi".into(),
        }),
    }
}
pub(super) fn pool_size() -> i32 {
    20
}
pub(super) fn pool_overflow() -> i32 {
    40
}
pub(super) fn acquire_timeout() -> i32 {
    2000
}
pub(super) fn workers() -> Vec<WorkerPoolSpec> {
    vec![WorkerPoolSpec {
        name: "default".into(),
        queues: vec!["email:send".into(), "analytics:track".into()],
        replicas: worker_replicas(),
        target_queue_depth_per_replica: queue_depth(),
        concurrency: concurrency(),
        resources: worker_resources(),
    }]
}
pub(super) fn worker_replicas() -> ReplicaRange {
    ReplicaRange { min: 1, max: 10 }
}
pub(super) fn queue_depth() -> i32 {
    100
}
pub(super) fn concurrency() -> i32 {
    4
}
pub(super) fn worker_resources() -> ResourceSpec {
    ResourceSpec {
        requests: ResourceAmounts {
            cpu: "100m".into(),
            memory: "128Mi".into(),
        },
        limits: Some(ResourceAmounts {
            cpu: "500m".into(),
            memory: "256Mi".into(),
        }),
    }
}
pub(super) fn rate_limit() -> i32 {
    100
}
pub(super) fn rate_window() -> i32 {
    60
}
pub(super) fn cdn_max_age() -> i32 {
    3600
}
pub(super) fn session_ttl() -> i32 {
    3600
}
pub(super) fn session_max_lifetime() -> i32 {
    scaled_contract::DEFAULT_SESSION_MAX_LIFETIME_SECONDS as i32
}
pub(super) fn failover_delay() -> i32 {
    10
}
pub(super) fn fence_after() -> i32 {
    20
}
