//! The Redis decision as a table: observed pods in, primary, commands, labels and failovers out,
//! for every case the real-pod Redis faults exercise (a crash restarting redis-server in place,
//! a force-deleted pod, a pod cut off the network) and the ones around them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{PrimaryUnhealthy, RedisReplicationStatus};
use crate::test_support::validated_example;
use crate::validate::ValidatedApp;

use super::decide::{
    Action, Command, Inputs, RedisDecision, SWITCHOVER_GIVE_UP, UNANSWERED_DELAY, decide,
};
use super::observation::{FENCE_HOST, RedisPod, Replication, Report};
use super::switchover_request::RedisSwitchoverRequest;

fn at(seconds: f64) -> Time {
    Time(Timestamp::from_millisecond((seconds * 1000.0) as i64).expect("valid"))
}

fn ip(ordinal: u32) -> String {
    format!("10.0.0.{}", 10 + ordinal)
}

/// A running pod with its label, answering `report`.
fn pod(ordinal: u32, label: Option<&str>, report: Report) -> RedisPod {
    RedisPod {
        name: format!("shop-redis-{ordinal}"),
        ordinal,
        uid: Some(format!("uid-{ordinal}")),
        ip: Some(ip(ordinal)),
        deleting: false,
        role_label: label.map(String::from),
        report,
    }
}

fn master(offset: i64, keys: i64) -> Report {
    Report::Answered(Replication {
        master: true,
        offset,
        keys,
        ..Replication::default()
    })
}

fn replica_of(primary: u32, offset: i64) -> Report {
    Report::Answered(Replication {
        master: false,
        master_host: Some(ip(primary)),
        link_up: true,
        offset,
        keys: 10,
    })
}

fn fenced(offset: i64, keys: i64) -> Report {
    Report::Answered(Replication {
        master: false,
        master_host: Some(FENCE_HOST.into()),
        link_up: false,
        offset,
        keys,
    })
}

fn recorded(primary: u32) -> RedisReplicationStatus {
    RedisReplicationStatus {
        primary_pod: Some(format!("shop-redis-{primary}")),
        primary_pod_uid: Some(format!("uid-{primary}")),
        ..RedisReplicationStatus::default()
    }
}

fn run(
    app: &ValidatedApp,
    current: Option<&RedisReplicationStatus>,
    now: f64,
    pods: &[RedisPod],
) -> RedisDecision {
    decide(
        Inputs {
            app,
            current,
            paused: false,
            now: &at(now),
            switchover: None,
        },
        pods,
    )
    .expect("operator-run Redis")
}

fn promote(ordinal: u32) -> Command {
    Command {
        pod: format!("shop-redis-{ordinal}"),
        ip: ip(ordinal),
        action: Action::Promote,
    }
}

fn follow(ordinal: u32, primary: u32, disconnect_clients: bool) -> Command {
    Command {
        pod: format!("shop-redis-{ordinal}"),
        ip: ip(ordinal),
        action: Action::Follow {
            primary_ip: ip(primary),
            disconnect_clients,
        },
    }
}

fn labels(decision: &RedisDecision) -> Vec<(&str, &str)> {
    decision
        .relabel
        .iter()
        .map(|(pod, role)| (pod.as_str(), *role))
        .collect()
}

#[test]
fn a_new_scaledapp_records_its_first_pod_as_primary_before_any_pod_exists() {
    let app = validated_example("shop");
    assert_eq!((app.redis_pods, app.redis_replicas), (2, 1));
    let decision = run(&app, None, 100.0, &[]);
    assert_eq!(decision.status.primary_pod.as_deref(), Some("shop-redis-0"));
    assert_eq!(
        decision.status.primary_health.as_deref(),
        Some("pod shop-redis-0 does not exist")
    );
    assert!(decision.commands.is_empty() && decision.relabel.is_empty());
    assert!(
        !decision.in_question && !decision.watching,
        "nothing answers"
    );
    // The next pass, with the status written, decides the same: no status write.
    let again = run(&app, Some(&decision.status), 101.0, &[]);
    assert_eq!(again.status, decision.status);
}

#[test]
fn the_first_pod_starts_primary_and_the_fenced_replica_is_pointed_at_it_and_labelled() {
    let app = validated_example("shop");
    let pods = [pod(0, None, master(0, 0)), pod(1, None, fenced(0, 0))];
    let decision = run(&app, Some(&recorded(0)), 100.0, &pods);
    assert_eq!(decision.status.primary_pod.as_deref(), Some("shop-redis-0"));
    assert_eq!(decision.commands, vec![follow(1, 0, false)]);
    assert_eq!(
        labels(&decision),
        vec![("shop-redis-0", "primary"), ("shop-redis-1", "replica")]
    );
    assert!(decision.status.last_failover.is_none());
    let roles: Vec<_> = decision
        .status
        .instances
        .iter()
        .map(|i| (i.role.as_str(), i.ready))
        .collect();
    assert_eq!(roles, vec![("Primary", true), ("Fenced", false)]);
}

#[test]
fn a_settled_pair_needs_nothing_and_is_watched_for_a_crash_no_object_would_show() {
    let app = validated_example("shop");
    let pods = [
        pod(0, Some("primary"), master(5 << 20, 10)),
        pod(1, Some("replica"), replica_of(0, 3 << 20)),
    ];
    let decision = run(&app, Some(&recorded(0)), 100.0, &pods);
    assert!(decision.commands.is_empty() && decision.relabel.is_empty());
    assert!(decision.news.is_empty() && decision.status.primary_health.is_none());
    assert!(decision.watching && !decision.in_question);
    let replica = &decision.status.instances[1];
    assert_eq!(
        (replica.role.as_str(), replica.ready, replica.lag_mib),
        ("Replica", true, Some(2))
    );
}

#[test]
fn a_primary_whose_server_restarted_fenced_is_replaced_at_once_by_the_replica_with_more() {
    // SIGKILL of redis-server: the container restarts in the same pod (same uid, still
    // labelled primary), read-only with what its append-only file held.
    let app = validated_example("shop");
    let pods = [
        pod(0, Some("primary"), fenced(100, 5)),
        pod(1, Some("replica"), replica_of(0, 5000)),
    ];
    let decision = run(&app, Some(&recorded(0)), 100.0, &pods);
    assert_eq!(decision.status.primary_pod.as_deref(), Some("shop-redis-1"));
    assert_eq!(decision.commands, vec![promote(1), follow(0, 1, false)]);
    assert_eq!(
        labels(&decision),
        vec![("shop-redis-1", "primary"), ("shop-redis-0", "replica")]
    );
    let failover = decision.status.last_failover.as_ref().expect("recorded");
    assert_eq!(
        (
            failover.from.as_str(),
            failover.to.as_str(),
            failover.kind.as_str()
        ),
        ("shop-redis-0", "shop-redis-1", "Failover")
    );
    assert!(failover.reason.contains("fenced"), "{}", failover.reason);
    assert_eq!(decision.news.len(), 1);
    assert!(decision.news[0].warning && decision.news[0].reason == "RedisFailover");
    assert!(decision.status.primary_health.is_none());
}

#[test]
fn a_restarted_primary_with_more_than_any_replica_is_promoted_again() {
    let app = validated_example("shop");
    let pods = [
        pod(0, Some("primary"), fenced(9000, 50)),
        pod(1, Some("replica"), replica_of(0, 5000)),
    ];
    let decision = run(&app, Some(&recorded(0)), 100.0, &pods);
    assert_eq!(decision.status.primary_pod.as_deref(), Some("shop-redis-0"));
    assert_eq!(decision.commands, vec![promote(0)]);
    assert!(decision.relabel.is_empty());
}

#[test]
fn a_recreated_primary_pod_is_another_server_and_the_replica_takes_over() {
    // Force-deleted: the StatefulSet recreates the pod under the same name, unlabelled; with an
    // emptyDir it may even start as a primary, empty.
    let app = validated_example("shop");
    let mut recreated = pod(0, None, master(0, 0));
    recreated.uid = Some("uid-0-again".into());
    let pods = [recreated, pod(1, Some("replica"), replica_of(0, 5000))];
    let decision = run(&app, Some(&recorded(0)), 100.0, &pods);
    assert_eq!(decision.status.primary_pod.as_deref(), Some("shop-redis-1"));
    assert_eq!(decision.status.primary_pod_uid.as_deref(), Some("uid-1"));
    // It was a primary: its clients are dropped as it is demoted.
    assert_eq!(decision.commands, vec![promote(1), follow(0, 1, true)]);
    assert_eq!(
        labels(&decision),
        vec![("shop-redis-1", "primary"), ("shop-redis-0", "replica")]
    );
}

#[test]
fn a_missing_primary_pod_is_failed_over_at_once() {
    let app = validated_example("shop");
    let pods = [pod(1, Some("replica"), replica_of(0, 5000))];
    let decision = run(&app, Some(&recorded(0)), 100.0, &pods);
    assert_eq!(decision.status.primary_pod.as_deref(), Some("shop-redis-1"));
    assert_eq!(decision.commands, vec![promote(1)]);
    assert_eq!(labels(&decision), vec![("shop-redis-1", "primary")]);
    assert!(
        decision
            .status
            .last_failover
            .as_ref()
            .is_some_and(|f| f.reason == "pod shop-redis-0 does not exist")
    );
}

#[test]
fn a_primary_that_does_not_answer_is_waited_for_then_the_replica_takes_over() {
    // Cut off the network: the pod and its server run on, unseen.
    let app = validated_example("shop");
    let cut = || {
        [
            pod(0, Some("primary"), Report::Unreachable("timed out".into())),
            pod(1, Some("replica"), replica_of(0, 5000)),
        ]
    };
    let first = run(&app, Some(&recorded(0)), 100.0, &cut());
    assert_eq!(first.status.primary_pod.as_deref(), Some("shop-redis-0"));
    assert!(first.commands.is_empty() && first.in_question);
    let clock = first.status.primary_unhealthy.clone().expect("clock");
    assert_eq!(clock.since, MicroTime(at(100.0).0));
    assert_eq!(
        first.status.primary_health.as_deref(),
        Some("shop-redis-0 does not answer")
    );
    // Within the delay: still waiting, the clock kept (status does not change).
    let waiting = run(&app, Some(&first.status), 102.0, &cut());
    assert_eq!(waiting.status, first.status);
    assert!(waiting.commands.is_empty());
    // Past it: the replica is promoted; the silent primary loses its label, so the Service
    // sends nobody to it, and is told to follow once it answers again.
    let due = 100.0 + UNANSWERED_DELAY.as_secs_f64();
    let over = run(&app, Some(&first.status), due, &cut());
    assert_eq!(over.status.primary_pod.as_deref(), Some("shop-redis-1"));
    assert_eq!(over.commands, vec![promote(1)]);
    assert_eq!(
        labels(&over),
        vec![("shop-redis-1", "primary"), ("shop-redis-0", "replica")]
    );
    assert!(over.status.primary_unhealthy.is_none() && over.status.primary_health.is_none());
    // Back on the network, still a primary: demoted, its clients dropped.
    let mut back = run(
        &app,
        Some(&over.status),
        due + 10.0,
        &[
            pod(0, Some("replica"), master(5100, 10)),
            pod(1, Some("primary"), master(5050, 10)),
        ],
    );
    assert_eq!(back.status.primary_pod.as_deref(), Some("shop-redis-1"));
    assert_eq!(back.commands, vec![follow(0, 1, true)]);
    assert!(back.news.is_empty(), "no second failover");
    back.status.instances.clear();
    assert_eq!(back.status.last_failover, over.status.last_failover);
}

#[test]
fn a_clock_about_another_pod_is_started_again() {
    let app = validated_example("shop");
    let mut status = recorded(0);
    status.primary_unhealthy = Some(PrimaryUnhealthy {
        pod: "shop-redis-1".into(),
        since: MicroTime(at(10.0).0),
        incarnation: None,
        went_down: false,
    });
    let pods = [
        pod(0, Some("primary"), Report::Unreachable("refused".into())),
        pod(1, Some("replica"), replica_of(0, 5000)),
    ];
    let decision = run(&app, Some(&status), 100.0, &pods);
    assert_eq!(decision.status.primary_pod.as_deref(), Some("shop-redis-0"));
    assert!(decision.commands.is_empty());
}

#[test]
fn nobody_to_take_over_keeps_the_primary_and_polls_nothing() {
    let app = validated_example("shop");
    let pods = [pod(
        1,
        Some("replica"),
        Report::Unreachable("refused".into()),
    )];
    let decision = run(&app, Some(&recorded(0)), 100.0, &pods);
    assert_eq!(decision.status.primary_pod.as_deref(), Some("shop-redis-0"));
    assert!(decision.commands.is_empty() && decision.news.is_empty());
    assert!(
        !decision.in_question,
        "nothing answers: pod events will wake the operator"
    );
}

#[test]
fn while_paused_nothing_is_promoted_repointed_or_relabelled() {
    let app = validated_example("shop");
    let pods = [
        pod(0, Some("primary"), fenced(100, 5)),
        pod(1, None, replica_of(0, 5000)),
    ];
    let decision = decide(
        Inputs {
            app: &app,
            current: Some(&recorded(0)),
            paused: true,
            now: &at(100.0),
            switchover: None,
        },
        &pods,
    )
    .expect("decision");
    assert_eq!(decision.status.primary_pod.as_deref(), Some("shop-redis-0"));
    assert!(decision.commands.is_empty() && decision.relabel.is_empty());
    assert!(decision.news.is_empty() && decision.status.last_failover.is_none());
}

#[test]
fn a_redis_that_ran_before_replication_keeps_its_data_as_the_primary() {
    // No redisReplication in status yet: the server with data is the primary, wherever it is.
    let app = validated_example("shop");
    let pods = [pod(0, None, fenced(0, 0)), pod(1, None, master(0, 42))];
    let decision = run(&app, None, 100.0, &pods);
    assert_eq!(decision.status.primary_pod.as_deref(), Some("shop-redis-1"));
    assert_eq!(decision.commands, vec![follow(0, 1, false)]);
}

#[test]
fn pods_beyond_the_replica_count_are_ignored_and_an_external_redis_has_no_decision() {
    let app = validated_example("shop");
    let pods = [
        pod(0, Some("primary"), master(10, 1)),
        pod(1, Some("replica"), replica_of(0, 10)),
        pod(2, None, master(999, 999)),
    ];
    let decision = run(&app, Some(&recorded(0)), 100.0, &pods);
    assert_eq!(decision.status.instances.len(), 2);
    assert!(decision.commands.is_empty());

    let mut external = validated_example("shop");
    external.redis_pods = 0;
    external.redis_replicas = 0;
    assert!(
        decide(
            Inputs {
                app: &external,
                current: None,
                paused: false,
                now: &at(1.0),
                switchover: None,
            },
            &pods,
        )
        .is_none()
    );
}

fn asked(
    app: &ValidatedApp,
    current: &RedisReplicationStatus,
    now: f64,
    pods: &[RedisPod],
    request: Result<RedisSwitchoverRequest, (String, String)>,
) -> RedisDecision {
    decide(
        Inputs {
            app,
            current: Some(current),
            paused: false,
            now: &at(now),
            switchover: Some(&request),
        },
        pods,
    )
    .expect("operator-run Redis")
}

fn request(to: Option<&str>) -> Result<RedisSwitchoverRequest, (String, String)> {
    Ok(RedisSwitchoverRequest {
        to: to.map(String::from),
        id: "sw-1".into(),
    })
}

fn three_pods() -> ValidatedApp {
    let mut app = validated_example("shop");
    app.redis_pods = 3;
    app.redis_replicas = 2;
    app
}

#[test]
fn a_switchover_hands_over_to_the_most_caught_up_replica_then_records_it_once_it_is_primary() {
    let app = three_pods();
    let settled = [
        pod(0, Some("primary"), master(9000, 10)),
        pod(1, Some("replica"), replica_of(0, 8000)),
        pod(2, Some("replica"), replica_of(0, 8500)),
    ];
    let start = asked(&app, &recorded(0), 100.0, &settled, request(None));
    assert_eq!(
        start.commands,
        vec![Command {
            pod: "shop-redis-0".into(),
            ip: ip(0),
            action: Action::HandOver { to_ip: ip(2) },
        }]
    );
    assert!(start.relabel.is_empty(), "labels move only once it is done");
    let progress = start.status.switchover.clone().expect("in progress");
    assert_eq!(
        (progress.from.as_str(), progress.to.as_str()),
        ("shop-redis-0", "shop-redis-2")
    );
    assert_eq!(
        start.status.last_switchover_request.as_deref(),
        Some("sw-1")
    );
    assert_eq!(start.status.primary_pod.as_deref(), Some("shop-redis-0"));
    assert!(start.in_question, "followed closely");

    // Mid-way (writes paused, the replica catching up): nothing is steered, even though the
    // replica's view of things looks wrong to a plain decision.
    let midway = [
        pod(0, Some("primary"), replica_of(2, 9000)),
        pod(1, Some("replica"), replica_of(0, 8000)),
        pod(2, Some("replica"), replica_of(0, 9000)),
    ];
    let waiting = run(&app, Some(&start.status), 101.0, &midway);
    assert!(waiting.commands.is_empty() && waiting.relabel.is_empty());
    assert_eq!(waiting.status.primary_pod.as_deref(), Some("shop-redis-0"));
    assert!(waiting.status.switchover.is_some() && waiting.news.is_empty());

    // Handed over: pod 2 answers as the primary, pod 0 follows it.
    let after = [
        pod(0, Some("primary"), replica_of(2, 9000)),
        pod(1, Some("replica"), replica_of(0, 8000)),
        pod(2, Some("replica"), master(9000, 10)),
    ];
    let done = run(&app, Some(&waiting.status), 101.5, &after);
    assert_eq!(done.status.primary_pod.as_deref(), Some("shop-redis-2"));
    assert_eq!(done.status.primary_pod_uid.as_deref(), Some("uid-2"));
    assert!(done.status.switchover.is_none());
    let last = done.status.last_failover.as_ref().expect("recorded");
    assert_eq!(
        (last.kind.as_str(), last.from.as_str(), last.to.as_str()),
        ("Switchover", "shop-redis-0", "shop-redis-2")
    );
    assert_eq!(last.completed_at, Some(at(101.5)));
    assert_eq!(
        labels(&done),
        vec![("shop-redis-2", "primary"), ("shop-redis-0", "replica")]
    );
    assert_eq!(
        done.commands,
        vec![follow(1, 2, false)],
        "the other replica follows too"
    );
    assert!(
        done.news
            .iter()
            .any(|news| news.reason == "RedisSwitchover" && !news.warning)
    );
    // Settled on the new primary.
    let again = run(
        &app,
        Some(&done.status),
        102.0,
        &[
            pod(0, Some("replica"), replica_of(2, 9000)),
            pod(1, Some("replica"), replica_of(2, 9000)),
            pod(2, Some("primary"), master(9000, 10)),
        ],
    );
    assert!(again.commands.is_empty() && again.relabel.is_empty() && again.news.is_empty());
    assert_eq!(
        again.status.last_switchover_request.as_deref(),
        Some("sw-1")
    );
}

#[test]
fn a_switchover_that_does_not_happen_in_time_is_given_up_and_the_primary_stays() {
    let app = validated_example("shop");
    let pods = [
        pod(0, Some("primary"), master(9000, 10)),
        pod(1, Some("replica"), replica_of(0, 100)),
    ];
    let start = asked(
        &app,
        &recorded(0),
        100.0,
        &pods,
        request(Some("shop-redis-1")),
    );
    assert!(start.status.switchover.is_some());
    let waiting = run(&app, Some(&start.status), 110.0, &pods);
    assert!(waiting.status.switchover.is_some());
    let late = 100.0 + SWITCHOVER_GIVE_UP.as_secs_f64() + 0.5;
    let given_up = run(&app, Some(&waiting.status), late, &pods);
    assert!(given_up.status.switchover.is_none());
    assert_eq!(given_up.status.primary_pod.as_deref(), Some("shop-redis-0"));
    assert!(given_up.status.last_failover.is_none());
    assert!(
        given_up
            .news
            .iter()
            .any(|news| news.reason == "RedisSwitchoverFailed" && news.warning)
    );
}

#[test]
fn a_switchover_request_that_cannot_be_done_is_refused_once_with_the_reason() {
    let app = validated_example("shop");
    let lagging = [
        pod(0, Some("primary"), master(9000, 10)),
        pod(
            1,
            Some("replica"),
            Report::Answered(Replication {
                link_up: false,
                ..replica_of(0, 10).answered().cloned().expect("answered")
            }),
        ),
    ];
    for (request, why) in [
        (request(None), "no replica in sync"),
        (request(Some("shop-redis-1")), "not a replica in sync"),
        (request(Some("shop-redis-0")), "is the primary already"),
        (request(Some("shop-redis-7")), "no Redis pod shop-redis-7"),
        (
            Err(("garbage".to_string(), "not a request".to_string())),
            "not a request",
        ),
    ] {
        let decision = asked(&app, &recorded(0), 100.0, &lagging, request);
        assert!(decision.status.switchover.is_none(), "{why}");
        assert!(
            decision
                .commands
                .iter()
                .all(|c| !matches!(c.action, Action::HandOver { .. })),
            "{why}"
        );
        assert!(
            decision.status.last_switchover_request.is_some(),
            "{why}: handled"
        );
        let news = decision
            .news
            .iter()
            .find(|news| news.reason == "RedisSwitchoverRefused")
            .unwrap_or_else(|| panic!("{why}: refused"));
        assert!(news.note.contains(why), "{}", news.note);
    }
}

#[test]
fn a_switchover_waits_while_the_primary_is_in_question() {
    let app = validated_example("shop");
    let pods = [
        pod(0, Some("primary"), Report::Unreachable("timeout".into())),
        pod(1, Some("replica"), replica_of(0, 100)),
    ];
    let decision = asked(&app, &recorded(0), 100.0, &pods, request(None));
    assert!(decision.status.switchover.is_none());
    assert!(
        decision.status.last_switchover_request.is_none(),
        "kept for later"
    );
}
