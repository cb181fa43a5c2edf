//! The ScaledApp status: written only by the operator, read by `kubectl get sapp`, the `status`
//! subcommand and the Postgres instance managers (which obey `shards[].primaryPod`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
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
    /// Which Redis pod is the primary, each pod's replication state, and the last failover
    /// (absent when an external Redis is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_replication: Option<RedisReplicationStatus>,
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
    /// Id of the last switchover request (annotation `scaled.dev/switchover`) acted on, so each
    /// request is acted on once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_switchover_request: Option<String>,
    /// Failovers and switchovers in progress, for `kubectl get -o wide`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failovers: Option<String>,
    /// Endpoints the app is configured with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
    /// Rotations of the app's session secret (`scaledapp-operator rotate-session-secret`): the
    /// one in progress, the last one completed, and the last request acted on. Absent until the
    /// first request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_secret_rotation: Option<SessionSecretRotationStatus>,
}

/// Rotations of the session secret (key `session-secret` of the `<name>-app` Secret). Each takes
/// two rolls of the app pods, so that no pod ever refuses a token another pod signed: first
/// every pod also accepts a new value while still signing with the old one (`Accepting`), then
/// every pod signs with the new value and still accepts the old one (`Signing`). The values
/// themselves are only ever in the Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionSecretRotationStatus {
    /// Id of the last rotation request (annotation `scaled.dev/rotate-session-secret`) acted on,
    /// started or refused, so each request is acted on once. A request that arrives while a
    /// rotation is in progress waits for it to complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<String>,
    /// The rotation in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<SessionSecretRotation>,
    /// The last completed rotation. Its id stays on the app pod template (annotation
    /// `scaled.dev/session-secret-rotation`), so the pods are not rolled again once it is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_completed: Option<SessionSecretRotation>,
}

/// One rotation of the session secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionSecretRotation {
    /// The request's id.
    pub id: String,
    /// Where it is: `Accepting` (`session-secret-previous` holds the new value; the app pods
    /// roll to accept it), `Signing` (the two values swapped; the app pods roll to sign with the
    /// new one), `Completed` (both rolls done).
    pub phase: SessionSecretRotationPhase,
    /// When the operator acted on the request (the start of `Accepting`).
    pub started_at: Time,
    /// When the app Deployment had rolled out the `Signing` step (completed rotations only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
}

/// The phases of a session-secret rotation.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionSecretRotationPhase {
    /// `session-secret-previous` holds a new value, `session-secret` is unchanged: the app pods
    /// roll, each signing with the current value and accepting the new one. Left once the app
    /// Deployment has rolled out completely (no pod of an older template left).
    Accepting,
    /// The two values are swapped: the app pods roll again, each signing with the new value and
    /// accepting the old one (which pods still in `Accepting` sign with). Left, completed, once
    /// the app Deployment has rolled out completely again.
    Signing,
    /// Both rolls are done: every app pod signs with the new value and accepts the old one until
    /// the next rotation replaces it.
    Completed,
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
    /// Slot ranges owned, for example `0-511`.
    pub slot_ranges: String,
    /// The shard's StatefulSet (the primary and its replicas).
    pub stateful_set: WorkloadStatus,
    /// The pod the operator chose as the shard's primary. This is the record the Postgres
    /// instance managers obey: the named pod runs read-write, every other pod follows it, and a
    /// primary that is no longer named stops accepting writes. Absent until chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_pod: Option<String>,
    /// The uid of the pod object the operator confirmed as primary. A pod the StatefulSet
    /// recreates under the primary's name is another object: it does not start as primary until
    /// the operator either fails over to a replica (after `database.failover.delaySeconds`) or,
    /// when no replica can take over, confirms it by recording its uid here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_pod_uid: Option<String>,
    /// Timeline of the primary, as its instance manager reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<i64>,
    /// Why no primary is chosen yet, while that is so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// What is wrong with the primary, while something is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_health: Option<String>,
    /// A failover or switchover in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverStatus>,
    /// The last completed failover or switchover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverStatus>,
    /// Each pod of the shard as its instance manager reports it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceSummary>,
    /// The failover clock, while the primary looks unhealthy: a failover is due once it has run
    /// for `database.failover.delaySeconds`. Kept here so a restarted operator, or a new leader,
    /// goes on counting instead of starting the delay again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_unhealthy: Option<PrimaryUnhealthy>,
}

/// Since when a shard's recorded primary has looked unhealthy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PrimaryUnhealthy {
    /// The recorded primary this clock is about; another primary starts a clock of its own.
    pub pod: String,
    /// When the operator first saw it unhealthy (microseconds, so the delay is kept to well
    /// under a second).
    pub since: MicroTime,
    /// Which process it was then (`<pod uid>/<restart count>`): another one means the process
    /// that took writes is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
    /// Seen not running, or as another process, since the clock started: whatever answers now
    /// started after the failure, so a manager that does not answer is restarting (not cut off
    /// and still taking writes), and no fencing time is added to the delay.
    #[serde(default)]
    pub went_down: bool,
}

/// The operator-run Redis: its primary (the pod the primary Service selects), as the operator
/// chose it, and what each pod reports.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RedisReplicationStatus {
    /// The primary: the one pod labelled `scaled.dev/role=primary`, which the primary Service
    /// sends every client to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_pod: Option<String>,
    /// The uid of the primary's pod object: a pod recreated under the same name is another
    /// server, started fenced, and the operator chooses the primary again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_pod_uid: Option<String>,
    /// What is wrong with the primary, while something is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_health: Option<String>,
    /// Since when the primary has not answered (a failover is due after a few seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_unhealthy: Option<PrimaryUnhealthy>,
    /// The last failover or switchover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverStatus>,
    /// A switchover in progress: the primary was told to hand over (`FAILOVER TO`: it pauses
    /// writes, waits until the replica has every write, and turns into its replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<FailoverStatus>,
    /// Id of the last Redis switchover request (annotation `scaled.dev/redis-switchover`)
    /// acted on, so each request is acted on once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_switchover_request: Option<String>,
    /// Every Redis pod: `Primary`, `Replica` (following the primary), `Fenced` (started as a
    /// replica of nobody, read-only, not yet given a primary), `Unknown` (did not answer).
    /// `lagMib` is how far a replica is behind the primary's replication stream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceSummary>,
}

/// [`FailoverStatus::kind`] of an unplanned change (the primary was lost).
pub const FAILOVER: &str = "Failover";
/// [`FailoverStatus::kind`] of a planned change (requested, or part of a rolling update).
pub const SWITCHOVER: &str = "Switchover";

/// A change of a shard's primary.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverStatus {
    /// `Failover` (the primary was lost) or `Switchover` (requested, or part of a rolling update).
    pub kind: String,
    /// Why it happened.
    pub reason: String,
    /// The primary before.
    pub from: String,
    /// The pod promoted.
    pub to: String,
    /// When the operator decided it.
    pub started_at: Time,
    /// When the new primary accepted writes (completed changes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// The new primary's timeline (completed changes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<i64>,
}

/// One Postgres pod, as its instance manager reports it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceSummary {
    /// Pod name.
    pub pod: String,
    /// Role the instance is in (`Primary`, `Replica`, `Cloning`, `Pending`, `Promoting`,
    /// `Fenced`, `Refused`), or `Unknown` when its instance manager did not answer.
    pub role: String,
    /// Whether it serves in that role.
    pub ready: bool,
    /// Replica: MiB of WAL it has yet to replay, rounded down (so that status does not change
    /// with every write; the instance's `/metrics` has the exact figure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_mib: Option<i64>,
    /// Times this replica discarded its data and cloned the primary again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reclones: i64,
    /// Why the instance refuses to run or last re-cloned: `Reason: message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

fn is_zero(value: &i64) -> bool {
    *value == 0
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
