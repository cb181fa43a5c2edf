//! The `database` section: sharded Postgres, its failover, storage and connection pool, and
//! their defaults.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::common::{ResourceAmounts, ResourceSpec};

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
    #[serde(default = "postgres_image")]
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
    #[serde(default = "shards")]
    #[schemars(range(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("database.shards cannot be changed yet: moving data between shards (resharding) is not supported; set it back to its previous value, or create a new ScaledApp"))]
    pub shards: i32,
    /// Streaming read replicas per shard (0 for none). A shard is one StatefulSet of
    /// `1 + replicasPerShard` pods; the operator chooses which of them is the primary.
    #[serde(default = "replicas_per_shard")]
    #[schemars(range(min = 0, max = 8))]
    pub replicas_per_shard: i32,
    /// Number of fixed hash slots keys are spread over; slots, not keys, are assigned to shards.
    /// Immutable: changing it would move almost every key.
    #[serde(default = "slots")]
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
    #[serde(default = "postgres_resources")]
    pub resources: ResourceSpec,
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

fn postgres_image() -> String {
    "postgres:17-alpine".into()
}
fn shards() -> i32 {
    1
}
fn replicas_per_shard() -> i32 {
    2
}
fn slots() -> i32 {
    1024
}

fn postgres_resources() -> ResourceSpec {
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

/// Automatic failover of a shard's primary.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// Seconds a primary must be unreachable or not ready before a replica is promoted. When its
    /// instance manager cannot be reached at all (a partition rather than a crash), the operator
    /// also waits `fenceAfterSeconds`, by which time the old primary has stopped accepting writes.
    #[serde(default = "failover_delay")]
    #[schemars(range(min = 1, max = 600))]
    pub delay_seconds: i32,
    /// A primary whose instance manager cannot confirm with the API server, for this long, that
    /// it is still the chosen primary stops accepting writes (its sessions are terminated), so
    /// two primaries never accept writes at once.
    #[serde(default = "fence_after")]
    #[schemars(range(min = 5, max = 600))]
    pub fence_after_seconds: i32,
}

impl Default for FailoverSpec {
    fn default() -> Self {
        FailoverSpec {
            delay_seconds: failover_delay(),
            fence_after_seconds: fence_after(),
        }
    }
}

fn failover_delay() -> i32 {
    10
}
fn fence_after() -> i32 {
    20
}

/// A volume claim.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each volume.
    #[serde(default = "postgres_storage")]
    #[schemars(regex(pattern = r"^[0-9]+(Mi|Gi|Ti)$"))]
    pub size: String,
    /// StorageClass; the cluster default when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: postgres_storage(),
            storage_class_name: None,
        }
    }
}

fn postgres_storage() -> String {
    "10Gi".into()
}

/// Connection pool per pod and shard primary.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    /// Connections kept open.
    #[serde(default = "pool_size")]
    #[schemars(range(min = 1, max = 500))]
    pub size: i32,
    /// Extra connections allowed under burst load.
    #[serde(default = "pool_overflow")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_overflow: i32,
    /// Milliseconds a request waits for a connection before it is answered 503.
    #[serde(default = "acquire_timeout")]
    #[schemars(range(min = 10, max = 60000))]
    pub acquire_timeout_ms: i32,
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

fn pool_size() -> i32 {
    20
}
fn pool_overflow() -> i32 {
    40
}
fn acquire_timeout() -> i32 {
    2000
}
