//! Status: computed purely from a reconcile's [`Outcome`] (the spec was invalid, the apply
//! failed, or the children as applied or read). `reconcile` writes it with one server-side apply
//! of the status subresource, and only when it differs from what is already there.
//!
//! Conditions follow the Kubernetes API conventions: one entry per type, `observedGeneration`
//! on each, and `lastTransitionTime` moving only when the condition's status flips.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use scaled_contract::instance::InstanceRole;

use crate::apply::{ApplyError, Changes};
use crate::children::{Applied, Children, Live, Observation};
use crate::crd::{
    Endpoints, InstanceSummary, ScaledAppStatus, ShardStatus, WorkerPoolStatus, WorkloadStatus,
};
use crate::names::POSTGRES_PORT;
use crate::postgres::{ObserveError, ShardDecision, Topology};
use crate::redis::{CommandError, RedisDecision, RedisObserveError};
use crate::session_rotation::RotationDecision;
use crate::shards::describe_slots;
use crate::validate::{InvalidSpec, ValidatedApp};

/// Condition: every component is ready.
pub const READY: &str = "Ready";
/// Condition: changes are rolling out.
pub const PROGRESSING: &str = "Progressing";
/// Condition: the operator cannot do its job (invalid spec, API errors).
pub const DEGRADED: &str = "Degraded";
/// Condition: the user paused reconciliation.
pub const PAUSED: &str = "Paused";
/// Reason (condition and Event) when the Postgres instance step failed.
pub const INSTANCES_FAILED: &str = "InstancesFailed";
/// Reason (condition and Event) when the Redis pods could not be read.
pub const REDIS_FAILED: &str = "RedisObserveFailed";

/// What one reconcile found out.
#[derive(Debug)]
pub enum Outcome {
    /// The spec cannot be realised; nothing was changed.
    Invalid(InvalidSpec),
    /// The API server refused a change; what is known about the children stays.
    ApplyFailed(ApplyError),
    /// The Postgres pods or their volume claims could not be read, so nothing was decided or
    /// applied this pass; what is known about the shards stays.
    InstancesFailed(ObserveError),
    /// The Redis pods or the Redis password could not be read; nothing was applied this pass.
    RedisFailed(RedisObserveError),
    /// The children were applied (or, while paused, read).
    Applied {
        /// The validated spec.
        app: Box<ValidatedApp>,
        /// The children as the cluster holds them.
        children: Observed,
        /// What the apply changed (nothing while paused).
        changes: Changes,
        /// What the Postgres stage decided: each shard's primary and instances.
        topology: Topology,
        /// What the Redis stage decided and did (none with an external Redis).
        redis: Option<Box<RedisPass>>,
        /// What the session-secret rotation stage decided.
        session_rotation: Box<RotationDecision>,
    },
}

/// The Redis stage's pass: the decision, and what its commands did.
#[derive(Debug)]
pub struct RedisPass {
    /// The decision.
    pub decision: RedisDecision,
    /// Commands carried out, described.
    pub done: Vec<String>,
    /// Commands that failed (sent again next pass, the decision being made afresh).
    pub failed: Vec<CommandError>,
}

/// The children as the cluster holds them.
#[derive(Debug)]
pub enum Observed {
    /// As returned by the apply.
    Applied(Box<Children<Applied>>),
    /// As read while paused.
    Live(Box<Children<Live>>),
}

/// Per-component state, as it goes into status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Components {
    /// App Deployment.
    pub app: WorkloadStatus,
    /// Redis StatefulSet, if run by the operator.
    pub redis: Option<WorkloadStatus>,
    /// Shards.
    pub shards: Vec<ShardStatus>,
    /// Worker pools.
    pub workers: Vec<WorkerPoolStatus>,
    /// Endpoints.
    pub endpoints: Endpoints,
    /// Workloads whose latest spec is not fully rolled out yet.
    pub rolling: Vec<String>,
}

fn workload(name: String, desired: i32, ready: i32) -> WorkloadStatus {
    WorkloadStatus {
        summary: format!("{ready}/{desired}"),
        name,
        desired,
        ready,
    }
}

fn deployment_status<S: Observation>(
    deployment: &S::Of<Deployment>,
    minimum: i32,
    rolling: &mut Vec<String>,
) -> WorkloadStatus {
    let name = S::name(deployment);
    let live = S::object(deployment);
    // An HPA-managed Deployment starts at 1 replica until the HPA raises it to its minimum;
    // the minimum is what readiness waits for.
    let desired = live
        .and_then(|d| d.spec.as_ref())
        .and_then(|spec| spec.replicas)
        .unwrap_or(minimum)
        .max(minimum);
    let status = live.and_then(|d| d.status.as_ref());
    let ready = status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let updated = status.and_then(|s| s.updated_replicas).unwrap_or(0);
    let observed = status.and_then(|s| s.observed_generation);
    let generation = live.and_then(|d| d.metadata.generation);
    if live.is_none() || observed < generation || updated < desired {
        rolling.push(name.clone());
    }
    workload(name, desired, ready)
}

fn statefulset_status<S: Observation>(
    statefulset: &S::Of<StatefulSet>,
    rolling: &mut Vec<String>,
) -> WorkloadStatus {
    let name = S::name(statefulset);
    let live = S::object(statefulset);
    let desired = live
        .and_then(|s| s.spec.as_ref())
        .and_then(|spec| spec.replicas)
        .unwrap_or(1);
    let status = live.and_then(|s| s.status.as_ref());
    let ready = status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let observed = status.and_then(|s| s.observed_generation);
    let generation = live.and_then(|s| s.metadata.generation);
    let updated = status.and_then(|s| s.updated_replicas).unwrap_or(0);
    if live.is_none() || observed < generation || updated < desired {
        rolling.push(name.clone());
    }
    workload(name, desired, ready)
}

/// `host:port` of a Service in the ScaledApp's namespace.
fn address<S: Observation>(app: &ValidatedApp, service: &S::Of<Service>, port: i32) -> String {
    format!("{}.{}.svc:{port}", S::name(service), app.namespace)
}

/// Reads each component's readiness and address off the children, and each shard's primary and
/// instances off the pass's decisions.
pub fn components<S: Observation>(
    app: &ValidatedApp,
    children: &Children<S>,
    decisions: &[ShardDecision],
) -> Components {
    let mut rolling = Vec::new();
    let app_status = deployment_status::<S>(
        &children.app.deployment,
        app.spec.app.replicas.min,
        &mut rolling,
    );
    let redis = children
        .redis
        .as_ref()
        .map(|redis| statefulset_status::<S>(&redis.statefulset, &mut rolling));
    let shards = children
        .shards
        .iter()
        .map(|shard| {
            let decision = decisions.iter().find(|d| d.index == shard.index);
            ShardStatus {
                index: shard.index as i32,
                slots: app
                    .shard_assignment
                    .iter()
                    .filter(|owner| **owner == shard.index)
                    .count() as i32,
                slot_ranges: describe_slots(&app.shard_assignment, shard.index),
                stateful_set: statefulset_status::<S>(&shard.statefulset, &mut rolling),
                primary_pod: decision.and_then(|d| d.primary_pod.clone()),
                primary_pod_uid: decision.and_then(|d| d.primary_pod_uid.clone()),
                timeline: decision.and_then(|d| d.timeline).map(i64::from),
                waiting: decision.and_then(|d| d.waiting.clone()),
                primary_health: decision.and_then(|d| d.primary_health.clone()),
                failover: decision.and_then(|d| d.failover.clone()),
                last_failover: decision.and_then(|d| d.last_failover.clone()),
                instances: decision.map(|d| d.instances.clone()).unwrap_or_default(),
                primary_unhealthy: decision.and_then(|d| d.clock.clone()),
            }
        })
        .collect();
    let workers = children
        .workers
        .iter()
        .zip(&app.spec.workers)
        .map(|(objects, pool)| WorkerPoolStatus {
            pool: objects.pool.clone(),
            queues: pool.queues.clone(),
            workload: deployment_status::<S>(&objects.deployment, pool.replicas.min, &mut rolling),
        })
        .collect();
    Components {
        app: app_status,
        redis,
        shards,
        workers,
        endpoints: Endpoints {
            app: address::<S>(app, &children.app.service, 80),
            redis: app.redis_url.clone(),
            primaries: children
                .shards
                .iter()
                .map(|shard| address::<S>(app, &shard.primary_service, POSTGRES_PORT))
                .collect(),
            config_map: S::name(&children.config),
        },
        rolling,
    }
}

fn is_ready(workload: &WorkloadStatus) -> bool {
    workload.desired > 0 && workload.ready >= workload.desired
}

/// Instances that will not run until someone acts (another major version's data, a data
/// directory this ScaledApp did not create).
fn refused_instances(shard: &ShardStatus) -> impl Iterator<Item = &InstanceSummary> {
    shard
        .instances
        .iter()
        .filter(|instance| instance.role == InstanceRole::Refused.as_str())
}

fn shard_ready(shard: &ShardStatus) -> bool {
    is_ready(&shard.stateful_set)
        && shard.primary_pod.is_some()
        && refused_instances(shard).next().is_none()
}

/// What keeps the ScaledApp from being ready, in a stable order.
fn waiting_for(components: &Components) -> Vec<String> {
    let mut waiting = Vec::new();
    let check = |waiting: &mut Vec<String>, label: String, workload: &WorkloadStatus| {
        if !is_ready(workload) {
            waiting.push(format!("{label} {} {}", workload.name, workload.summary));
        }
    };
    for shard in &components.shards {
        if shard.primary_pod.is_none() {
            waiting.push(format!(
                "shard {} primary not chosen ({})",
                shard.index,
                shard.waiting.as_deref().unwrap_or("next pass")
            ));
        }
        for refused in refused_instances(shard) {
            waiting.push(format!(
                "shard {} instance {} refuses to start: {}",
                shard.index,
                refused.pod,
                refused.problem.as_deref().unwrap_or("no reason given")
            ));
        }
        check(
            &mut waiting,
            format!("shard {}", shard.index),
            &shard.stateful_set,
        );
    }
    if let Some(redis) = &components.redis {
        check(&mut waiting, "redis".into(), redis);
    }
    check(&mut waiting, "app".into(), &components.app);
    for pool in &components.workers {
        check(
            &mut waiting,
            format!("worker pool {}", pool.pool),
            &pool.workload,
        );
    }
    waiting
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: i64,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: Some(generation),
        last_transition_time: now.clone(),
    }
}

/// The status for this pass. `current` is the status on the object, used to keep transition
/// times and component details (an invalid spec or a failed apply does not erase what is known
/// about children).
pub fn compute(
    current: Option<&ScaledAppStatus>,
    generation: i64,
    paused: bool,
    outcome: &Outcome,
    now: &Time,
) -> ScaledAppStatus {
    match outcome {
        Outcome::Invalid(invalid) => from_finding(
            current,
            generation,
            paused,
            &Finding::Invalid {
                reason: invalid.reason(),
                message: invalid.to_string(),
            },
            now,
        ),
        Outcome::ApplyFailed(error) if error.needs_a_person() => from_finding(
            current,
            generation,
            paused,
            &Finding::Invalid {
                reason: error.reason(),
                message: error.to_string(),
            },
            now,
        ),
        Outcome::ApplyFailed(error) => with_failure(
            current.cloned().unwrap_or_default(),
            error.reason(),
            error.to_string(),
            generation,
            now,
        ),
        Outcome::InstancesFailed(error) => with_failure(
            current.cloned().unwrap_or_default(),
            INSTANCES_FAILED,
            error.to_string(),
            generation,
            now,
        ),
        Outcome::RedisFailed(error) => with_failure(
            current.cloned().unwrap_or_default(),
            REDIS_FAILED,
            error.to_string(),
            generation,
            now,
        ),
        Outcome::Applied {
            app,
            children,
            topology,
            redis,
            session_rotation,
            ..
        } => {
            let shards = &topology.shards;
            let components = match children {
                Observed::Applied(children) => components(app, children, shards),
                Observed::Live(children) => components(app, children, shards),
            };
            let mut status = from_finding(
                current,
                generation,
                paused,
                &Finding::Components(Box::new(components)),
                now,
            );
            if topology.switchover_handled.is_some() {
                status.last_switchover_request = topology.switchover_handled.clone();
            }
            status.redis_replication = redis.as_ref().map(|pass| pass.decision.status.clone());
            status.session_secret_rotation = session_rotation.status.clone();
            status
        }
    }
}

/// What status is computed from, once the outcome is read.
enum Finding {
    /// The spec cannot be realised, or something only a person can fix blocks it.
    Invalid {
        /// CamelCase reason.
        reason: &'static str,
        /// What to fix.
        message: String,
    },
    /// The children as they are now.
    Components(Box<Components>),
}

fn from_finding(
    current: Option<&ScaledAppStatus>,
    generation: i64,
    paused: bool,
    finding: &Finding,
    now: &Time,
) -> ScaledAppStatus {
    let mut status = current.cloned().unwrap_or_default();
    status.observed_generation = Some(generation);
    let paused_condition = if paused {
        condition(PAUSED, true, "PausedByUser", "spec.paused is true: the operator makes no changes to children until it is set to false".into(), generation, now)
    } else {
        condition(
            PAUSED,
            false,
            "Reconciling",
            "the operator keeps children in line with the spec".into(),
            generation,
            now,
        )
    };
    let conditions = match finding {
        Finding::Invalid { reason, message } => vec![
            condition(READY, false, reason, message.clone(), generation, now),
            condition(
                PROGRESSING,
                false,
                reason,
                "waiting for the spec to be fixed; nothing was changed".into(),
                generation,
                now,
            ),
            condition(DEGRADED, true, reason, message.clone(), generation, now),
            paused_condition,
        ],
        Finding::Components(components) => {
            status.app = Some(components.app.clone());
            status.redis = components.redis.clone();
            status.shards = components.shards.clone();
            status.workers = components.workers.clone();
            status.endpoints = Some(components.endpoints.clone());
            let shards_ready = components.shards.iter().filter(|s| shard_ready(s)).count();
            status.shards_summary = Some(format!("{shards_ready}/{}", components.shards.len()));
            let changing: Vec<String> = components
                .shards
                .iter()
                .filter_map(|shard| {
                    let progress = shard.failover.as_ref()?;
                    Some(format!(
                        "shard {}: {} {} -> {}",
                        shard.index, progress.kind, progress.from, progress.to
                    ))
                })
                .collect();
            status.failovers = (!changing.is_empty()).then(|| changing.join("; "));
            let pools_ready = components
                .workers
                .iter()
                .filter(|p| is_ready(&p.workload))
                .count();
            status.workers_summary = Some(format!("{pools_ready}/{}", components.workers.len()));

            let waiting = waiting_for(components);
            let ready = if waiting.is_empty() {
                condition(
                    READY,
                    true,
                    "AllComponentsReady",
                    "app, Redis, every shard and every worker pool are ready".into(),
                    generation,
                    now,
                )
            } else {
                // A refusing instance needs a person; say so in the reason, not only the message.
                let refused = components
                    .shards
                    .iter()
                    .any(|shard| refused_instances(shard).next().is_some());
                condition(
                    READY,
                    false,
                    if refused {
                        "InstanceRefused"
                    } else {
                        "ComponentsNotReady"
                    },
                    format!("waiting for: {}", waiting.join("; ")),
                    generation,
                    now,
                )
            };
            let progressing = if components.rolling.is_empty() {
                condition(
                    PROGRESSING,
                    false,
                    "RolloutComplete",
                    "every workload runs the latest spec".into(),
                    generation,
                    now,
                )
            } else {
                condition(
                    PROGRESSING,
                    true,
                    "RollingOut",
                    format!("rolling out: {}", components.rolling.join(", ")),
                    generation,
                    now,
                )
            };
            vec![
                ready,
                progressing,
                condition(
                    DEGRADED,
                    false,
                    "AsExpected",
                    "the spec is valid and was applied".into(),
                    generation,
                    now,
                ),
                paused_condition,
            ]
        }
    };
    status.conditions = conditions
        .into_iter()
        .map(|mut next| {
            if let Some(previous) = status.conditions.iter().find(|c| c.type_ == next.type_)
                && previous.status == next.status
            {
                next.last_transition_time = previous.last_transition_time.clone();
            }
            next
        })
        .collect();
    status
}

/// A failed apply, reported without losing what is known about the children.
fn with_failure(
    mut status: ScaledAppStatus,
    reason: &str,
    message: String,
    generation: i64,
    now: &Time,
) -> ScaledAppStatus {
    let degraded = condition(DEGRADED, true, reason, message, generation, now);
    match status.conditions.iter_mut().find(|c| c.type_ == DEGRADED) {
        Some(existing) => {
            let time = if existing.status == degraded.status {
                existing.last_transition_time.clone()
            } else {
                degraded.last_transition_time.clone()
            };
            *existing = Condition {
                last_transition_time: time,
                ..degraded
            };
        }
        None => status.conditions.push(degraded),
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::render;
    use crate::test_support::{all_ready, applied, nothing_yet, validated_example};
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid"))
    }

    fn fresh(app: &ValidatedApp) -> Outcome {
        applied(app, Observed::Live(Box::new(nothing_yet(&render(app)))))
    }

    fn ready(app: &ValidatedApp) -> Outcome {
        applied(app, Observed::Applied(Box::new(all_ready(&render(app)))))
    }

    fn get<'a>(status: &'a ScaledAppStatus, type_: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition present")
    }

    #[test]
    fn a_fresh_scaledapp_is_not_ready_and_says_what_it_waits_for() {
        let app = validated_example("shop");
        let status = compute(None, 1, false, &fresh(&app), &at(100));
        let ready = get(&status, READY);
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "ComponentsNotReady");
        assert!(
            ready.message.contains("shard 0 shop-shard-0 0/1"),
            "{}",
            ready.message
        );
        assert!(
            ready.message.contains("app shop-app 0/3"),
            "{}",
            ready.message
        );
        assert_eq!(get(&status, PROGRESSING).status, "True");
        assert_eq!(status.shards_summary.as_deref(), Some("0/2"));
        assert_eq!(status.observed_generation, Some(1));
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(1))
        );
    }

    #[test]
    fn all_components_ready_makes_ready_true_with_summaries() {
        let app = validated_example("shop");
        let status = compute(None, 1, false, &ready(&app), &at(100));
        assert_eq!(
            get(&status, READY).status,
            "True",
            "{}",
            get(&status, READY).message
        );
        assert_eq!(get(&status, PROGRESSING).status, "False");
        assert_eq!(get(&status, DEGRADED).status, "False");
        assert_eq!(status.app.as_ref().map(|a| a.summary.as_str()), Some("3/3"));
        assert_eq!(status.shards_summary.as_deref(), Some("2/2"));
        assert_eq!(status.workers_summary.as_deref(), Some("2/2"));
        assert_eq!(status.shards[1].slot_ranges, "512-1023");
        assert_eq!(
            status.endpoints.as_ref().map(|e| e.config_map.as_str()),
            Some("shop-config")
        );
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let app = validated_example("shop");
        let first = compute(None, 1, false, &fresh(&app), &at(100));
        let again = compute(Some(&first), 1, false, &fresh(&app), &at(200));
        assert_eq!(get(&again, READY).last_transition_time, at(100));
        assert_eq!(
            again, first,
            "an unchanged world yields an identical status (so nothing is written)"
        );
        let flipped = compute(Some(&again), 1, false, &ready(&app), &at(300));
        assert_eq!(get(&flipped, READY).last_transition_time, at(300));
        assert_eq!(
            get(&flipped, DEGRADED).last_transition_time,
            at(100),
            "Degraded stayed False"
        );
    }

    #[test]
    fn an_invalid_spec_keeps_component_details_and_names_the_reason() {
        let app = validated_example("shop");
        let before = compute(None, 1, false, &ready(&app), &at(100));
        let invalid = Outcome::Invalid(InvalidSpec::ConnectionBudget {
            pods: 100,
            per_pod: 60,
            needed: 6000,
        });
        let after = compute(Some(&before), 2, false, &invalid, &at(200));
        assert_eq!(get(&after, READY).reason, "ConnectionBudgetExceeded");
        assert_eq!(get(&after, DEGRADED).status, "True");
        assert_eq!(after.observed_generation, Some(2));
        assert_eq!(after.app, before.app);
    }

    #[test]
    fn an_autoscaled_app_is_not_ready_below_its_minimum() {
        let app = validated_example("shop");
        let mut children = all_ready(&render(&app));
        // Before the HPA acts, the Deployment runs its default single replica.
        let deployment = &mut children.app.deployment;
        deployment.spec.as_mut().expect("spec").replicas = Some(1);
        let status = deployment.status.as_mut().expect("status");
        status.ready_replicas = Some(1);
        status.updated_replicas = Some(1);
        let outcome = applied(&app, Observed::Applied(Box::new(children)));
        let status = compute(None, 1, false, &outcome, &at(100));
        assert_eq!(get(&status, READY).status, "False");
        assert_eq!(status.app.as_ref().map(|a| a.summary.as_str()), Some("1/3"));
    }

    #[test]
    fn paused_is_reported_as_a_condition() {
        let app = validated_example("shop");
        let status = compute(None, 1, true, &ready(&app), &at(100));
        assert_eq!(get(&status, PAUSED).status, "True");
        assert_eq!(get(&status, PAUSED).reason, "PausedByUser");
    }
}
