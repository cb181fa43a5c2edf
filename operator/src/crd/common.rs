//! Small types several sections of the spec share: replica bounds, container resources, Secret
//! keys, and the default of the switches that are on unless turned off. Imports no other file
//! of the API.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

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

/// Default of the switches that are on unless turned off.
pub(super) fn enabled() -> bool {
    true
}
