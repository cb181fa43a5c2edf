//! The `workers` section: worker pools draining Redis queues, and their defaults.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::common::{ReplicaRange, ResourceAmounts, ResourceSpec};

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
    #[serde(default = "worker_replicas")]
    pub replicas: ReplicaRange,
    /// Messages waiting per worker replica the HPA aims for (External metric
    /// `scaledapp_queue_depth`, averageValue).
    #[serde(default = "queue_depth")]
    #[schemars(range(min = 1, max = 1000000))]
    pub target_queue_depth_per_replica: i32,
    /// Messages each worker processes at once.
    #[serde(default = "concurrency")]
    #[schemars(range(min = 1, max = 256))]
    pub concurrency: i32,
    /// CPU and memory of each worker container.
    #[serde(default = "worker_resources")]
    pub resources: ResourceSpec,
}

/// The pools of a ScaledApp that names none.
pub(super) fn default_pools() -> Vec<WorkerPoolSpec> {
    vec![WorkerPoolSpec {
        name: "default".into(),
        queues: vec!["email:send".into(), "analytics:track".into()],
        replicas: worker_replicas(),
        target_queue_depth_per_replica: queue_depth(),
        concurrency: concurrency(),
        resources: worker_resources(),
    }]
}

fn worker_replicas() -> ReplicaRange {
    ReplicaRange { min: 1, max: 10 }
}
fn queue_depth() -> i32 {
    100
}
fn concurrency() -> i32 {
    4
}
fn worker_resources() -> ResourceSpec {
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
