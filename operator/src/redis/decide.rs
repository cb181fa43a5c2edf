//! The Redis decision, pure: from the pods and what their servers say, the primary, the labels
//! to move, the `REPLICAOF` commands to send, and the failover when the primary is lost.
//!
//! How a Redis pod is kept from taking writes it should not: every pod but a new ScaledApp's
//! first starts as a replica of nobody ([`FENCE_HOST`](super::observation::FENCE_HOST)),
//! read-only, and only this decision makes a server primary (`REPLICAOF NO ONE`). So a primary
//! whose redis-server restarts (a crash, an OOM kill) comes back read-only with what its
//! append-only file held, and can never serve writes that its replica, which the app waited on,
//! does not have; the most up-to-date server is promoted instead. Clients reach the primary
//! only through the primary Service, which selects the pod labelled `primary`: a pod recreated
//! under the same name carries no label, and a demoted one loses it.

use std::cmp::Reverse;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use scaled_contract::instance::pod_name;

use crate::crd::{
    FAILOVER, FailoverStatus, InstanceSummary, PrimaryUnhealthy, RedisReplicationStatus,
};
use crate::names::{PRIMARY_ROLE, REDIS_COMPONENT, REPLICA_ROLE, child_name};
use crate::postgres::News;
use crate::validate::ValidatedApp;

use super::observation::{RedisPod, Report};

/// How long a primary that exists but does not answer is waited for before a replica takes
/// over: long enough for a lost packet or a slow fork, short because the app degrades (no new
/// sign-ins, queue delivery paused) until a primary answers.
pub const UNANSWERED_DELAY: Duration = Duration::from_secs(3);

/// What the Redis stage takes.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// The ScaledApp.
    pub app: &'a ValidatedApp,
    /// What status said before this pass (the primary is recorded there).
    pub current: Option<&'a RedisReplicationStatus>,
    /// While paused nothing is promoted, repointed or relabelled.
    pub paused: bool,
    /// Now.
    pub now: &'a Time,
}

/// What the Redis stage decided this pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RedisDecision {
    /// What goes into `status.redisReplication`.
    pub status: RedisReplicationStatus,
    /// Commands for the servers, in order (a promotion first).
    pub commands: Vec<Command>,
    /// Pods whose role label must change, with the new value.
    pub relabel: Vec<(String, &'static str)>,
    /// What deserves an Event.
    pub news: Vec<News>,
    /// The primary is in question and a server answers: look again within a second.
    pub in_question: bool,
    /// The primary answers and a replica could take over: keep looking every few seconds, since
    /// a crashed redis-server (restarted in place) or a cut-off pod changes no object.
    pub watching: bool,
}

/// One command for one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The pod.
    pub pod: String,
    /// Its IP.
    pub ip: String,
    /// What to do.
    pub action: Action,
}

/// What a server is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `REPLICAOF NO ONE`: take writes.
    Promote,
    /// `REPLICAOF <ip> <port>`: follow the primary; when it was a primary, also drop its
    /// clients (`CLIENT KILL TYPE normal`) so none keeps writing to it over an old connection
    /// (they reconnect through the primary Service and find the new primary).
    Follow {
        /// The primary's IP.
        primary_ip: String,
        /// Drop the server's client connections.
        disconnect_clients: bool,
    },
}

/// Why the recorded primary cannot take writes now.
enum Health {
    Healthy,
    /// Nothing takes writes there (gone, recreated, restarted fenced): a failover is due now.
    NoWriter(String),
    /// It exists but does not answer; it may still take writes from clients that reach it.
    Unanswered(String),
}

/// Decides the Redis topology; `None` when the ScaledApp uses an external Redis.
pub fn decide(inputs: Inputs<'_>, pods: &[RedisPod]) -> Option<RedisDecision> {
    let app = inputs.app;
    if app.redis_pods == 0 {
        return None;
    }
    let set = child_name(&app.name, REDIS_COMPONENT);
    let expected: Vec<String> = (0..app.redis_pods).map(|i| pod_name(&set, i)).collect();
    let pods: Vec<&RedisPod> = pods
        .iter()
        .filter(|pod| expected.contains(&pod.name))
        .collect();
    let find = |name: &str| pods.iter().copied().find(|pod| pod.name == name);
    let current = inputs.current.cloned().unwrap_or_default();
    let mut decision = RedisDecision {
        status: RedisReplicationStatus {
            last_failover: current.last_failover.clone(),
            ..RedisReplicationStatus::default()
        },
        ..RedisDecision::default()
    };
    let recorded = current
        .primary_pod
        .clone()
        .filter(|pod| expected.contains(pod));

    let primary = match recorded {
        None => {
            // A new ScaledApp (its first pod starts primary by itself), or one whose Redis ran
            // before replication: the server with the most data, else the first pod.
            let best = best(pods.iter().copied().filter(|pod| !pod.deleting))
                .filter(|pod| {
                    pod.report
                        .answered()
                        .is_some_and(|r| r.offset > 0 || r.keys > 0)
                })
                .map(|pod| pod.name.clone());
            let chosen = best.unwrap_or_else(|| expected[0].clone());
            match health(&chosen, find(&chosen), None) {
                Health::Healthy => {}
                Health::NoWriter(why) | Health::Unanswered(why) => {
                    decision.status.primary_health = Some(why);
                }
            }
            chosen
        }
        Some(recorded) => {
            let pod = find(&recorded);
            match health(&recorded, pod, current.primary_pod_uid.as_deref()) {
                Health::Healthy => recorded,
                Health::NoWriter(why) => {
                    decision.status.primary_health = Some(why.clone());
                    fail_over(&mut decision, inputs, &pods, &recorded, &why, true)
                }
                Health::Unanswered(why) => {
                    decision.status.primary_health = Some(why.clone());
                    let clock = match current.primary_unhealthy.clone() {
                        Some(clock) if clock.pod == recorded => clock,
                        _ => PrimaryUnhealthy {
                            pod: recorded.clone(),
                            since: MicroTime(inputs.now.0),
                            incarnation: pod.and_then(|pod| pod.uid.clone()),
                            went_down: false,
                        },
                    };
                    let waited = inputs.now.0.duration_since(clock.since.0);
                    let due = waited.as_secs_f64() >= UNANSWERED_DELAY.as_secs_f64();
                    decision.status.primary_unhealthy = Some(clock);
                    if due {
                        fail_over(&mut decision, inputs, &pods, &recorded, &why, false)
                    } else {
                        recorded
                    }
                }
            }
        }
    };
    if decision
        .status
        .primary_unhealthy
        .as_ref()
        .is_some_and(|clock| clock.pod != primary)
    {
        decision.status.primary_unhealthy = None;
        decision.status.primary_health = None;
    }
    let primary_pod = find(&primary);
    decision.status.primary_pod_uid = primary_pod.and_then(|pod| pod.uid.clone()).or_else(|| {
        current
            .primary_pod_uid
            .clone()
            .filter(|_| current.primary_pod.as_deref() == Some(&primary))
    });
    decision.status.primary_pod = Some(primary.clone());
    decision.status.instances = summaries(&pods, primary_pod);
    let answering = pods.iter().any(|pod| pod.report.answered().is_some());
    decision.in_question = decision.status.primary_health.is_some() && answering;
    if !inputs.paused {
        steer(&mut decision, &pods, primary_pod);
    }
    let primary_answers = primary_pod
        .and_then(|pod| pod.report.answered())
        .is_some_and(|report| report.master);
    decision.watching = primary_answers && app.redis_replicas > 0;
    decision.in_question |= !decision.commands.is_empty();
    Some(decision)
}

fn health(name: &str, pod: Option<&RedisPod>, recorded_uid: Option<&str>) -> Health {
    let Some(pod) = pod else {
        return Health::NoWriter(format!("pod {name} does not exist"));
    };
    if pod.deleting {
        return Health::NoWriter(format!("pod {name} is being deleted"));
    }
    if let (Some(recorded), Some(uid)) = (recorded_uid, pod.uid.as_deref())
        && recorded != uid
    {
        return Health::NoWriter(format!("pod {name} was recreated"));
    }
    match &pod.report {
        Report::NotAsked => Health::NoWriter(format!("pod {name} is not running")),
        Report::Unreachable(_) => Health::Unanswered(format!("{name} does not answer")),
        Report::Answered(report) if report.master => Health::Healthy,
        Report::Answered(report) if report.fenced() => {
            Health::NoWriter(format!("{name} restarted and came back read-only (fenced)"))
        }
        Report::Answered(_) => Health::NoWriter(format!("{name} is no longer a primary")),
    }
}

/// Promotes the most up-to-date server that answers (the old primary too, when `with_old` and
/// it answers: restarted fenced, it may hold the most). Keeps the old primary when nobody can
/// take over.
fn fail_over(
    decision: &mut RedisDecision,
    inputs: Inputs<'_>,
    pods: &[&RedisPod],
    old: &str,
    why: &str,
    with_old: bool,
) -> String {
    if inputs.paused {
        return old.to_string();
    }
    let candidates = pods.iter().copied().filter(|pod| {
        !pod.deleting && pod.report.answered().is_some() && (with_old || pod.name != old)
    });
    let Some(target) = best(candidates) else {
        return old.to_string();
    };
    let offset = target.report.answered().map_or(0, |report| report.offset);
    decision.status.last_failover = Some(FailoverStatus {
        kind: FAILOVER.into(),
        reason: why.to_string(),
        from: old.to_string(),
        to: target.name.clone(),
        started_at: inputs.now.clone(),
        completed_at: Some(inputs.now.clone()),
        timeline: None,
    });
    decision.status.primary_health = None;
    decision.status.primary_unhealthy = None;
    decision.news.push(News {
        warning: true,
        reason: "RedisFailover",
        note: format!(
            "Redis primary {old}: {why}; {} is the primary now (replication offset {offset})",
            target.name
        ),
    });
    target.name.clone()
}

/// The server holding the most writes: highest replication offset, then most keys, then a
/// primary, then the lowest ordinal.
fn best<'a>(pods: impl Iterator<Item = &'a RedisPod>) -> Option<&'a RedisPod> {
    pods.filter(|pod| pod.report.answered().is_some())
        .max_by_key(|pod| {
            let report = pod.report.answered().cloned().unwrap_or_default();
            (
                report.offset,
                report.keys,
                report.master,
                Reverse(pod.ordinal),
            )
        })
}

/// The commands and labels that make `primary` the one writer and every other server its
/// replica.
fn steer(decision: &mut RedisDecision, pods: &[&RedisPod], primary: Option<&RedisPod>) {
    let Some(primary) = primary.filter(|pod| !pod.deleting) else {
        return;
    };
    if let Some(report) = primary.report.answered()
        && !report.master
        && let Some(ip) = &primary.ip
    {
        decision.commands.push(Command {
            pod: primary.name.clone(),
            ip: ip.clone(),
            action: Action::Promote,
        });
    }
    if primary.role_label.as_deref() != Some(PRIMARY_ROLE) {
        decision.relabel.push((primary.name.clone(), PRIMARY_ROLE));
    }
    for pod in pods
        .iter()
        .filter(|pod| pod.name != primary.name && !pod.deleting)
    {
        if pod.role_label.as_deref() != Some(REPLICA_ROLE) {
            decision.relabel.push((pod.name.clone(), REPLICA_ROLE));
        }
        let (Some(report), Some(ip), Some(primary_ip)) =
            (pod.report.answered(), &pod.ip, &primary.ip)
        else {
            continue;
        };
        if report.master || report.master_host.as_deref() != Some(primary_ip.as_str()) {
            decision.commands.push(Command {
                pod: pod.name.clone(),
                ip: ip.clone(),
                action: Action::Follow {
                    primary_ip: primary_ip.clone(),
                    disconnect_clients: report.master,
                },
            });
        }
    }
}

/// Every pod as status shows it.
fn summaries(pods: &[&RedisPod], primary: Option<&RedisPod>) -> Vec<InstanceSummary> {
    let primary_offset = primary
        .and_then(|pod| pod.report.answered())
        .filter(|report| report.master)
        .map(|report| report.offset);
    let primary_ip = primary.and_then(|pod| pod.ip.as_deref());
    pods.iter()
        .map(|pod| {
            let is_primary = primary.is_some_and(|primary| primary.name == pod.name);
            let (role, ready, lag) = match &pod.report {
                Report::NotAsked => ("Pending", false, None),
                Report::Unreachable(_) => ("Unknown", false, None),
                Report::Answered(report) if report.master => (
                    if is_primary { "Primary" } else { "Demoting" },
                    is_primary,
                    None,
                ),
                Report::Answered(report) if report.fenced() => ("Fenced", false, None),
                Report::Answered(report) if report.master_host.as_deref() == primary_ip => (
                    "Replica",
                    report.link_up,
                    primary_offset.map(|offset| (offset - report.offset).max(0) >> 20),
                ),
                Report::Answered(_) => ("Repointing", false, None),
            };
            InstanceSummary {
                pod: pod.name.clone(),
                role: role.into(),
                ready,
                lag_mib: lag,
                ..InstanceSummary::default()
            }
        })
        .collect()
}
