//! The pure middle of the Postgres stage: from what [`observe`](super::observe) saw, the status
//! before this pass and the failover clocks, decide each shard's primary, the pods' role labels,
//! the pods to replace, and the failovers and switchovers that start or complete.
//!
//! The first primary of a shard is `<shard>-0` when no volume holds data yet. When volumes were
//! kept (a ScaledApp re-created under `dataPolicy: Retain`), it is the instance with the newest
//! data (highest timeline, then WAL position), chosen only once every pod with a volume has
//! reported: a replica that is further behind must never become the primary of older data.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use scaled_contract::instance::{InstanceRole, UNKNOWN_ROLE};

use crate::crd::{FAILOVER, FailoverStatus, InstanceSummary};
use crate::names::{PRIMARY_ROLE, REPLICA_ROLE};
use crate::validate::ValidatedApp;

use super::clock;
use super::decision::{Inputs, News, ShardDecision, Topology, pods_per_shard};
use super::health::{Health, primary_health};
use super::observation::{PodObservation, ShardObservation, pod_name};
use super::promote::{candidate, fail_over, switch_over, uid_of};
use super::switchover_request::SwitchoverRequest;

/// Decides each shard's primary, the pods' role labels and replacements, and what is news.
/// Pure: the same inputs always give the same topology.
pub fn decide(inputs: Inputs<'_>, observed: &[ShardObservation]) -> Topology {
    let request = inputs.switchover.and_then(|request| request.as_ref().ok());
    let shards: Vec<ShardDecision> = observed
        .iter()
        .map(|shard| decide_shard(inputs, request, shard))
        .collect();
    let mut news: Vec<News> = shards.iter().flat_map(|shard| shard.news.clone()).collect();
    let mut switchover_handled = shards
        .iter()
        .find_map(|shard| shard.handled_switchover.clone());
    if switchover_handled.is_none() {
        // A request no shard can act on: say why once, and do not look at it again.
        let refused = match inputs.switchover {
            Some(Ok(request)) if request.shard >= observed.len() as u32 => Some((
                request.id.clone(),
                format!("shard {} does not exist", request.shard),
            )),
            Some(Err((id, why))) => Some((id.clone(), why.clone())),
            _ => None,
        };
        if let Some((id, why)) = refused.filter(|(id, _)| !id.is_empty()) {
            news.push(News {
                warning: true,
                reason: "SwitchoverRefused",
                note: format!("switchover request {id}: {why}"),
            });
            switchover_handled = Some(id);
        }
    }
    Topology {
        shards,
        switchover_handled,
        news,
    }
}

fn decide_shard(
    inputs: Inputs<'_>,
    request: Option<&SwitchoverRequest>,
    shard: &ShardObservation,
) -> ShardDecision {
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
        let pod = shard.pods.iter().find(|pod| pod.name == primary);
        // Microseconds, as status keeps them: a clock read back must equal the one written, or
        // every pass would write status again.
        let micros = inputs.now.0.as_microsecond();
        let now = MicroTime(Timestamp::from_microsecond(micros).unwrap_or(inputs.now.0));
        decision.clock = clock::advance(
            inputs.clocks.get(&shard.index),
            &primary,
            health == Health::Healthy,
            matches!(health, Health::Gone(_) | Health::Recreated(_)),
            pod.and_then(PodObservation::incarnation).as_deref(),
            &now,
        );
        let (unhealthy_for, went_down) = decision
            .clock
            .as_ref()
            .map_or((Duration::ZERO, false), |clock| {
                (clock::elapsed(clock, &now), clock.went_down)
            });
        if !inputs.paused {
            if health != Health::Healthy {
                fail_over(
                    &mut decision,
                    inputs,
                    shard,
                    &primary,
                    &health,
                    (unhealthy_for, went_down),
                );
            } else if decision.failover.is_none() {
                match request.filter(|r| r.shard == shard.index) {
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
    if decision.primary_pod.as_ref() != decision.clock.as_ref().map(|clock| &clock.pod) {
        // The primary moved this pass: the new one gets a clock of its own if it needs one.
        decision.clock = None;
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
    let expected = pods_per_shard(inputs.app) as usize;
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

/// The first primary of a shard, or why it cannot be chosen yet.
fn first_primary(app: &ValidatedApp, shard: &ShardObservation) -> Result<String, String> {
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
        .map(|ordinal| pod_name(app, shard.index, *ordinal))
        .collect();
    if with_data.is_empty() && shard.volumes.is_empty() {
        // Nothing was ever stored: the first pod initialises the shard.
        return Ok(pod_name(app, shard.index, 0));
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
        None => Ok(pod_name(app, shard.index, 0)),
    }
}

fn summary(pod: &PodObservation) -> InstanceSummary {
    match &pod.instance {
        Some(instance) => InstanceSummary {
            pod: pod.name.clone(),
            role: instance.role.as_str().to_string(),
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
            role: UNKNOWN_ROLE.into(),
            ..InstanceSummary::default()
        },
    }
}
