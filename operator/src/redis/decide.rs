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
    FAILOVER, FailoverStatus, InstanceSummary, PrimaryUnhealthy, RedisReplicationStatus, SWITCHOVER,
};
use crate::names::{PRIMARY_ROLE, REDIS_COMPONENT, REPLICA_ROLE, child_name};
use crate::postgres::News;
use crate::validate::ValidatedApp;

use super::observation::{RedisPod, Report};
use super::switchover_request::RedisSwitchoverRequest;

/// How long a primary that exists but does not answer is waited for before a replica takes
/// over: long enough for a lost packet or a slow fork, short because the app degrades (no new
/// sign-ins, queue delivery paused) until a primary answers.
pub const UNANSWERED_DELAY: Duration = Duration::from_secs(3);
/// How long the primary may take to hand over before it is told to give up: Redis waits for
/// the replica to catch up
/// ([`HAND_OVER_TIMEOUT`](super::enact::HAND_OVER_TIMEOUT)), writes paused, and otherwise
/// aborts and takes writes again; past this the switchover is reported failed.
pub const SWITCHOVER_GIVE_UP: Duration = Duration::from_secs(15);

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
    /// A switchover request not acted on yet (see [`super::pending_redis_switchover`]).
    pub switchover: Option<&'a Result<RedisSwitchoverRequest, (String, String)>>,
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
    /// `FAILOVER TO <ip> <port> TIMEOUT <ms>`, to the primary: pause writes, wait until the
    /// replica at `to_ip` has every write, make it the primary and follow it. Nothing written is
    /// lost; writes wait (or are refused, as by any replica) until the labels move.
    HandOver {
        /// The replica taking over.
        to_ip: String,
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
            last_switchover_request: current.last_switchover_request.clone(),
            ..RedisReplicationStatus::default()
        },
        ..RedisDecision::default()
    };
    let mut recorded = current
        .primary_pod
        .clone()
        .filter(|pod| expected.contains(pod));
    let mut recorded_uid = current.primary_pod_uid.clone();

    // A switchover in progress is waited for (nothing else is decided meanwhile: steering the
    // servers would fight the hand-over), then recorded, or given up on.
    if let Some(progress) = current
        .switchover
        .clone()
        .filter(|progress| recorded.as_ref() == Some(&progress.from))
    {
        match follow_switchover(&mut decision, inputs, &progress, find(&progress.to)) {
            Switch::Waiting => {
                decision.status.switchover = Some(progress);
                decision.status.primary_pod = recorded;
                decision.status.primary_pod_uid = recorded_uid;
                let primary = decision.status.primary_pod.as_deref().and_then(find);
                decision.status.instances = summaries(&pods, primary);
                decision.in_question = true;
                return Some(decision);
            }
            Switch::Done => {
                recorded_uid = find(&progress.to).and_then(|pod| pod.uid.clone());
                recorded = Some(progress.to);
            }
            Switch::GaveUp => {}
        }
    }

    let primary = match recorded.clone() {
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
            match health(&recorded, pod, recorded_uid.as_deref()) {
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
        recorded_uid
            .clone()
            .filter(|_| recorded.as_deref() == Some(&primary))
    });
    decision.status.primary_pod = Some(primary.clone());
    decision.status.instances = summaries(&pods, primary_pod);
    let answering = pods.iter().any(|pod| pod.report.answered().is_some());
    decision.in_question = decision.status.primary_health.is_some() && answering;
    // A request is taken up only while the primary is settled: healthy, no change of primary
    // this pass, nothing paused. Until then it waits.
    let settled = decision.status.primary_health.is_none()
        && decision.status.last_failover == current.last_failover
        && decision.status.switchover.is_none()
        && !inputs.paused;
    let handing_over = match (inputs.switchover, primary_pod) {
        (Some(request), Some(primary_pod)) if settled => {
            start_switchover(&mut decision, inputs, &pods, primary_pod, request)
        }
        _ => false,
    };
    if !inputs.paused && !handing_over {
        steer(&mut decision, &pods, primary_pod);
    }
    let primary_answers = primary_pod
        .and_then(|pod| pod.report.answered())
        .is_some_and(|report| report.master);
    decision.watching = primary_answers && app.redis_replicas > 0;
    decision.in_question |= !decision.commands.is_empty();
    Some(decision)
}

/// Where a switchover in progress stands.
enum Switch {
    /// The replica is not the primary yet, and there is time left.
    Waiting,
    /// The replica answers as the primary: it is recorded as such.
    Done,
    /// It did not happen within [`SWITCHOVER_GIVE_UP`]; the primary stays.
    GaveUp,
}

fn follow_switchover(
    decision: &mut RedisDecision,
    inputs: Inputs<'_>,
    progress: &FailoverStatus,
    target: Option<&RedisPod>,
) -> Switch {
    let promoted = target
        .filter(|pod| !pod.deleting)
        .and_then(|pod| pod.report.answered())
        .is_some_and(|report| report.master);
    if promoted {
        let mut done = progress.clone();
        done.completed_at = Some(inputs.now.clone());
        let seconds = inputs
            .now
            .0
            .duration_since(progress.started_at.0)
            .as_secs_f64();
        decision.news.push(News {
            warning: false,
            reason: "RedisSwitchover",
            note: format!(
                "Redis primary {} handed over to {} ({}), {seconds:.1}s",
                progress.from, progress.to, progress.reason
            ),
        });
        decision.status.last_failover = Some(done);
        return Switch::Done;
    }
    let waited = inputs.now.0.duration_since(progress.started_at.0);
    if waited.as_secs_f64() < SWITCHOVER_GIVE_UP.as_secs_f64() {
        return Switch::Waiting;
    }
    decision.news.push(News {
        warning: true,
        reason: "RedisSwitchoverFailed",
        note: format!(
            "Redis primary {} did not hand over to {} within {SWITCHOVER_GIVE_UP:?} ({}); it \
             stays the primary",
            progress.from, progress.to, progress.reason
        ),
    });
    Switch::GaveUp
}

/// Takes up a switchover request: refuses it (once, with the reason) or tells the primary to
/// hand over to the replica asked for, else the most caught-up one in sync. True when the
/// hand-over was started.
fn start_switchover(
    decision: &mut RedisDecision,
    inputs: Inputs<'_>,
    pods: &[&RedisPod],
    primary: &RedisPod,
    request: &Result<RedisSwitchoverRequest, (String, String)>,
) -> bool {
    let refuse = |decision: &mut RedisDecision, id: &str, why: String| {
        decision.status.last_switchover_request = Some(id.to_string());
        decision.news.push(News {
            warning: true,
            reason: "RedisSwitchoverRefused",
            note: format!("Redis switchover request {id}: {why}"),
        });
        false
    };
    let request = match request {
        Ok(request) => request,
        Err((id, why)) => return refuse(decision, id, why.clone()),
    };
    let (Some(primary_ip), Some(report)) = (&primary.ip, primary.report.answered()) else {
        return false;
    };
    if !report.master {
        return false;
    }
    let in_sync = |pod: &&RedisPod| {
        pod.name != primary.name
            && !pod.deleting
            && pod.report.answered().is_some_and(|report| {
                !report.master && report.link_up && report.master_host.as_ref() == Some(primary_ip)
            })
    };
    let target = match &request.to {
        Some(to) if *to == primary.name => {
            return refuse(
                decision,
                &request.id,
                format!("{to} is the primary already"),
            );
        }
        Some(to) => match pods.iter().copied().find(|pod| pod.name == *to) {
            Some(pod) if in_sync(&pod) => pod,
            Some(_) => {
                return refuse(
                    decision,
                    &request.id,
                    format!(
                        "{to} is not a replica in sync with the primary {}",
                        primary.name
                    ),
                );
            }
            None => {
                return refuse(decision, &request.id, format!("no Redis pod {to}"));
            }
        },
        None => match best(pods.iter().copied().filter(in_sync)) {
            Some(pod) => pod,
            None => {
                return refuse(
                    decision,
                    &request.id,
                    format!(
                        "no replica in sync with the primary {} to hand over to",
                        primary.name
                    ),
                );
            }
        },
    };
    let Some(to_ip) = target.ip.clone() else {
        return false;
    };
    decision.status.last_switchover_request = Some(request.id.clone());
    decision.status.switchover = Some(FailoverStatus {
        kind: SWITCHOVER.into(),
        reason: format!("switchover {}", request.id),
        from: primary.name.clone(),
        to: target.name.clone(),
        started_at: inputs.now.clone(),
        completed_at: None,
        timeline: None,
    });
    decision.commands.push(Command {
        pod: primary.name.clone(),
        ip: primary_ip.clone(),
        action: Action::HandOver { to_ip },
    });
    decision.news.push(News {
        warning: false,
        reason: "RedisSwitchover",
        note: format!(
            "Redis primary {} hands over to {} (switchover {})",
            primary.name, target.name, request.id
        ),
    });
    true
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
