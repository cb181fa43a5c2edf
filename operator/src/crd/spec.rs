//! The ScaledApp spec: what a user asks for. Every field's doc comment becomes `kubectl explain`
//! text; schema and CEL rules make the API server refuse what cannot work, saying what to fix.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::EnvVar;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::ScaledAppStatus;
use super::{MAX_NAME_LENGTH, defaults};

/// Desired state of a ScaledApp: the whole stack of a high-traffic web service.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "scaled.dev",
    version = "v1alpha1",
    kind = "ScaledApp",
    plural = "scaledapps",
    shortname = "sapp",
    category = "all",
    namespaced,
    status = "ScaledAppStatus",
    derive = "PartialEq",
    doc = "A ScaledApp runs a stateless app behind a Service with an L1/L2 cache (in-process and Redis), \
           sharded Postgres with streaming read replicas, Redis queues drained by worker pools, and \
           autoscaling rules, all from one resource.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "App", type_ = "string", json_path = ".status.app.summary", description = "Ready/desired app pods"),
    printcolumn(name = "Shards", type_ = "string", json_path = ".status.shardsSummary", description = "Ready/total database shards"),
    printcolumn(name = "Workers", type_ = "string", json_path = ".status.workersSummary", description = "Ready/total worker pools"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1),
    printcolumn(name = "Failover", type_ = "string", json_path = ".status.failovers", description = "Failovers and switchovers in progress", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(format!("size(self.metadata.name) <= {MAX_NAME_LENGTH}")).message(format!("metadata.name must be at most {MAX_NAME_LENGTH} characters so that every child name (for example <name>-shard-63-replica) fits Kubernetes' limits; choose a shorter name").as_str()),
)]
#[serde(rename_all = "camelCase")]
pub struct ScaledAppSpec {
    /// The stateless application: image, replicas, resources and pod settings.
    #[serde(default)]
    pub app: AppSpec,

    /// Horizontal autoscaling of the app (HPA autoscaling/v2). Worker pools scale on queue depth,
    /// configured per pool.
    #[serde(default)]
    pub autoscaling: AutoscalingSpec,

    /// Cache layers: L1 in each app process, L2 in Redis (in-cluster or external).
    #[serde(default)]
    pub cache: CacheSpec,

    /// Sharded Postgres: per shard one primary and `replicasPerShard` streaming read replicas.
    #[serde(default)]
    pub database: DatabaseSpec,

    /// Worker pools draining Redis queues. Each pool is a Deployment running the app image in
    /// `worker` mode. Defaults to one pool, `default`, draining `email:send` and `analytics:track`.
    #[serde(default = "defaults::workers")]
    #[schemars(length(max = 8))]
    #[x_kube(
        merge_strategy = ListMerge::Map(vec!["name".into()]),
        validation = Rule::new("self.all(pool, self.exists_one(other, other.name == pool.name))").message("worker pool names must be unique; rename the duplicate pool")
    )]
    pub workers: Vec<WorkerPoolSpec>,

    /// Per-client rate limiting of the app's rate-limited routes.
    #[serde(default)]
    pub rate_limit: RateLimitSpec,

    /// HTTP caching headers for a CDN in front of the app.
    #[serde(default)]
    pub cdn: CdnSpec,

    /// Server-side sessions kept in Redis.
    #[serde(default)]
    pub sessions: SessionSpec,

    /// Secrets (in the ScaledApp's namespace) with credentials for pulling images from private
    /// registries, given to every pod the ScaledApp runs: app, workers, Redis and Postgres (whose
    /// instance manager comes from the operator's image).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<ImagePullSecret>,

    /// When true the operator stops changing this ScaledApp's children (status still reports
    /// their state and the `Paused` condition says so). Set back to false to resume.
    #[serde(default)]
    pub paused: bool,

    /// What happens to data when the ScaledApp is deleted. `Retain` (default) keeps the Postgres
    /// and Redis volumes (PVCs) and the generated Secrets, so re-creating a ScaledApp with the same
    /// name finds its data again; `Delete` removes them with everything else.
    #[serde(default)]
    pub data_policy: DataPolicy,
}

/// A Secret of type `kubernetes.io/dockerconfigjson` in the ScaledApp's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ImagePullSecret {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Whether data outlives the ScaledApp.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataPolicy {
    /// Keep PVCs and Secrets after the ScaledApp is deleted.
    #[default]
    Retain,
    /// Delete PVCs and Secrets together with the ScaledApp.
    Delete,
}

/// The stateless application Deployment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppSpec {
    /// Container image of the app. The same image runs the workers (`worker` mode) and the
    /// schema migrations (`migrate` mode). When omitted, the operator's default app image: the
    /// `scaled-app` image of the operator's own release, from the registry its Helm chart names
    /// (`image.registry`). No public images exist yet: build and push them first (`make push`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Port the app serves HTTP on; the Service exposes it as port 80.
    #[serde(default = "defaults::app_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: u16,

    /// Port the app serves Prometheus metrics on (`/metrics`), kept apart from user traffic.
    #[serde(default = "defaults::metrics_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub metrics_port: u16,

    /// Replica bounds. With autoscaling enabled the HPA moves between them; otherwise the
    /// Deployment runs `min` replicas.
    #[serde(default = "defaults::app_replicas")]
    pub replicas: ReplicaRange,

    /// CPU and memory for each app container. Requests are required because the CPU target of
    /// the HPA is a percentage of the CPU request.
    #[serde(default = "defaults::app_resources")]
    pub resources: ResourceSpec,

    /// Extra environment variables for app and worker containers (same format as a Pod's `env`).
    /// Names starting with `SCALED_` are reserved for the operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(e, !e.name.startsWith('SCALED_'))").message("env names starting with SCALED_ are reserved for the operator; rename the variable"))]
    pub env: Vec<EnvVar>,

    /// Extra labels for app and worker pods (the operator's own `app.kubernetes.io/*` labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,

    /// Extra annotations for app and worker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
}

/// Inclusive replica bounds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("self.min <= self.max").message("replicas.min must be less than or equal to replicas.max"))]
pub struct ReplicaRange {
    /// Fewest replicas (the HPA's minReplicas).
    #[schemars(range(min = 1, max = 1000))]
    pub min: i32,
    /// Most replicas (the HPA's maxReplicas).
    #[schemars(range(min = 1, max = 1000))]
    pub max: i32,
}

/// Compute resources of one container, as Kubernetes quantities (`500m`, `256Mi`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ResourceSpec {
    /// Guaranteed resources; the scheduler places pods by these and CPU autoscaling is a
    /// percentage of `requests.cpu`.
    pub requests: ResourceAmounts,
    /// Upper bounds; omit a value for no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceAmounts>,
}

/// A CPU and a memory quantity.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ResourceAmounts {
    /// CPU, for example `250m` or `1`.
    #[schemars(regex(pattern = r"^([0-9]+m|[0-9]+(\.[0-9]{1,3})?)$"))]
    pub cpu: String,
    /// Memory, for example `256Mi` or `1Gi`.
    #[schemars(regex(pattern = r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub memory: String,
}

/// How the app's HPA scales. The article's rules map onto autoscaling/v2 like this: "scale up
/// when CPU is above 70%" is a Resource metric with averageUtilization 70; "request rate above
/// 1000/s per instance" is a Pods metric `http_requests_per_second` with averageValue 1000
/// (needs a custom-metrics adapter such as prometheus-adapter); "response time above 500 ms" is
/// a Pods metric `http_request_duration_seconds_p95` with averageValue 500m. "Scale down when
/// CPU is below 30% for 5 minutes, request rate below 300/s for 10 minutes" becomes a
/// scale-down stabilization window: the HPA only scales down to the highest recommendation of
/// the window.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// Whether to create the app HPA. When false the app runs `app.replicas.min` replicas.
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
    /// Target average CPU utilisation, percent of the CPU request.
    #[serde(default = "defaults::cpu_target")]
    #[schemars(range(min = 10, max = 100))]
    pub target_cpu_utilization_percent: i32,
    /// Target requests per second per app pod (Pods metric `http_requests_per_second`).
    /// Set to 0 to scale on CPU only.
    #[serde(default = "defaults::rps_target")]
    #[schemars(range(min = 0, max = 1000000))]
    pub target_requests_per_second: i32,
    /// Target p95 response time in milliseconds per pod (Pods metric
    /// `http_request_duration_seconds_p95`). Omit to not scale on latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60000))]
    pub target_response_time_ms: Option<i32>,
    /// How fast to add pods.
    #[serde(default = "defaults::scale_up")]
    pub scale_up: ScalingRules,
    /// How fast to remove pods. The default window of 300 s is the article's "CPU below 30% for
    /// 5 minutes"; use 600 for its "request rate below 300/s for 10 minutes".
    #[serde(default = "defaults::scale_down")]
    pub scale_down: ScalingRules,
}

/// One direction of HPA `behavior`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// The HPA acts on the most conservative recommendation of this many past seconds
    /// (`behavior.*.stabilizationWindowSeconds`).
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: i32,
    /// At most this percent of the current pods may be added/removed per minute (a `Percent`
    /// policy with periodSeconds 60).
    #[schemars(range(min = 1, max = 1000))]
    pub max_percent_per_minute: i32,
    /// At most this many pods may be added/removed per minute (a `Pods` policy with periodSeconds
    /// 60). The HPA uses whichever policy allows the bigger change.
    #[schemars(range(min = 1, max = 1000))]
    pub max_pods_per_minute: i32,
}

/// Cache layers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.redis) && has(self.externalRedis))").message("set either cache.redis (Redis run by the operator) or cache.externalRedis, not both"))]
pub struct CacheSpec {
    /// Default time to live of Redis (L2) cache entries, in seconds.
    #[serde(default = "defaults::cache_ttl")]
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

/// In-process cache; bounded so a hot pod cannot run out of memory, and short-lived because
/// other pods' writes reach it only by invalidation messages.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct L1CacheSpec {
    /// Most entries per pod.
    #[serde(default = "defaults::l1_entries")]
    #[schemars(range(min = 1, max = 10000000))]
    pub max_entries: i64,
    /// Time to live of an entry, in seconds.
    #[serde(default = "defaults::l1_ttl")]
    #[schemars(range(min = 1, max = 3600))]
    pub ttl_seconds: i32,
}

/// Redis run by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// Redis container image.
    #[serde(default = "defaults::redis_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Redis `maxmemory` in MiB; the container's memory is set 25% above it for overhead.
    #[serde(default = "defaults::redis_memory")]
    #[schemars(range(min = 16, max = 262144))]
    pub max_memory_mib: i32,
    /// What Redis evicts when `maxmemory` is reached.
    #[serde(default)]
    pub max_memory_policy: MaxMemoryPolicy,
    /// Append-only-file persistence on a PVC, so queues and sessions survive a Redis restart.
    #[serde(default)]
    pub persistence: RedisPersistence,
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
    #[serde(default = "defaults::enabled")]
    pub enabled: bool,
    /// Volume size.
    #[serde(default = "defaults::redis_storage")]
    #[schemars(regex(pattern = r"^[0-9]+(Mi|Gi|Ti)$"))]
    pub size: String,
    /// StorageClass of the volume; the cluster default when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
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

/// A key of a Secret in the ScaledApp's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Sharded Postgres.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.slots >= self.shards").message("database.slots must be at least database.shards (every shard owns at least one slot)"))]
#[x_kube(validation = Rule::new("!self.synchronousReplication || self.replicasPerShard >= 1").message("database.synchronousReplication needs replicasPerShard >= 1, or every commit would wait forever"))]
pub struct DatabaseSpec {
    /// Postgres container image. Only the server binaries are used (`postgres`, `initdb`,
    /// `pg_basebackup`, `pg_rewind`, `pg_controldata`), not the image's entrypoint: the
    /// operator's instance manager runs as the container's first process. Official `postgres`
    /// images (Alpine or Debian variants) and images built from Debian's packages work.
    #[serde(default = "defaults::postgres_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Directory of the Postgres server binaries in the image. When omitted they are found on
    /// `PATH`, with `pg_config --bindir`, or under `/usr/lib/postgresql/<version>/bin` (Debian's
    /// layout, which is not on `PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^/[^\s]*$"))]
    pub bin_dir: Option<String>,
    /// UID the Postgres containers run as; it must own the data files, so it is the image's
    /// `postgres` user. When omitted: 70 for images whose tag says `alpine` (the official Alpine
    /// variants), otherwise 999 (the official Debian variants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub run_as_user: Option<i64>,
    /// Number of shards. Each shard is a primary with its own replicas and owns a share of the
    /// slots. Cannot be changed after creation until resharding is supported.
    #[serde(default = "defaults::shards")]
    #[schemars(range(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("database.shards cannot be changed yet: moving data between shards (resharding) is not supported; set it back to its previous value, or create a new ScaledApp"))]
    pub shards: i32,
    /// Streaming read replicas per shard (0 for none). A shard is one StatefulSet of
    /// `1 + replicasPerShard` pods; the operator chooses which of them is the primary.
    #[serde(default = "defaults::replicas_per_shard")]
    #[schemars(range(min = 0, max = 8))]
    pub replicas_per_shard: i32,
    /// Number of fixed hash slots keys are spread over; slots, not keys, are assigned to shards.
    /// Immutable: changing it would move almost every key.
    #[serde(default = "defaults::slots")]
    #[schemars(range(min = 1, max = 16384))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("database.slots is immutable (changing it would move almost every key to another shard); set it back to its previous value"))]
    pub slots: i32,
    /// Volume of each Postgres pod.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Connection pool of each app and worker pod, per shard primary.
    #[serde(default)]
    pub pool: PoolSpec,
    /// Commit only after one replica has the WAL (`synchronous_standby_names = ANY 1 (*)`):
    /// no committed write is lost when a primary dies, at the cost of write latency.
    #[serde(default)]
    pub synchronous_replication: bool,
    /// When a shard's primary is lost, the operator promotes the replica with the most WAL.
    #[serde(default)]
    pub failover: FailoverSpec,
    /// CPU and memory of each Postgres container.
    #[serde(default = "defaults::postgres_resources")]
    pub resources: ResourceSpec,
}

/// Automatic failover of a shard's primary.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// Seconds a primary must be unreachable or not ready before a replica is promoted. When its
    /// instance manager cannot be reached at all (a partition rather than a crash), the operator
    /// also waits `fenceAfterSeconds`, by which time the old primary has stopped accepting writes.
    #[serde(default = "defaults::failover_delay")]
    #[schemars(range(min = 1, max = 600))]
    pub delay_seconds: i32,
    /// A primary whose instance manager cannot confirm with the API server, for this long, that
    /// it is still the chosen primary stops accepting writes (its sessions are terminated), so
    /// two primaries never accept writes at once.
    #[serde(default = "defaults::fence_after")]
    #[schemars(range(min = 5, max = 600))]
    pub fence_after_seconds: i32,
}

/// A volume claim.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each volume.
    #[serde(default = "defaults::postgres_storage")]
    #[schemars(regex(pattern = r"^[0-9]+(Mi|Gi|Ti)$"))]
    pub size: String,
    /// StorageClass; the cluster default when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// Connection pool per pod and shard primary.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    /// Connections kept open.
    #[serde(default = "defaults::pool_size")]
    #[schemars(range(min = 1, max = 500))]
    pub size: i32,
    /// Extra connections allowed under burst load.
    #[serde(default = "defaults::pool_overflow")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_overflow: i32,
    /// Milliseconds a request waits for a connection before it is answered 503.
    #[serde(default = "defaults::acquire_timeout")]
    #[schemars(range(min = 10, max = 60000))]
    pub acquire_timeout_ms: i32,
}

/// A pool of workers draining queues.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPoolSpec {
    /// Pool name, a DNS label of at most 15 characters; the Deployment is `<app>-worker-<name>`.
    #[schemars(
        length(min = 1, max = 15),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Queues (Redis streams) this pool drains: `email:send` (order confirmations) and/or
    /// `analytics:track` (analytics events), the queues the app has handlers for.
    #[schemars(
        length(min = 1, max = 16),
        inner(
            length(min = 1, max = 64),
            regex(pattern = r"^[a-z][a-z0-9_.-]*(:[a-z0-9_.-]+)*$")
        )
    )]
    #[x_kube(
        merge_strategy = ListMerge::Set,
        validation = Rule::new(known_queues_rule()).message(known_queues_message().as_str())
    )]
    pub queues: Vec<String>,
    /// Replica bounds; the pool's HPA moves between them on queue depth.
    #[serde(default = "defaults::worker_replicas")]
    pub replicas: ReplicaRange,
    /// Messages waiting per worker replica the HPA aims for (External metric
    /// `scaledapp_queue_depth`, averageValue).
    #[serde(default = "defaults::queue_depth")]
    #[schemars(range(min = 1, max = 1000000))]
    pub target_queue_depth_per_replica: i32,
    /// Messages each worker processes at once.
    #[serde(default = "defaults::concurrency")]
    #[schemars(range(min = 1, max = 256))]
    pub concurrency: i32,
    /// CPU and memory of each worker container.
    #[serde(default = "defaults::worker_resources")]
    pub resources: ResourceSpec,
}

/// Rate limiting per client: per signed-in user, else per client address.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Requests allowed per client and window.
    #[serde(default = "defaults::rate_limit")]
    #[schemars(range(min = 1, max = 1000000))]
    pub requests: i32,
    /// Window length in seconds (sliding).
    #[serde(default = "defaults::rate_window")]
    #[schemars(range(min = 1, max = 86400))]
    pub window_seconds: i32,
    /// What to do when Redis is unreachable: `FailOpen` lets requests through, `FailClosed`
    /// answers 503.
    #[serde(default)]
    pub failure_mode: RateLimitFailureMode,
    /// How many proxies in front of the app (load balancers, CDN) append to `X-Forwarded-For`.
    /// The client address is the entry that many places from the right; with 0 (the default)
    /// the header is ignored and the connection's peer address is the client, so a client can
    /// never choose its own rate-limit identity by sending the header.
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    pub trusted_proxy_hops: i32,
}

/// Rate limiter behaviour without Redis.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RateLimitFailureMode {
    /// Allow requests.
    #[default]
    FailOpen,
    /// Reject requests with 503.
    FailClosed,
}

/// CDN and browser caching of public responses.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CdnSpec {
    /// `Cache-Control: public, max-age` of public GET responses, in seconds. Per-user responses
    /// are always `private, no-store`.
    #[serde(default = "defaults::cdn_max_age")]
    #[schemars(range(min = 0, max = 31536000))]
    pub max_age_seconds: i32,
}

/// Server-side sessions.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxLifetimeSeconds >= self.ttlSeconds").message("sessions.maxLifetimeSeconds must be at least sessions.ttlSeconds: a session cannot end for good before its idle timeout"))]
pub struct SessionSpec {
    /// Session lifetime in seconds, renewed on use.
    #[serde(default = "defaults::session_ttl")]
    #[schemars(range(min = 60, max = 2592000))]
    pub ttl_seconds: i32,
    /// Most seconds a session lives after its sign-in, however active it is; then the user signs
    /// in again. A stolen session cookie stops working after this long at the latest.
    #[serde(default = "defaults::session_max_lifetime")]
    #[schemars(range(min = 60, max = 31536000))]
    pub max_lifetime_seconds: i32,
    /// Mark the session cookie `Secure` (send over HTTPS only). Turn off only for plain-HTTP
    /// development.
    #[serde(default = "defaults::enabled")]
    pub cookie_secure: bool,
}

/// CEL: every queue of a pool is one the app has a handler for. A pool draining any other stream
/// would move each of its messages straight to the dead-letter stream.
fn known_queues_rule() -> String {
    let known: Vec<String> = scaled_contract::KNOWN_QUEUES
        .iter()
        .map(|queue| format!("'{queue}'"))
        .collect();
    format!("self.all(queue, queue in [{}])", known.join(", "))
}

fn known_queues_message() -> String {
    format!(
        "workers[].queues may only name queues the app handles: {}; remove or rename the others",
        scaled_contract::KNOWN_QUEUES.join(", ")
    )
}
