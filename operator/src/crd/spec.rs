//! The ScaledApp spec: what a user asks for. Every field's doc comment becomes `kubectl explain`
//! text; schema and CEL rules make the API server refuse what cannot work, saying what to fix.
//!
//! This file holds the root (`ScaledAppSpec`, from which `ScaledApp` is derived) and its own small
//! fields; each section has a file of its own holding its types and their defaults, the
//! article's numbers. serde applies a default when a field is absent and schemars writes it into
//! the CRD schema, so `kubectl get -o yaml` shows what the operator uses.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::app::AppSpec;
use super::autoscaling::AutoscalingSpec;
use super::cache::CacheSpec;
use super::cdn::CdnSpec;
use super::database::DatabaseSpec;
use super::rate_limit::RateLimitSpec;
use super::sessions::SessionSpec;
use super::status::ScaledAppStatus;
use super::workers::{WorkerPoolSpec, default_pools};

/// Longest ScaledApp name: the longest child, `<name>-shard-63-replica`, must stay within the
/// 52 characters a StatefulSet name may have (its pods get a 63-character revision label).
pub const MAX_NAME_LENGTH: usize = 30;

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
    #[serde(default = "default_pools")]
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
