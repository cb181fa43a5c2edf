//! The ScaledApp status: written only by the operator, read by `kubectl get sapp`, the `status`
//! subcommand and the Postgres instance managers (which obey `shards[].primaryPod`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Observed state, written only by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaledAppStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded` and `Paused`, each with a reason and a message naming
    /// what blocks readiness.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The app Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<WorkloadStatus>,
    /// Redis (absent when an external Redis is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<WorkloadStatus>,
    /// One entry per shard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardStatus>,
    /// `ready/total` shards, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards_summary: Option<String>,
    /// One entry per worker pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerPoolStatus>,
    /// `ready/total` worker pools, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers_summary: Option<String>,
    /// Endpoints the app is configured with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
}

/// Readiness of one Deployment or StatefulSet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// Name of the Deployment or StatefulSet.
    pub name: String,
    /// Replicas wanted.
    pub desired: i32,
    /// Replicas ready.
    pub ready: i32,
    /// `ready/desired`.
    pub summary: String,
}

/// One shard.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatus {
    /// Shard number.
    pub index: i32,
    /// Slots the shard owns.
    pub slots: i32,
    /// The primary StatefulSet.
    pub primary: WorkloadStatus,
    /// The replica StatefulSet (absent with `replicasPerShard: 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<WorkloadStatus>,
    /// Slot ranges owned, for example `0-511`.
    pub slot_ranges: String,
}

/// One worker pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPoolStatus {
    /// Pool name.
    pub pool: String,
    /// Queues drained.
    pub queues: Vec<String>,
    /// The pool's Deployment.
    pub workload: WorkloadStatus,
}

/// Where things are.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// The app Service, `host:port`.
    pub app: String,
    /// Redis, `redis://host:port`.
    pub redis: String,
    /// Each shard's primary, `host:port`.
    pub primaries: Vec<String>,
    /// The ConfigMap holding the app's runtime configuration (shard map and settings).
    pub config_map: String,
}
