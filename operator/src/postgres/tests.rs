//! The Postgres decision as a table: an observed shard (pods, what their instance managers
//! report, volumes), the status before and the failover clock in; the decision out. Every
//! failover and switchover case the real-pod tests drive has a row here.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use scaled_contract::instance::{InstanceProblem, InstanceRole, InstanceStatus};

use super::*;
use crate::crd::{
    FAILOVER, FailoverStatus, PrimaryUnhealthy, SWITCHOVER, ScaledAppStatus, ShardStatus,
};
use crate::names::{PRIMARY_ROLE, REPLICA_ROLE};
use crate::test_support::validated_example;
use crate::validate::ValidatedApp;

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
        self.topology(shard).shards.remove(0)
    }

    fn topology(&self, shard: ShardObservation) -> Topology {
        let now = at(1000);
        let clocks = self
            .clock(&shard, &now)
            .into_iter()
            .map(|clock| (0, clock))
            .collect();
        let switchover = self.switchover.clone().map(Ok);
        let inputs = Inputs {
            app: &self.app,
            current: self.current.as_ref(),
            paused: self.paused,
            now: &now,
            clocks: &clocks,
            switchover: switchover.as_ref(),
        };
        decide(inputs, &[shard])
    }

    /// The clock the last pass left: started `unhealthy_for` ago on the recorded primary, as
    /// the process it then was.
    fn clock(&self, shard: &ShardObservation, now: &Time) -> Option<PrimaryUnhealthy> {
        if self.unhealthy_for.is_zero() && !self.restarted {
            return None;
        }
        let primary = self.current.as_ref()?.shards.first()?.primary_pod.clone()?;
        let since = now.0 - SignedDuration::try_from(self.unhealthy_for).expect("small");
        Some(PrimaryUnhealthy {
            incarnation: shard
                .pods
                .iter()
                .find(|pod| pod.name == primary)
                .and_then(PodObservation::incarnation),
            pod: primary,
            since: MicroTime(since),
            went_down: self.restarted,
        })
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
    let adopted = Case::new(Some(recorded("shop-shard-0-0"))).decide(running_shard(true, [1, 2]));
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

#[test]
fn the_failover_clock_is_kept_in_status_so_a_restarted_operator_does_not_start_the_delay_again() {
    let mut case = Case::new(Some(recorded("shop-shard-0-0")));
    let mut lost = running_shard(true, [700, 800]);
    lost.pods.remove(0);
    // First pass: the clock starts, and the decision carries it into status.
    let first = case.decide(lost.clone());
    let clock = first.clock.clone().expect("a clock while unhealthy");
    assert_eq!(clock.pod, "shop-shard-0-0");
    assert!(clock.went_down, "the pod is gone: no fencing time is added");
    assert_eq!(first.failover, None);
    // A restarted operator has no memory; status has the clock, which started 10 s ago.
    let mut status = recorded("shop-shard-0-0");
    status.shards[0].primary_unhealthy = Some(PrimaryUnhealthy {
        since: MicroTime(at(990).0),
        ..clock
    });
    let clocks = Clocks::default().previous("default/shop", Some(&status));
    let now = at(1000);
    let topology = decide(
        Inputs {
            app: &case.app,
            current: Some(&status),
            paused: false,
            now: &now,
            clocks: &clocks,
            switchover: None,
        },
        &[lost.clone()],
    );
    let decision = &topology.shards[0];
    assert_eq!(decision.primary_pod.as_deref(), Some("shop-shard-0-2"));
    assert_eq!(
        decision.clock, None,
        "the new primary starts without a clock"
    );
    // The same without the clock: the delay would start again.
    case.unhealthy_for = Duration::ZERO;
    assert_eq!(
        case.decide(lost).primary_pod.as_deref(),
        Some("shop-shard-0-0")
    );
}

#[test]
fn a_healthy_primary_has_no_clock_so_an_unchanged_shard_writes_nothing() {
    let decision =
        Case::new(Some(recorded("shop-shard-0-0"))).decide(running_shard(true, [900, 900]));
    assert_eq!(decision.clock, None);
    assert_eq!(decision.primary_health, None);
    assert!(decision.news.is_empty() && decision.replace.is_empty());
}

#[test]
fn a_switchover_request_nobody_can_act_on_is_refused_once_with_its_reason() {
    let mut case = Case::new(Some(recorded("shop-shard-0-0")));
    case.switchover = Some(SwitchoverRequest {
        shard: 7,
        to: None,
        id: "r1".into(),
    });
    let topology = case.topology(running_shard(true, [900, 900]));
    assert_eq!(topology.switchover_handled.as_deref(), Some("r1"));
    let refused = topology.news.last().expect("news");
    assert_eq!(refused.reason, "SwitchoverRefused");
    assert!(refused.warning);
    assert!(
        refused.note.contains("shard 7 does not exist"),
        "{}",
        refused.note
    );

    // An annotation that is not a request at all.
    let now = at(1000);
    let garbled = Err(("{oops".to_string(), "not a request".to_string()));
    let topology = decide(
        Inputs {
            app: &case.app,
            current: case.current.as_ref(),
            paused: false,
            now: &now,
            clocks: &Default::default(),
            switchover: Some(&garbled),
        },
        &[running_shard(true, [900, 900])],
    );
    assert_eq!(topology.switchover_handled.as_deref(), Some("{oops"));
    assert_eq!(topology.news[0].reason, "SwitchoverRefused");
}

#[test]
fn the_topology_lists_every_pod_change_for_the_applier() {
    let topology = Case::new(None).topology(running_shard(true, [900, 900]));
    let changes = topology.pod_changes();
    assert_eq!(
        changes.relabel,
        vec![
            ("shop-shard-0-0".to_string(), PRIMARY_ROLE),
            ("shop-shard-0-1".to_string(), REPLICA_ROLE),
            ("shop-shard-0-2".to_string(), REPLICA_ROLE),
        ]
    );
    assert!(changes.replace.is_empty());
}
