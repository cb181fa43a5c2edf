//! Moving a shard's primary: a failover when the primary is lost (the replica with the most WAL
//! is promoted once the delay has passed) and a switchover on request or for a rolling update
//! (the most caught-up ready replica, or the one named). Pure, like the rest of [`decide`].
//!
//! [`decide`]: super::decide

use std::time::Duration;

use scaled_contract::instance::{InstanceRole, InstanceStatus};

use crate::crd::{FAILOVER, FailoverStatus, SWITCHOVER};
use crate::validate::ValidatedApp;

use super::decision::{Inputs, News, PROMOTION_GRACE, ShardDecision, pods_per_shard};
use super::health::Health;
use super::observation::{PodObservation, ShardObservation, pod_name};
use super::switchover_request::SwitchoverRequest;

/// Promotes the replica with the most WAL once the primary has been unhealthy long enough.
///
/// `clock` is how long the primary has looked unhealthy and whether it went down meanwhile.
pub(super) fn fail_over(
    decision: &mut ShardDecision,
    inputs: Inputs<'_>,
    shard: &ShardObservation,
    primary: &str,
    health: &Health,
    (unhealthy_for, went_down): (Duration, bool),
) {
    let failover = &inputs.app.spec.database.failover;
    let mut threshold = Duration::from_secs(failover.delay_seconds.max(0) as u64);
    if matches!(health, Health::Unresponsive(_)) && !went_down {
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
    let from = decision
        .failover
        .as_ref()
        .map_or(primary.to_string(), |progress| progress.from.clone());
    record_move(decision, inputs, shard, FAILOVER, reason, from, target);
}

/// Records a move of the primary to `target`, under way from now: status names the target at
/// once (its instance manager promotes itself when it reads that) and its pod object's uid.
fn record_move(
    decision: &mut ShardDecision,
    inputs: Inputs<'_>,
    shard: &ShardObservation,
    kind: &str,
    reason: String,
    from: String,
    target: String,
) {
    decision.failover = Some(FailoverStatus {
        kind: kind.into(),
        reason,
        from,
        to: target.clone(),
        started_at: inputs.now.clone(),
        completed_at: None,
        timeline: None,
    });
    decision.primary_pod_uid = uid_of(shard, &target);
    decision.primary_pod = Some(target);
}

/// The uid of pod `name` of `shard`, when it exists.
pub(super) fn uid_of(shard: &ShardObservation, name: &str) -> Option<String> {
    shard
        .pods
        .iter()
        .find(|pod| pod.name == name)
        .and_then(|pod| pod.uid.clone())
}

/// The replica to promote: the one that received the most WAL. With synchronous replication
/// every commit acknowledged to a client is on at least one replica, so the replica with the
/// most WAL has them all; but only if every replica could be asked.
pub(super) fn candidate(
    app: &ValidatedApp,
    shard: &ShardObservation,
    primary: &str,
) -> Result<String, String> {
    let others: Vec<String> = (0..pods_per_shard(app))
        .map(|ordinal| pod_name(app, shard.index, ordinal))
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

/// Moves the primary on request: to the named replica or the most caught-up ready one. The
/// record changes at once; the old primary stops (sending its last WAL to its replicas) and the
/// target promotes once its WAL receiver has stopped, so nothing committed is left behind.
pub(super) fn switch_over(
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
            record_move(
                decision,
                inputs,
                shard,
                SWITCHOVER,
                reason,
                primary.to_string(),
                target,
            );
        }
        Err(refused) => decision.news.push(News {
            warning: true,
            reason: "SwitchoverRefused",
            note: format!("switchover request {}: {refused}", request.id),
        }),
    }
}
