//! Postgres instances: which pod of each shard is the primary.
//!
//! The decision is the operator's alone and is recorded in one place, the ScaledApp's
//! `status.shards[].primaryPod`, which the instance managers obey. Each pass
//! [`observe`]s the shard's pods and what their instance managers report at `/status`,
//! [`decide`]s purely (keep the recorded primary; choose the first one when none is recorded),
//! and [`label`]s the pods with their role, which the `-primary` and `-replica` Services select on.
//!
//! The first primary of a shard is `<shard>-0` when no volume holds data yet. When volumes were
//! kept (a ScaledApp re-created under `dataPolicy: Retain`), it is the instance with the newest
//! data (highest timeline, then WAL position), chosen only once every pod with a volume has
//! reported: a replica that is further behind must never become the primary of older data.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use scaled_contract::instance::{InstanceRole, InstanceStatus};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{FAILOVER, FailoverStatus, InstanceSummary, SWITCHOVER, ScaledAppStatus};
use crate::metrics::Metrics;
use crate::names::{
    COMPONENT_LABEL, INSTANCE_LABEL, MANAGER, POSTGRES_COMPONENT, PRIMARY_ROLE, REPLICA_ROLE,
    ROLE_LABEL,
};
use crate::render::shard_set_name;
use crate::validate::ValidatedApp;

/// Label the StatefulSet controller puts on each pod: the revision it was created from.
const REVISION_LABEL: &str = "controller-revision-hash";

/// How long one instance manager may take to answer `/status`.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Failures reading or labelling Postgres pods.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Listing the pods or volume claims failed.
    #[error("failed to list {kind} of ScaledApp {namespace}/{name}: {source}")]
    List {
        /// Kind listed.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// ScaledApp name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Deleting a pod for a rolling update failed.
    #[error("failed to delete pod {namespace}/{pod} for the rolling update: {source}")]
    Replace {
        /// Namespace.
        namespace: String,
        /// Pod.
        pod: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Setting a pod's role label failed.
    #[error("failed to label pod {namespace}/{pod} as {role}: {source}")]
    Label {
        /// Namespace.
        namespace: String,
        /// Pod.
        pod: String,
        /// Role label value.
        role: &'static str,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

/// One Postgres pod as seen this pass.
#[derive(Clone, Debug, PartialEq)]
pub struct PodObservation {
    /// Pod name.
    pub name: String,
    /// Ordinal within the StatefulSet.
    pub ordinal: u32,
    /// Its role label now.
    pub role_label: Option<String>,
    /// Running and not being deleted.
    pub running: bool,
    /// The StatefulSet revision the pod was created from.
    pub revision: Option<String>,
    /// The pod object's uid: another one under the same name is a recreated pod.
    pub uid: Option<String>,
    /// How often its postgres container restarted.
    pub restarts: i32,
    /// What its instance manager reported, if it answered.
    pub instance: Option<InstanceStatus>,
}

impl PodObservation {
    /// Which process this is: the pod's uid and its postgres container's restart count. A new
    /// one means the process seen before is gone.
    pub fn incarnation(&self) -> Option<String> {
        self.uid
            .as_ref()
            .map(|uid| format!("{uid}/{}", self.restarts))
    }
}

/// What the operator knows of a shard's StatefulSet from applying it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardSet {
    /// `status.updateRevision`: the current template revision.
    pub update_revision: Option<String>,
    /// When it was created.
    pub created: Option<Time>,
}

/// One shard's pods and volumes as seen this pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardObservation {
    /// Shard number.
    pub index: u32,
    /// Pods that exist, by ordinal.
    pub pods: Vec<PodObservation>,
    /// Ordinals whose data volume (PVC) is older than the shard's StatefulSet: kept from an
    /// earlier ScaledApp (`dataPolicy: Retain`), so it may hold data. Claims the StatefulSet
    /// made itself hold nothing until a recorded primary initialises its own.
    pub volumes: BTreeSet<u32>,
    /// The StatefulSet's current template revision (`status.updateRevision`).
    pub update_revision: Option<String>,
}

/// What the operator decided for one shard.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardDecision {
    /// Shard number.
    pub index: u32,
    /// The primary, once chosen.
    pub primary_pod: Option<String>,
    /// The uid of the primary's pod object, as confirmed (see `ShardStatus::primary_pod_uid`).
    pub primary_pod_uid: Option<String>,
    /// Why no primary is chosen yet.
    pub waiting: Option<String>,
    /// What is wrong with the primary, while something is.
    pub primary_health: Option<String>,
    /// The primary is unhealthy and a replica could take over: a failover is due once the
    /// delay has passed, so time alone changes the decision.
    pub failover_due: bool,
    /// The primary's timeline, as it reports it.
    pub timeline: Option<u32>,
    /// A failover or switchover in progress.
    pub failover: Option<FailoverStatus>,
    /// The last completed one.
    pub last_failover: Option<FailoverStatus>,
    /// Every pod as its instance manager reports it.
    pub instances: Vec<InstanceSummary>,
    /// Pods whose role label must change, with the new value.
    pub relabel: Vec<(String, &'static str)>,
    /// What happened this pass that deserves an Event.
    pub news: Vec<News>,
    /// The switchover request acted on (or refused) this pass.
    pub handled_switchover: Option<String>,
    /// Pods to delete so the StatefulSet recreates them from its new template.
    pub replace: Vec<String>,
}

/// Something a pass decided that users should hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct News {
    /// Whether it is a Warning (else Normal).
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// What happened, naming the pods.
    pub note: String,
}

/// A request to move a shard's primary (annotation [`SWITCHOVER_ANNOTATION`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SwitchoverRequest {
    /// Shard.
    pub shard: u32,
    /// Pod to promote; the most caught-up ready replica when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Unique per request, so each one is acted on once.
    pub id: String,
}

/// Annotation on a ScaledApp asking for a switchover (set by `scaledapp-operator switchover`).
pub const SWITCHOVER_ANNOTATION: &str = "scaled.dev/switchover";

/// How a shard's recorded primary is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Ready and primary.
    Healthy,
    /// The pod is missing, not running, or being deleted: it accepts no writes.
    Gone(String),
    /// The pod runs, but its instance manager does not answer: it may still accept writes (a
    /// partition), until it fences itself.
    Unresponsive(String),
    /// Its instance manager answers and says it is not a ready primary.
    Failing(String),
    /// The pod was recreated under the primary's name: the process that took writes is gone,
    /// and the new one waits for the operator to confirm it or to name another pod.
    Recreated(String),
}

impl Health {
    fn describe(&self) -> Option<&str> {
        match self {
            Health::Healthy => None,
            Health::Gone(why)
            | Health::Unresponsive(why)
            | Health::Failing(why)
            | Health::Recreated(why) => Some(why),
        }
    }
}

/// How the recorded primary `primary` of `shard` is doing.
pub fn primary_health(shard: &ShardObservation, primary: &str, uid: Option<&str>) -> Health {
    let Some(pod) = shard.pods.iter().find(|pod| pod.name == primary) else {
        return Health::Gone(format!("pod {primary} does not exist"));
    };
    if !pod.running {
        return Health::Gone(format!("pod {primary} is not running"));
    }
    if let (Some(confirmed), Some(now)) = (uid, pod.uid.as_deref())
        && confirmed != now
    {
        return Health::Recreated(format!(
            "pod {primary} was recreated and waits to be confirmed as primary or to follow a \
             replica that takes over"
        ));
    }
    match &pod.instance {
        None => Health::Unresponsive(format!("the instance manager of {primary} does not answer")),
        Some(instance) if instance.role == InstanceRole::Primary && instance.ready => {
            Health::Healthy
        }
        Some(instance) => Health::Failing(format!(
            "{primary} reports {:?}{}",
            instance.role,
            if instance.ready { "" } else { ", not ready" }
        )),
    }
}

/// What [`decide`] needs besides the observations.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// The ScaledApp.
    pub app: &'a ValidatedApp,
    /// Its status before this pass (the primary record lives there).
    pub current: Option<&'a ScaledAppStatus>,
    /// While paused nothing is chosen, promoted or relabelled.
    pub paused: bool,
    /// Now.
    pub now: &'a Time,
    /// How long each shard's recorded primary has been unhealthy (the operator's memory).
    pub unhealthy_for: &'a BTreeMap<u32, Duration>,
    /// Shards whose recorded primary was seen down (not running, or a new incarnation) since it
    /// became unhealthy: whatever runs there now started after the failure, so an instance
    /// manager that does not answer yet is a restart, not a partition that may still take writes.
    pub restarted: &'a BTreeSet<u32>,
    /// A switchover asked for and not yet acted on.
    pub switchover: Option<&'a SwitchoverRequest>,
}

/// A promoted replica has this long, beyond the failover delay, to report itself primary before
/// it is given up on.
const PROMOTION_GRACE: Duration = Duration::from_secs(60);

/// Decides each shard's primary and the pods' role labels. Pure.
pub fn decide(inputs: Inputs<'_>, observed: &[ShardObservation]) -> Vec<ShardDecision> {
    observed
        .iter()
        .map(|shard| decide_shard(inputs, shard))
        .collect()
}

fn decide_shard(inputs: Inputs<'_>, shard: &ShardObservation) -> ShardDecision {
    let app = inputs.app;
    let before = inputs
        .current
        .and_then(|status| status.shards.iter().find(|s| s.index == shard.index as i32));
    let mut decision = ShardDecision {
        index: shard.index,
        primary_pod: before.and_then(|s| s.primary_pod.clone()),
        primary_pod_uid: before.and_then(|s| s.primary_pod_uid.clone()),
        failover: before.and_then(|s| s.failover.clone()),
        last_failover: before.and_then(|s| s.last_failover.clone()),
        instances: shard.pods.iter().map(summary).collect(),
        ..ShardDecision::default()
    };
    if decision.primary_pod.is_none() {
        if inputs.paused {
            decision.waiting = Some("paused: no primary is chosen".to_string());
        } else {
            match first_primary(app, shard) {
                Ok(primary) => {
                    decision.primary_pod_uid = uid_of(shard, &primary);
                    decision.primary_pod = Some(primary);
                }
                Err(waiting) => decision.waiting = Some(waiting),
            }
        }
    } else if !inputs.paused {
        complete_failover(&mut decision, shard, inputs.now);
    }
    if let Some(primary) = decision.primary_pod.clone() {
        let health = primary_health(shard, &primary, decision.primary_pod_uid.as_deref());
        if health == Health::Healthy && decision.primary_pod_uid.is_none() && !inputs.paused {
            // A record from before uids were recorded: the serving pod is the confirmed one.
            decision.primary_pod_uid = uid_of(shard, &primary);
        }
        if health != Health::Healthy {
            let recreated = matches!(health, Health::Recreated(_));
            // Said the same way every pass (no timer in it), so status settles.
            let blocked = candidate(app, shard, &primary).err();
            // A recreated primary with nobody to take over is confirmed after the delay: time
            // alone changes that decision too.
            decision.failover_due = (blocked.is_none() || recreated) && !inputs.paused;
            let promoting = decision
                .failover
                .as_ref()
                .filter(|progress| progress.to == primary)
                .map(|progress| progress.from.clone());
            decision.primary_health = health.describe().map(|why| match (&blocked, promoting) {
                // The target of a change in progress is not a primary yet; whether another
                // replica could replace it is beside the point until it had its time.
                (_, Some(from)) => format!("{why}; being promoted to take over from {from}"),
                (Some(blocked), None) if recreated => format!(
                    "{why}; no replica can take over ({blocked}), so it is confirmed once \
                     database.failover.delaySeconds have passed"
                ),
                (Some(blocked), None) => format!("{why}; no replica can take over: {blocked}"),
                (None, None) => why.to_string(),
            });
        }
        let unhealthy_for = inputs
            .unhealthy_for
            .get(&shard.index)
            .copied()
            .unwrap_or_default();
        if !inputs.paused {
            if health != Health::Healthy {
                fail_over(
                    &mut decision,
                    inputs,
                    shard,
                    &primary,
                    &health,
                    unhealthy_for,
                );
            } else if decision.failover.is_none() {
                match inputs.switchover.filter(|r| r.shard == shard.index) {
                    Some(request) => switch_over(
                        &mut decision,
                        inputs,
                        shard,
                        &primary,
                        request,
                        format!("requested ({})", request.id),
                    ),
                    None => roll(&mut decision, inputs, shard, &primary),
                }
            }
        }
    }
    if let (Some(primary), false) = (&decision.primary_pod, inputs.paused) {
        decision.relabel = shard
            .pods
            .iter()
            .filter_map(|pod| {
                let role = if &pod.name == primary {
                    PRIMARY_ROLE
                } else {
                    REPLICA_ROLE
                };
                (pod.role_label.as_deref() != Some(role)).then(|| (pod.name.clone(), role))
            })
            .collect();
    }
    decision.timeline = shard
        .pods
        .iter()
        .find(|pod| Some(&pod.name) == decision.primary_pod.as_ref())
        .and_then(|pod| pod.instance.as_ref())
        .filter(|instance| instance.role == InstanceRole::Primary)
        .and_then(|instance| instance.timeline);
    decision
}

/// A change in progress is complete once its target reports itself a ready primary.
fn complete_failover(decision: &mut ShardDecision, shard: &ShardObservation, now: &Time) {
    let Some(progress) = &decision.failover else {
        return;
    };
    let promoted = shard
        .pods
        .iter()
        .find(|pod| pod.name == progress.to)
        .and_then(|pod| pod.instance.as_ref())
        .filter(|instance| instance.role == InstanceRole::Primary && instance.ready);
    if let Some(instance) = promoted {
        let done = FailoverStatus {
            completed_at: Some(now.clone()),
            timeline: instance.timeline.map(i64::from),
            ..progress.clone()
        };
        decision.news.push(News {
            warning: false,
            reason: if done.kind == FAILOVER {
                "FailoverCompleted"
            } else {
                "SwitchoverCompleted"
            },
            note: format!(
                "shard {}: {} is the primary (timeline {}), taking over from {}",
                shard.index,
                done.to,
                instance.timeline.map_or("?".to_string(), |t| t.to_string()),
                done.from
            ),
        });
        decision.failover = None;
        decision.last_failover = Some(done);
    }
}

/// Replaces pods built from an older template, one at a time and only while every pod of the
/// shard serves: replicas first; then a switchover to an updated replica; then the old primary,
/// now a replica. An update costs one short write pause per shard.
fn roll(decision: &mut ShardDecision, inputs: Inputs<'_>, shard: &ShardObservation, primary: &str) {
    let Some(current) = &shard.update_revision else {
        return;
    };
    let outdated = |pod: &&PodObservation| pod.revision.as_ref().is_some_and(|r| r != current);
    if !shard.pods.iter().any(|pod| outdated(&pod)) {
        return;
    }
    let expected = instances_per_shard(inputs.app) as usize;
    let all_serving = shard.pods.len() == expected
        && shard
            .pods
            .iter()
            .all(|pod| pod.running && pod.instance.as_ref().is_some_and(|instance| instance.ready));
    if !all_serving {
        // Wait for the last replaced pod (or anything else) to come back first.
        return;
    }
    if let Some(replica) = shard
        .pods
        .iter()
        .filter(|pod| pod.name != primary)
        .find(|pod| outdated(pod))
    {
        decision.news.push(News {
            warning: false,
            reason: "RollingUpdate",
            note: format!(
                "shard {}: replacing replica {} with the new template",
                shard.index, replica.name
            ),
        });
        decision.replace.push(replica.name.clone());
        return;
    }
    // Only the primary is left: hand its role to an updated replica first.
    let request = SwitchoverRequest {
        shard: shard.index,
        to: None,
        id: format!("rolling update to {current}"),
    };
    let reason = format!("rolling update to revision {current}");
    switch_over(decision, inputs, shard, primary, &request, reason);
    // Not a user's request: nothing to remember, and the reason says what it was.
    decision.handled_switchover = None;
}

/// Promotes the replica with the most WAL once the primary has been unhealthy long enough.
fn fail_over(
    decision: &mut ShardDecision,
    inputs: Inputs<'_>,
    shard: &ShardObservation,
    primary: &str,
    health: &Health,
    unhealthy_for: Duration,
) {
    let failover = &inputs.app.spec.database.failover;
    let mut threshold = Duration::from_secs(failover.delay_seconds.max(0) as u64);
    if matches!(health, Health::Unresponsive(_)) && !inputs.restarted.contains(&shard.index) {
        // It may still be taking writes behind a partition: wait until it has fenced itself.
        threshold += Duration::from_secs(failover.fence_after_seconds.max(0) as u64);
    }
    if decision
        .failover
        .as_ref()
        .is_some_and(|progress| progress.to == primary)
    {
        // A replica being promoted reports Promoting, not Primary, for a while.
        threshold += PROMOTION_GRACE;
    }
    if unhealthy_for < threshold {
        return;
    }
    let reason = health.describe().unwrap_or("unhealthy").to_string();
    let target = match candidate(inputs.app, shard, primary) {
        Ok(target) => target,
        Err(_) if matches!(health, Health::Recreated(_)) => {
            // Nobody else has the data: the recreated pod is the primary after all.
            decision.primary_pod_uid = uid_of(shard, primary);
            decision.news.push(News {
                warning: false,
                reason: "PrimaryConfirmed",
                note: format!(
                    "shard {}: {primary} was recreated and no replica can take over; it stays \
                     the primary",
                    shard.index
                ),
            });
            return;
        }
        // When nobody can take over, primary_health already says why.
        Err(_) => return,
    };
    decision.news.push(News {
        warning: true,
        reason: "FailoverStarted",
        note: format!(
            "shard {}: promoting {target} because {reason} (for {}s)",
            shard.index,
            unhealthy_for.as_secs()
        ),
    });
    decision.failover = Some(FailoverStatus {
        kind: FAILOVER.into(),
        reason,
        from: decision
            .failover
            .as_ref()
            .map_or(primary.to_string(), |progress| progress.from.clone()),
        to: target.clone(),
        started_at: inputs.now.clone(),
        completed_at: None,
        timeline: None,
    });
    decision.primary_pod_uid = uid_of(shard, &target);
    decision.primary_pod = Some(target);
}

/// The uid of pod `name` of `shard`, when it exists.
fn uid_of(shard: &ShardObservation, name: &str) -> Option<String> {
    shard
        .pods
        .iter()
        .find(|pod| pod.name == name)
        .and_then(|pod| pod.uid.clone())
}

/// The replica to promote: the one that received the most WAL. With synchronous replication
/// every commit acknowledged to a client is on at least one replica, so the replica with the
/// most WAL has them all; but only if every replica could be asked.
fn candidate(
    app: &ValidatedApp,
    shard: &ShardObservation,
    primary: &str,
) -> Result<String, String> {
    let set = shard_set_name(app, shard.index);
    let others: Vec<String> = (0..instances_per_shard(app))
        .map(|ordinal| format!("{set}-{ordinal}"))
        .filter(|pod| pod != primary)
        .collect();
    let reporting: Vec<(&PodObservation, &InstanceStatus)> = shard
        .pods
        .iter()
        .filter(|pod| others.contains(&pod.name) && pod.running)
        .filter_map(|pod| pod.instance.as_ref().map(|instance| (pod, instance)))
        .collect();
    if app.spec.database.synchronous_replication {
        let silent: Vec<&String> = others
            .iter()
            .filter(|pod| !reporting.iter().any(|(seen, _)| &&seen.name == pod))
            .collect();
        if !silent.is_empty() {
            return Err(format!(
                "synchronous replication: every replica must report before one is promoted, so \
                 none that lacks an acknowledged commit is chosen; waiting for {}",
                silent
                    .iter()
                    .map(|pod| pod.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    reporting
        .iter()
        .filter(|(_, instance)| instance.role == InstanceRole::Replica)
        .filter_map(|(pod, instance)| {
            let received = instance.received_lsn.or(instance.replayed_lsn)?;
            Some((pod, received, instance.timeline.unwrap_or(0)))
        })
        .max_by_key(|(pod, received, timeline)| {
            (*timeline, *received, std::cmp::Reverse(pod.ordinal))
        })
        .map(|(pod, _, _)| pod.name.clone())
        .ok_or_else(|| "no replica reports that it has received WAL".to_string())
}

fn instances_per_shard(app: &ValidatedApp) -> u32 {
    1 + app.spec.database.replicas_per_shard as u32
}

/// Moves the primary on request: to the named replica or the most caught-up ready one. The
/// record changes at once; the old primary stops (sending its last WAL to its replicas) and the
/// target promotes once its WAL receiver has stopped, so nothing committed is left behind.
fn switch_over(
    decision: &mut ShardDecision,
    inputs: Inputs<'_>,
    shard: &ShardObservation,
    primary: &str,
    request: &SwitchoverRequest,
    reason: String,
) {
    let ready_replicas: Vec<(&PodObservation, &InstanceStatus)> = shard
        .pods
        .iter()
        .filter(|pod| pod.name != primary && pod.running)
        .filter_map(|pod| pod.instance.as_ref().map(|instance| (pod, instance)))
        .filter(|(_, instance)| instance.role == InstanceRole::Replica && instance.ready)
        .collect();
    let target = match &request.to {
        Some(to) if to == primary => Err(format!("{to} is already the primary")),
        Some(to) => ready_replicas
            .iter()
            .find(|(pod, _)| &pod.name == to)
            .map(|(pod, _)| pod.name.clone())
            .ok_or_else(|| format!("{to} is not a ready replica of shard {}", shard.index)),
        None => ready_replicas
            .iter()
            .max_by_key(|(pod, instance)| {
                (
                    instance.replayed_lsn.unwrap_or(0),
                    std::cmp::Reverse(pod.ordinal),
                )
            })
            .map(|(pod, _)| pod.name.clone())
            .ok_or_else(|| format!("shard {} has no ready replica", shard.index)),
    };
    decision.handled_switchover = Some(request.id.clone());
    match target {
        Ok(target) => {
            decision.news.push(News {
                warning: false,
                reason: "SwitchoverStarted",
                note: format!(
                    "shard {}: moving the primary from {primary} to {target} (request {})",
                    shard.index, request.id
                ),
            });
            decision.failover = Some(FailoverStatus {
                kind: SWITCHOVER.into(),
                reason,
                from: primary.to_string(),
                to: target.clone(),
                started_at: inputs.now.clone(),
                completed_at: None,
                timeline: None,
            });
            decision.primary_pod_uid = uid_of(shard, &target);
            decision.primary_pod = Some(target);
        }
        Err(refused) => decision.news.push(News {
            warning: true,
            reason: "SwitchoverRefused",
            note: format!("switchover request {}: {refused}", request.id),
        }),
    }
}

/// Reads every Postgres pod of the ScaledApp, its volume claims, and each instance manager's
/// `/status`.
pub async fn observe(
    client: &Client,
    http: &reqwest::Client,
    app: &ValidatedApp,
    sets: &BTreeMap<u32, ShardSet>,
) -> Result<Vec<ShardObservation>, InstanceError> {
    let selector = format!(
        "{INSTANCE_LABEL}={},{COMPONENT_LABEL}={}",
        app.name, POSTGRES_COMPONENT
    );
    let params = ListParams::default().labels(&selector);
    let list_error = |kind: &'static str| {
        move |source| InstanceError::List {
            kind,
            namespace: app.namespace.clone(),
            name: app.name.clone(),
            source,
        }
    };
    let pods = Api::<Pod>::namespaced(client.clone(), &app.namespace)
        .list(&params)
        .await
        .map_err(list_error("pods"))?
        .items;
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &app.namespace)
        .list_metadata(&params)
        .await
        .map_err(list_error("persistentvolumeclaims"))?
        .items;
    let reports =
        futures::future::join_all(pods.iter().map(|pod| instance_status(http, pod))).await;

    let mut shards: Vec<ShardObservation> = (0..app.spec.database.shards as u32)
        .map(|index| ShardObservation {
            index,
            update_revision: sets.get(&index).and_then(|set| set.update_revision.clone()),
            ..ShardObservation::default()
        })
        .collect();
    for (pod, instance) in pods.iter().zip(reports) {
        let Some((index, ordinal)) = shard_and_ordinal(app, &pod.name_any()) else {
            continue;
        };
        if let Some(shard) = shards.get_mut(index as usize) {
            let running = pod.metadata.deletion_timestamp.is_none()
                && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            let restarts = pod
                .status
                .as_ref()
                .and_then(|status| status.container_statuses.as_ref())
                // The container is named after the component (render/postgres.rs).
                .and_then(|containers| containers.iter().find(|c| c.name == POSTGRES_COMPONENT))
                .map_or(0, |container| container.restart_count);
            shard.pods.push(PodObservation {
                name: pod.name_any(),
                ordinal,
                role_label: pod.labels().get(ROLE_LABEL).cloned(),
                running,
                revision: pod.labels().get(REVISION_LABEL).cloned(),
                uid: pod.uid(),
                restarts,
                instance,
            });
        }
    }
    for claim in claims {
        // Claims from the template are named `data-<statefulset>-<ordinal>`.
        let name = claim.name_any();
        if let Some((index, ordinal)) = name
            .strip_prefix("data-")
            .and_then(|pod| shard_and_ordinal(app, pod))
            && let Some(shard) = shards.get_mut(index as usize)
        {
            let set_created = sets.get(&index).and_then(|set| set.created.as_ref());
            if retained(claim.metadata.creation_timestamp.as_ref(), set_created) {
                shard.volumes.insert(ordinal);
            }
        }
    }
    for shard in &mut shards {
        shard.pods.sort_by_key(|pod| pod.ordinal);
    }
    Ok(shards)
}

/// Whether a claim may hold data from before its shard's StatefulSet: it is older than the set.
/// Timestamps have one-second resolution, so a claim from the same second is the set's own; when
/// either time is unknown it counts as retained (waiting for the pods' reports is safe,
/// guessing is not).
fn retained(claim_created: Option<&Time>, set_created: Option<&Time>) -> bool {
    match (claim_created, set_created) {
        (Some(claim), Some(set)) => claim.0 < set.0,
        _ => true,
    }
}

/// `(shard, ordinal)` of a pod named `<name>-shard-<shard>-<ordinal>`.
fn shard_and_ordinal(app: &ValidatedApp, pod: &str) -> Option<(u32, u32)> {
    let rest = pod.strip_prefix(&format!("{}-shard-", app.name))?;
    let (shard, ordinal) = rest.split_once('-')?;
    Some((shard.parse().ok()?, ordinal.parse().ok()?))
}

/// The instance manager's report, if the pod runs and answers in time.
async fn instance_status(http: &reqwest::Client, pod: &Pod) -> Option<InstanceStatus> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip = status.pod_ip.as_deref()?;
    let address: std::net::IpAddr = ip.parse().ok()?;
    let url = format!(
        "http://{}/status",
        std::net::SocketAddr::new(address, scaled_contract::instance::INSTANCE_STATUS_PORT)
    );
    let response = http.get(url).timeout(STATUS_TIMEOUT).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json::<InstanceStatus>().await.ok()
}

/// The first primary of a shard, or why it cannot be chosen yet.
fn first_primary(app: &ValidatedApp, shard: &ShardObservation) -> Result<String, String> {
    let set = shard_set_name(app, shard.index);
    let with_data: Vec<&PodObservation> = shard
        .pods
        .iter()
        .filter(|pod| {
            pod.instance.as_ref().is_some_and(|instance| {
                instance.role != InstanceRole::Refused && instance.data_major_version.is_some()
            })
        })
        .collect();
    let silent: Vec<String> = shard
        .volumes
        .iter()
        .filter(|ordinal| {
            !shard
                .pods
                .iter()
                .any(|pod| pod.ordinal == **ordinal && pod.instance.is_some())
        })
        .map(|ordinal| format!("{set}-{ordinal}"))
        .collect();
    if with_data.is_empty() && shard.volumes.is_empty() {
        // Nothing was ever stored: the first pod initialises the shard.
        return Ok(format!("{set}-0"));
    }
    if !silent.is_empty() {
        return Err(format!(
            "volumes exist: waiting for {} to report their data before choosing a primary",
            silent.join(", ")
        ));
    }
    match with_data.iter().max_by_key(|pod| {
        let instance = pod.instance.as_ref().expect("filtered on a report");
        (
            instance.timeline.unwrap_or(0),
            instance.current_lsn.unwrap_or(0),
            // The lowest ordinal wins a tie.
            std::cmp::Reverse(pod.ordinal),
        )
    }) {
        Some(newest) => Ok(newest.name.clone()),
        // Every volume reported and none holds data (all empty, or all refused).
        None => Ok(format!("{set}-0")),
    }
}

fn summary(pod: &PodObservation) -> InstanceSummary {
    match &pod.instance {
        Some(instance) => InstanceSummary {
            pod: pod.name.clone(),
            role: format!("{:?}", instance.role),
            ready: instance.ready,
            lag_mib: instance
                .lag_bytes
                .map(|bytes| i64::try_from(bytes / (1024 * 1024)).unwrap_or(i64::MAX)),
            reclones: i64::from(instance.reclones),
            problem: instance
                .problem
                .as_ref()
                .map(|problem| format!("{}: {}", problem.reason, problem.message))
                .or_else(|| instance.last_reclone_reason.clone()),
        },
        None => InstanceSummary {
            pod: pod.name.clone(),
            role: "Unknown".into(),
            ..InstanceSummary::default()
        },
    }
}

/// Deletes the pods `decisions` replace, so their StatefulSet recreates them from the new
/// template; returns `Pod/name` of each.
pub async fn replace(
    client: &Client,
    namespace: &str,
    metrics: &Metrics,
    decisions: &[ShardDecision],
) -> Result<Vec<String>, InstanceError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut replaced = Vec::new();
    for pod in decisions.iter().flat_map(|shard| shard.replace.iter()) {
        metrics.record_write("Pod");
        match pods.delete(pod, &kube::api::DeleteParams::default()).await {
            Ok(_) => replaced.push(format!("Pod/{pod} (replaced for the new template)")),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(InstanceError::Replace {
                    namespace: namespace.to_string(),
                    pod: pod.clone(),
                    source,
                });
            }
        }
    }
    Ok(replaced)
}

/// Sets the role label of each pod in `decisions` that needs it; returns `Pod/name` of each.
pub async fn label(
    client: &Client,
    namespace: &str,
    metrics: &Metrics,
    decisions: &[ShardDecision],
) -> Result<Vec<String>, InstanceError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut labelled = Vec::new();
    for (pod, role) in decisions.iter().flat_map(|shard| shard.relabel.iter()) {
        let patch = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "labels": {ROLE_LABEL: role}},
        });
        metrics.record_write("Pod");
        pods.patch(
            pod,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| InstanceError::Label {
            namespace: namespace.to_string(),
            pod: pod.clone(),
            role,
            source,
        })?;
        labelled.push(format!("Pod/{pod} ({role})"));
    }
    Ok(labelled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ShardStatus;
    use crate::test_support::validated_example;
    use k8s_openapi::jiff::Timestamp;
    use scaled_contract::instance::InstanceProblem;

    fn report(pod: &str, role: InstanceRole, data: Option<(u32, u64)>) -> InstanceStatus {
        InstanceStatus {
            pod: pod.into(),
            shard: 0,
            role,
            ready: role == InstanceRole::Primary || role == InstanceRole::Replica,
            server_major_version: Some(17),
            data_major_version: data.map(|_| 17),
            system_identifier: None,
            timeline: data.map(|(timeline, _)| timeline),
            current_lsn: data.map(|(_, lsn)| lsn),
            received_lsn: data
                .filter(|_| role == InstanceRole::Replica)
                .map(|(_, lsn)| lsn),
            replayed_lsn: data
                .filter(|_| role == InstanceRole::Replica)
                .map(|(_, lsn)| lsn),
            lag_bytes: None,
            lag_seconds: None,
            primary_pod: None,
            streaming_replicas: Vec::new(),
            problem: None,
            reclones: 0,
            last_reclone_reason: None,
        }
    }

    fn pod(ordinal: u32, instance: Option<InstanceStatus>) -> PodObservation {
        PodObservation {
            name: format!("shop-shard-0-{ordinal}"),
            ordinal,
            role_label: None,
            running: true,
            revision: Some("r1".into()),
            uid: Some(format!("uid-{ordinal}")),
            restarts: 0,
            instance,
        }
    }

    fn shard(pods: Vec<PodObservation>, volumes: &[u32]) -> ShardObservation {
        ShardObservation {
            index: 0,
            pods,
            volumes: volumes.iter().copied().collect(),
            update_revision: Some("r1".into()),
        }
    }

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid"))
    }

    fn recorded(primary: &str) -> ScaledAppStatus {
        ScaledAppStatus {
            shards: vec![ShardStatus {
                index: 0,
                primary_pod: Some(primary.into()),
                ..ShardStatus::default()
            }],
            ..ScaledAppStatus::default()
        }
    }

    struct Case {
        app: ValidatedApp,
        current: Option<ScaledAppStatus>,
        paused: bool,
        unhealthy_for: Duration,
        restarted: bool,
        switchover: Option<SwitchoverRequest>,
    }

    impl Case {
        fn new(current: Option<ScaledAppStatus>) -> Self {
            Case {
                app: validated_example("shop"),
                current,
                paused: false,
                unhealthy_for: Duration::ZERO,
                restarted: false,
                switchover: None,
            }
        }

        fn decide(&self, shard: ShardObservation) -> ShardDecision {
            let unhealthy = BTreeMap::from([(0, self.unhealthy_for)]);
            let restarted: BTreeSet<u32> = self.restarted.then_some(0).into_iter().collect();
            let now = at(1000);
            let inputs = Inputs {
                app: &self.app,
                current: self.current.as_ref(),
                paused: self.paused,
                now: &now,
                unhealthy_for: &unhealthy,
                restarted: &restarted,
                switchover: self.switchover.as_ref(),
            };
            decide(inputs, &[shard]).remove(0)
        }
    }

    /// A running shard: 0 primary, 1 and 2 replicas that received up to the given positions.
    fn running_shard(primary_up: bool, received: [u64; 2]) -> ShardObservation {
        let primary = if primary_up {
            Some(report(
                "shop-shard-0-0",
                InstanceRole::Primary,
                Some((1, 900)),
            ))
        } else {
            None
        };
        shard(
            vec![
                pod(0, primary),
                pod(
                    1,
                    Some(report(
                        "shop-shard-0-1",
                        InstanceRole::Replica,
                        Some((1, received[0])),
                    )),
                ),
                pod(
                    2,
                    Some(report(
                        "shop-shard-0-2",
                        InstanceRole::Replica,
                        Some((1, received[1])),
                    )),
                ),
            ],
            &[0, 1, 2],
        )
    }

    #[test]
    fn a_new_shard_gets_its_first_pod_as_primary_before_any_pod_exists() {
        let decision = Case::new(None).decide(shard(vec![], &[]));
        assert_eq!(decision.primary_pod.as_deref(), Some("shop-shard-0-0"));
        assert_eq!(decision.waiting, None);
    }

    #[test]
    fn kept_volumes_wait_for_every_instance_and_the_newest_data_wins() {
        let waiting = Case::new(None).decide(shard(
            vec![pod(
                0,
                Some(report(
                    "shop-shard-0-0",
                    InstanceRole::Pending,
                    Some((1, 500)),
                )),
            )],
            &[0, 1],
        ));
        assert_eq!(waiting.primary_pod, None);
        assert!(
            waiting
                .waiting
                .as_deref()
                .is_some_and(|w| w.contains("shop-shard-0-1")),
            "{waiting:?}"
        );
        let chosen = Case::new(None).decide(shard(
            vec![
                pod(
                    0,
                    Some(report(
                        "shop-shard-0-0",
                        InstanceRole::Pending,
                        Some((1, 900)),
                    )),
                ),
                pod(
                    1,
                    Some(report(
                        "shop-shard-0-1",
                        InstanceRole::Pending,
                        Some((2, 100)),
                    )),
                ),
                pod(
                    2,
                    Some(report("shop-shard-0-2", InstanceRole::Pending, None)),
                ),
            ],
            &[0, 1, 2],
        ));
        assert_eq!(
            chosen.primary_pod.as_deref(),
            Some("shop-shard-0-1"),
            "a later timeline beats a larger position on an older one"
        );
    }

    #[test]
    fn a_refused_data_directory_is_never_chosen() {
        let mut refused = report("shop-shard-0-0", InstanceRole::Refused, Some((9, 9999)));
        refused.problem = Some(InstanceProblem {
            reason: "MajorVersionMismatch".into(),
            message: "data directory is version 15, server is 17".into(),
        });
        let decision = Case::new(None).decide(shard(
            vec![
                pod(0, Some(refused)),
                pod(
                    1,
                    Some(report(
                        "shop-shard-0-1",
                        InstanceRole::Pending,
                        Some((1, 10)),
                    )),
                ),
            ],
            &[0, 1],
        ));
        assert_eq!(decision.primary_pod.as_deref(), Some("shop-shard-0-1"));
        assert_eq!(
            decision.instances[0].problem.as_deref(),
            Some("MajorVersionMismatch: data directory is version 15, server is 17")
        );
    }

    #[test]
    fn the_recorded_primary_is_kept_and_labels_follow_it() {
        let mut labelled = pod(2, None);
        labelled.role_label = Some(PRIMARY_ROLE.into());
        let decision = Case::new(Some(recorded("shop-shard-0-2")))
            .decide(shard(vec![pod(0, None), pod(1, None), labelled], &[]));
        assert_eq!(decision.primary_pod.as_deref(), Some("shop-shard-0-2"));
        assert_eq!(
            decision.relabel,
            vec![
                ("shop-shard-0-0".to_string(), REPLICA_ROLE),
                ("shop-shard-0-1".to_string(), REPLICA_ROLE),
            ],
            "only labels that differ are written"
        );
    }

    #[test]
    fn while_paused_nothing_is_chosen_promoted_or_relabelled() {
        let mut case = Case::new(None);
        case.paused = true;
        let decision = case.decide(shard(vec![pod(0, None)], &[]));
        assert_eq!(decision.primary_pod, None);
        assert!(decision.relabel.is_empty());
        let mut case = Case::new(Some(recorded("shop-shard-0-0")));
        case.paused = true;
        case.unhealthy_for = Duration::from_secs(600);
        let decision = case.decide(running_shard(false, [10, 20]));
        assert_eq!(decision.primary_pod.as_deref(), Some("shop-shard-0-0"));
    }

    #[test]
    fn a_lost_primary_is_replaced_by_the_replica_with_the_most_wal_after_the_delay() {
        let mut case = Case::new(Some(recorded("shop-shard-0-0")));
        let mut lost = running_shard(true, [700, 800]);
        lost.pods.remove(0);
        case.unhealthy_for = Duration::from_secs(9);
        let early = case.decide(lost.clone());
        assert_eq!(
            early.primary_pod.as_deref(),
            Some("shop-shard-0-0"),
            "not before the delay"
        );
        assert_eq!(
            early.primary_health.as_deref(),
            Some("pod shop-shard-0-0 does not exist")
        );
        case.unhealthy_for = Duration::from_secs(10);
        let decision = case.decide(lost);
        assert_eq!(decision.primary_pod.as_deref(), Some("shop-shard-0-2"));
        let progress = decision.failover.expect("in progress");
        assert_eq!(
            (progress.kind.as_str(), progress.from.as_str()),
            (FAILOVER, "shop-shard-0-0")
        );
        assert_eq!(decision.news[0].reason, "FailoverStarted");
        assert!(
            decision
                .relabel
                .contains(&("shop-shard-0-2".to_string(), PRIMARY_ROLE)),
            "the -primary Service moves with the record"
        );
    }

    #[test]
    fn an_unanswering_primary_is_given_time_to_fence_itself_first() {
        let mut case = Case::new(Some(recorded("shop-shard-0-0")));
        case.unhealthy_for = Duration::from_secs(25);
        let waiting = case.decide(running_shard(false, [700, 800]));
        assert_eq!(
            waiting.primary_pod.as_deref(),
            Some("shop-shard-0-0"),
            "10 s + 20 s to fence"
        );
        case.unhealthy_for = Duration::from_secs(30);
        let decision = case.decide(running_shard(false, [700, 800]));
        assert_eq!(decision.primary_pod.as_deref(), Some("shop-shard-0-2"));
    }

    fn recorded_object(primary: &str, uid: &str) -> ScaledAppStatus {
        let mut status = recorded(primary);
        status.shards[0].primary_pod_uid = Some(uid.into());
        status
    }

    #[test]
    fn the_record_names_the_pod_object_and_a_record_without_one_adopts_the_serving_pod() {
        let first = Case::new(None).decide(shard(vec![pod(0, None), pod(1, None)], &[]));
        assert_eq!(first.primary_pod_uid.as_deref(), Some("uid-0"));
        // Written before uids were recorded: the ready primary is the confirmed object.
        let adopted =
            Case::new(Some(recorded("shop-shard-0-0"))).decide(running_shard(true, [1, 2]));
        assert_eq!(adopted.primary_pod_uid.as_deref(), Some("uid-0"));
        assert_eq!(adopted.primary_health, None);
    }

    #[test]
    fn a_recreated_primary_pod_is_failed_over_to_the_replica_with_the_most_wal_after_the_delay() {
        // Its StatefulSet recreated it (new uid) and it already runs again: whatever took writes
        // is gone, and the new pod waits for this decision instead of starting as primary.
        let mut recreated = running_shard(false, [700, 800]);
        recreated.pods[0].uid = Some("uid-0-again".into());
        recreated.pods[0].instance = Some(InstanceStatus {
            ready: false,
            ..report("shop-shard-0-0", InstanceRole::Pending, Some((1, 900)))
        });
        let mut case = Case::new(Some(recorded_object("shop-shard-0-0", "uid-0")));
        case.unhealthy_for = Duration::from_secs(9);
        let early = case.decide(recreated.clone());
        assert_eq!(early.primary_pod.as_deref(), Some("shop-shard-0-0"));
        assert_eq!(
            early.primary_pod_uid.as_deref(),
            Some("uid-0"),
            "not confirmed"
        );
        assert!(early.failover_due);
        assert!(
            early
                .primary_health
                .as_deref()
                .is_some_and(|why| why.contains("was recreated")),
            "{early:?}"
        );
        case.unhealthy_for = Duration::from_secs(10);
        let decision = case.decide(recreated);
        assert_eq!(decision.primary_pod.as_deref(), Some("shop-shard-0-2"));
        assert_eq!(decision.primary_pod_uid.as_deref(), Some("uid-2"));
        assert_eq!(decision.news[0].reason, "FailoverStarted");
    }

    #[test]
    fn a_recreated_primary_nobody_can_replace_is_confirmed_after_the_delay() {
        // The replicas do not answer: none can be shown to have the data.
        let mut recreated = shard(vec![pod(0, None), pod(1, None), pod(2, None)], &[0, 1, 2]);
        recreated.pods[0].uid = Some("uid-0-again".into());
        let mut case = Case::new(Some(recorded_object("shop-shard-0-0", "uid-0")));
        case.unhealthy_for = Duration::from_secs(5);
        let early = case.decide(recreated.clone());
        assert_eq!(early.primary_pod_uid.as_deref(), Some("uid-0"));
        assert!(early.failover_due, "time alone will confirm it");
        assert!(
            early
                .primary_health
                .as_deref()
                .is_some_and(|why| why.contains("confirmed once database.failover.delaySeconds")),
            "{early:?}"
        );
        case.unhealthy_for = Duration::from_secs(10);
        let confirmed = case.decide(recreated);
        assert_eq!(confirmed.primary_pod.as_deref(), Some("shop-shard-0-0"));
        assert_eq!(confirmed.primary_pod_uid.as_deref(), Some("uid-0-again"));
        assert_eq!(confirmed.news[0].reason, "PrimaryConfirmed");
        assert_eq!(confirmed.failover, None);
    }

    #[test]
    fn a_switchover_records_the_target_pod_object() {
        let mut case = Case::new(Some(recorded_object("shop-shard-0-0", "uid-0")));
        case.switchover = Some(SwitchoverRequest {
            shard: 0,
            to: Some("shop-shard-0-1".into()),
            id: "s1".into(),
        });
        let decision = case.decide(running_shard(true, [800, 700]));
        assert_eq!(decision.primary_pod.as_deref(), Some("shop-shard-0-1"));
        assert_eq!(decision.primary_pod_uid.as_deref(), Some("uid-1"));
    }

    #[test]
    fn only_claims_older_than_their_statefulset_can_hold_data_from_before_it() {
        // The StatefulSet controller makes the claims right after the set: nothing on them
        // until a recorded primary initialises; a claim kept from an earlier ScaledApp is older.
        assert!(!retained(Some(&at(100)), Some(&at(100))));
        assert!(!retained(Some(&at(101)), Some(&at(100))));
        assert!(retained(Some(&at(40)), Some(&at(100))));
        assert!(retained(None, Some(&at(100))));
        assert!(retained(Some(&at(100)), None));
    }

    #[test]
    fn a_primary_pod_that_went_down_and_is_starting_again_is_failed_over_after_the_delay_alone() {
        // Deleted and recreated by its StatefulSet (or its container restarted): the process
        // that could have taken writes is gone, and the new one would start as primary on a
        // stale record. No fence wait.
        let mut case = Case::new(Some(recorded("shop-shard-0-0")));
        case.unhealthy_for = Duration::from_secs(10);
        case.restarted = true;
        let decision = case.decide(running_shard(false, [700, 800]));
        assert_eq!(decision.primary_pod.as_deref(), Some("shop-shard-0-2"));
        case.unhealthy_for = Duration::from_secs(9);
        let waiting = case.decide(running_shard(false, [700, 800]));
        assert_eq!(waiting.primary_pod.as_deref(), Some("shop-shard-0-0"));
    }

    #[test]
    fn with_synchronous_replication_every_replica_must_report_before_one_is_promoted() {
        let mut case = Case::new(Some(recorded("shop-shard-0-0")));
        case.app.spec.database.synchronous_replication = true;
        case.unhealthy_for = Duration::from_secs(60);
        let mut observed = running_shard(true, [700, 800]);
        observed.pods.remove(0);
        observed.pods[1].instance = None;
        let blocked = case.decide(observed.clone());
        assert_eq!(blocked.primary_pod.as_deref(), Some("shop-shard-0-0"));
        assert!(
            blocked
                .primary_health
                .as_deref()
                .is_some_and(|h| h.contains("waiting for shop-shard-0-2")),
            "{blocked:?}"
        );
        observed.pods[1].instance = Some(report(
            "shop-shard-0-2",
            InstanceRole::Replica,
            Some((1, 800)),
        ));
        assert_eq!(
            case.decide(observed).primary_pod.as_deref(),
            Some("shop-shard-0-2")
        );
    }

    #[test]
    fn a_failover_completes_when_the_target_reports_itself_primary() {
        let mut status = recorded("shop-shard-0-2");
        status.shards[0].failover = Some(FailoverStatus {
            kind: FAILOVER.into(),
            reason: "pod shop-shard-0-0 does not exist".into(),
            from: "shop-shard-0-0".into(),
            to: "shop-shard-0-2".into(),
            started_at: at(900),
            completed_at: None,
            timeline: None,
        });
        let mut case = Case::new(Some(status));
        let mut observed = running_shard(true, [700, 800]);
        observed.pods[2].instance = Some(report(
            "shop-shard-0-2",
            InstanceRole::Promoting,
            Some((1, 800)),
        ));
        // Promoting for a while is not a reason to give up on it.
        case.unhealthy_for = Duration::from_secs(30);
        let promoting = case.decide(observed.clone());
        assert_eq!(promoting.primary_pod.as_deref(), Some("shop-shard-0-2"));
        assert!(promoting.failover.is_some() && promoting.last_failover.is_none());
        assert_eq!(
            promoting.primary_health.as_deref(),
            Some(
                "shop-shard-0-2 reports Promoting, not ready; being promoted to take over from shop-shard-0-0"
            )
        );
        observed.pods[2].instance = Some(report(
            "shop-shard-0-2",
            InstanceRole::Primary,
            Some((2, 900)),
        ));
        case.unhealthy_for = Duration::ZERO;
        let done = case.decide(observed);
        assert_eq!(done.failover, None);
        let last = done.last_failover.expect("recorded");
        assert_eq!(
            (last.completed_at, last.timeline),
            (Some(at(1000)), Some(2))
        );
        assert_eq!(done.timeline, Some(2));
        assert_eq!(done.news[0].reason, "FailoverCompleted");
    }

    #[test]
    fn a_switchover_moves_the_primary_to_the_named_or_most_caught_up_replica_once() {
        let mut case = Case::new(Some(recorded("shop-shard-0-0")));
        case.switchover = Some(SwitchoverRequest {
            shard: 0,
            to: None,
            id: "r1".into(),
        });
        let decision = case.decide(running_shard(true, [700, 800]));
        assert_eq!(decision.primary_pod.as_deref(), Some("shop-shard-0-2"));
        assert_eq!(decision.handled_switchover.as_deref(), Some("r1"));
        assert_eq!(decision.failover.expect("started").kind, SWITCHOVER);
        case.switchover = Some(SwitchoverRequest {
            shard: 0,
            to: Some("shop-shard-0-7".into()),
            id: "r2".into(),
        });
        let refused = case.decide(running_shard(true, [700, 800]));
        assert_eq!(refused.primary_pod.as_deref(), Some("shop-shard-0-0"));
        assert_eq!(refused.news[0].reason, "SwitchoverRefused");
        assert_eq!(
            refused.handled_switchover.as_deref(),
            Some("r2"),
            "refused once, not retried"
        );
    }

    #[test]
    fn pod_names_give_their_shard_and_ordinal() {
        let app = validated_example("shop");
        assert_eq!(shard_and_ordinal(&app, "shop-shard-12-3"), Some((12, 3)));
        assert_eq!(shard_and_ordinal(&app, "shop-redis-0"), None);
        assert_eq!(shard_and_ordinal(&app, "shopping-shard-1-0"), None);
    }

    #[test]
    fn a_new_template_replaces_replicas_one_at_a_time_then_switches_over_then_the_old_primary() {
        let case = Case::new(Some(recorded("shop-shard-0-0")));
        let mut observed = running_shard(true, [900, 900]);
        observed.update_revision = Some("r2".into());
        let first = case.decide(observed.clone());
        assert_eq!(first.replace, vec!["shop-shard-0-1".to_string()]);
        assert_eq!(first.primary_pod.as_deref(), Some("shop-shard-0-0"));

        // While the replaced pod is not back, nothing else moves.
        let mut restarting = observed.clone();
        restarting.pods[1].instance = None;
        assert!(case.decide(restarting).replace.is_empty());

        observed.pods[1].revision = Some("r2".into());
        assert_eq!(
            case.decide(observed.clone()).replace,
            vec!["shop-shard-0-2".to_string()]
        );

        observed.pods[2].revision = Some("r2".into());
        let switch = case.decide(observed.clone());
        assert!(
            switch.replace.is_empty(),
            "the primary is never deleted while primary"
        );
        let progress = switch.failover.expect("switchover");
        assert_eq!(
            (progress.kind.as_str(), progress.from.as_str()),
            (SWITCHOVER, "shop-shard-0-0")
        );
        assert!(
            progress.reason.contains("rolling update"),
            "{}",
            progress.reason
        );
        assert_eq!(switch.handled_switchover, None);

        // After the switchover, the old primary is an outdated replica: replaced last.
        let after = Case::new(Some(recorded(&progress.to)));
        let promoted: usize = if progress.to == "shop-shard-0-1" {
            1
        } else {
            2
        };
        observed.pods[promoted].instance =
            Some(report(&progress.to, InstanceRole::Primary, Some((2, 950))));
        observed.pods[0].instance = Some(report(
            "shop-shard-0-0",
            InstanceRole::Replica,
            Some((2, 950)),
        ));
        assert_eq!(
            after.decide(observed).replace,
            vec!["shop-shard-0-0".to_string()]
        );
    }
}
