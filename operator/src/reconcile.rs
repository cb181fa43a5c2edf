//! The reconcile driver, one straight line:
//!
//! validate -> observe (the only reads: the live children, the Postgres pods and what their
//! instance managers report) -> render + decide (pure: the child set, and the Postgres topology
//! with its failovers and pod changes) -> apply (one applier writes everything, pod labels and
//! deletions included; while paused, nothing) -> status, computed purely from the [`Outcome`]
//! -> one status write -> one Event step.
//!
//! It never asks why it ran: the same ScaledApp, cluster and clocks always lead to the same
//! actions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use scaled_contract::instance::{InstanceRole, UNKNOWN_ROLE};
use tracing::{info, instrument, warn};

use crate::apply::{Applier, ApplyError, Changes};
use crate::context::Context;
use crate::crd::{ScaledApp, ScaledAppStatus};
use crate::events;
use crate::kinds::Inventory;
use crate::metrics::Metrics;
use crate::names::{MANAGER, app_deployment_name};
use crate::postgres::{self, ObserveError, Topology};
use crate::redis::{self, RedisObserveError};
use crate::render::render;
use crate::session_rotation::{self, Rollout};
use crate::status::{self, Observed, Outcome, READY, RedisPass};
use crate::validate::validate;

/// How often a converged ScaledApp is looked at again even without events (drift that no watch
/// reports, such as a deleted Secret).
const RESYNC: Duration = Duration::from_secs(300);
/// How soon a ScaledApp that is still coming up is looked at again.
const PROGRESS_CHECK: Duration = Duration::from_secs(30);
/// How soon a shard whose primary is in question is looked at again. No watch fires while a
/// deleted primary pod is away (its StatefulSet reported the drop once): without this the
/// failover delay would be measured in resyncs, and a primary back within one would never be
/// failed over, nor a failover in progress finished.
const PRIMARY_CHECK: Duration = Duration::from_secs(1);
/// How soon a shard with an instance that is not ready (a replica rejoining after a failover or
/// switchover, a clone in progress) is looked at again: its pod may stay Ready to the kubelet
/// throughout (a fence and rewind take seconds), so no StatefulSet change would report it.
const INSTANCE_CHECK: Duration = Duration::from_secs(5);
/// How soon a ScaledApp whose session secret is being rotated (or has a rotation request
/// waiting for one) is looked at again: a Deployment whose rollout completes is noticed by the
/// child watch, but this bounds the wait if that event is missed or debounced away.
const ROTATION_CHECK: Duration = Duration::from_secs(5);
/// How often a Redis primary that answers, and has a replica to fail over to, is asked again: a
/// redis-server that crashes restarts in place and a pod cut off the network changes no object,
/// so no watch would report either. Each look is one pass (the lists and one `INFO` per Redis
/// pod); simulated pods never answer, so they are not polled.
const REDIS_WATCH: Duration = Duration::from_secs(2);

/// Why a reconcile failed; all of these are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Reading or applying children failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Reading the Postgres pods or their volume claims failed.
    #[error(transparent)]
    Instances(#[from] ObserveError),
    /// Reading the Redis pods or the Redis password failed.
    #[error(transparent)]
    Redis(#[from] RedisObserveError),
    /// Writing the status failed.
    #[error("failed to patch status of ScaledApp {namespace}/{name}: {source}")]
    PatchStatus {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// The ScaledApp came without a namespace (it is a namespaced kind, so this is a bug).
    #[error("ScaledApp {0} has no namespace")]
    NoNamespace(String),
}

impl ReconcileError {
    /// A fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::Apply(ApplyError::List { .. }) => "list",
            ReconcileError::Apply(ApplyError::Apply { .. }) => "apply",
            ReconcileError::Apply(ApplyError::Secret { .. }) => "secret",
            ReconcileError::Apply(ApplyError::SecretConflict { .. }) => "secret_conflict",
            ReconcileError::Apply(ApplyError::SessionSecretOutOfStep { .. }) => {
                "session_secret_out_of_step"
            }
            ReconcileError::Apply(ApplyError::Prune { .. }) => "prune",
            ReconcileError::Apply(ApplyError::Label { .. } | ApplyError::Replace { .. }) => "pods",
            ReconcileError::Instances(_) => "instances",
            ReconcileError::Redis(_) => "redis",
            ReconcileError::PatchStatus { .. } => "status",
            ReconcileError::NoNamespace(_) => "metadata",
        }
    }
}

/// Reconciles one ScaledApp.
#[instrument(skip_all, fields(scaledapp = %app.name_any(), namespace = app.namespace().unwrap_or_default(), generation = app.metadata.generation))]
pub async fn reconcile(
    app: Arc<ScaledApp>,
    context: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = run(&app, &context).await;
    let outcome = if result.is_ok() { "success" } else { "error" };
    context
        .metrics
        .record_reconcile(outcome, started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => context.backoff.reset(&key(&app)),
        Err(error) => context.metrics.record_failure(error.category()),
    }
    result
}

/// What the controller does after a failed reconcile: back off, per object, exponentially.
pub fn error_policy(app: Arc<ScaledApp>, error: &ReconcileError, context: Arc<Context>) -> Action {
    let delay = context.backoff.next(&key(&app));
    warn!(scaledapp = %app.name_any(), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn key(app: &ScaledApp) -> String {
    format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any())
}

/// Whose failover clocks these are: the uid too, so a ScaledApp deleted and created again under
/// the same name (its pods may keep their names and volumes) never inherits a clock.
fn clock_key(app: &ScaledApp) -> String {
    format!("{}/{}", key(app), app.uid().unwrap_or_default())
}

async fn run(app: &ScaledApp, context: &Context) -> Result<Action, ReconcileError> {
    let namespace = app
        .namespace()
        .ok_or_else(|| ReconcileError::NoNamespace(app.name_any()))?;
    if app.metadata.deletion_timestamp.is_some() {
        // Being deleted: the garbage collector removes the children (a foreground deletion
        // waits for them). Applying now would re-create what it just deleted, and the
        // deletion would never finish.
        info!("being deleted; its children are left to the garbage collector");
        context.clocks.forget(&clock_key(app));
        return Ok(Action::await_change());
    }
    let current = app.status.as_ref();
    let now = Time(Timestamp::now());
    let outcome = reconcile_children(app, context, &namespace, &now).await;
    let status = status::compute(
        current,
        app.metadata.generation.unwrap_or_default(),
        app.spec.paused,
        &outcome,
        &now,
    );
    let written = write_status(context, app, &namespace, current, &status).await?;
    events::publish(context, app, events::notes(&outcome, current, written)).await;
    match outcome {
        // Permanent until the spec changes: reported, now wait for that change.
        Outcome::Invalid(_) => Ok(Action::await_change()),
        Outcome::ApplyFailed(error) => Err(error.into()),
        Outcome::InstancesFailed(error) => Err(error.into()),
        Outcome::RedisFailed(error) => Err(error.into()),
        Outcome::Applied {
            topology,
            redis,
            session_rotation,
            ..
        } => {
            let ready = status
                .conditions
                .iter()
                .any(|condition| condition.type_ == READY && condition.status == "True");
            let mut look = next_look(ready, &topology);
            if session_rotation.busy {
                look = look.min(ROTATION_CHECK);
            }
            Ok(Action::requeue(match redis.as_ref().map(|r| &r.decision) {
                Some(redis) if redis.in_question => look.min(PRIMARY_CHECK),
                Some(redis) if redis.watching => look.min(REDIS_WATCH),
                _ => look,
            }))
        }
    }
}

/// When to look again without an event: soon while a failover is due or under way or a pod is
/// being replaced, or while an instance that answers is not ready yet; otherwise by readiness.
/// Instances that do not answer at all, or refuse their data, change only with their pods,
/// whose events wake the controller: polling them would only load the API server (and on
/// simulated nodes nothing ever answers).
fn next_look(ready: bool, topology: &Topology) -> Duration {
    let shards = &topology.shards;
    let in_question = shards
        .iter()
        .any(|shard| shard.failover_due || shard.failover.is_some() || !shard.replace.is_empty());
    let settling = shards.iter().any(|shard| {
        shard.instances.iter().any(|instance| {
            !instance.ready
                && instance.role != UNKNOWN_ROLE
                && instance.role != InstanceRole::Refused.as_str()
        })
    });
    match (in_question, settling, ready) {
        (true, _, _) => PRIMARY_CHECK,
        (false, true, _) => INSTANCE_CHECK,
        (false, false, true) => RESYNC,
        (false, false, false) => PROGRESS_CHECK,
    }
}

/// Validate, observe, render and decide, apply (or, while paused, nothing).
async fn reconcile_children(
    app: &ScaledApp,
    context: &Context,
    namespace: &str,
    now: &Time,
) -> Outcome {
    let mut validated = match validate(app, &context.defaults) {
        Ok(validated) => validated,
        Err(invalid) => return Outcome::Invalid(invalid),
    };
    let name = validated.name.clone();
    // Observe: the only reads.
    let applier = Applier::new(
        context.client.clone(),
        namespace,
        &name,
        &context.applied,
        &context.metrics,
    );
    let (inventory, reads, redis_reads) = futures::join!(
        applier.inventory(),
        postgres::read(&context.client, &context.http, &validated),
        redis::read(&context.client, &validated),
    );
    let inventory = match inventory {
        Ok(inventory) => inventory,
        Err(error) => return Outcome::ApplyFailed(error),
    };
    let redis_reads = match redis_reads {
        Ok(reads) => reads,
        Err(error) => return Outcome::RedisFailed(error),
    };
    let instances = match reads {
        Ok(reads) => postgres::shards(&validated, reads, &shard_sets(&inventory, &validated)),
        Err(error) => return Outcome::InstancesFailed(error),
    };
    // Render and decide: pure. The rotation first, since the app's pod template and Secret
    // carry its step.
    let rotation_request = session_rotation::pending_rotation(app);
    let rotation = session_rotation::decide(session_rotation::Inputs {
        current: app
            .status
            .as_ref()
            .and_then(|status| status.session_secret_rotation.as_ref()),
        request: rotation_request.as_ref(),
        rollout: &Rollout::of(inventory.deployments.get(&app_deployment_name(&name))),
        paused: app.spec.paused,
        now,
    });
    validated.session_secret = rotation.plan.clone();
    let rendered = render(&validated);
    let clocks = context
        .clocks
        .previous(&clock_key(app), app.status.as_ref());
    let switchover = postgres::pending_switchover(app);
    let redis_switchover = redis::pending_redis_switchover(app);
    let topology = postgres::decide(
        postgres::Inputs {
            app: &validated,
            current: app.status.as_ref(),
            paused: app.spec.paused,
            now,
            clocks: &clocks,
            switchover: switchover.as_ref(),
        },
        &instances,
    );
    let redis = redis::decide(
        redis::Inputs {
            app: &validated,
            current: app
                .status
                .as_ref()
                .and_then(|status| status.redis_replication.as_ref()),
            paused: app.spec.paused,
            now,
            switchover: redis_switchover.as_ref(),
        },
        &redis_reads.pods,
    );
    // The clocks are what was observed, whatever the apply does.
    context.clocks.remember(&clock_key(app), topology.clocks());
    // Apply: every write of the pass. Redis is told its roles first, so the primary takes
    // writes before its label sends clients to it.
    let mut redis_pass = None;
    if let Some(decision) = redis {
        let (done, failed) = if app.spec.paused {
            (Vec::new(), Vec::new())
        } else {
            redis::enact(&decision.commands, redis_reads.password.as_ref()).await
        };
        redis_pass = Some(RedisPass {
            decision,
            done,
            failed,
        });
    }
    let (children, changes) = if app.spec.paused {
        let live = applier.observe(&rendered, inventory).await;
        (Observed::Live(Box::new(live)), Changes::default())
    } else {
        let mut pod_changes = topology.pod_changes();
        if let Some(pass) = &redis_pass {
            pod_changes
                .relabel
                .extend(pass.decision.relabel.iter().cloned());
        }
        match applier.apply(&rendered, &pod_changes, inventory).await {
            Ok((applied, changes)) => (Observed::Applied(Box::new(applied)), changes),
            Err(error) => return Outcome::ApplyFailed(error),
        }
    };
    record_failovers(&context.metrics, &topology);
    Outcome::Applied {
        app: Box::new(validated),
        children,
        changes,
        topology,
        redis: redis_pass.map(Box::new),
        session_rotation: Box::new(rotation),
    }
}

/// Each shard StatefulSet's current template revision and creation time, as observed.
fn shard_sets(
    inventory: &Inventory,
    app: &crate::validate::ValidatedApp,
) -> BTreeMap<u32, postgres::ShardSet> {
    (0..app.shards)
        .filter_map(|index| {
            let set = inventory
                .stateful_sets
                .get(&crate::names::shard_set_name(&app.name, index))?;
            Some((
                index,
                postgres::ShardSet {
                    update_revision: set
                        .status
                        .as_ref()
                        .and_then(|status| status.update_revision.clone()),
                    created: set.metadata.creation_timestamp.clone(),
                },
            ))
        })
        .collect()
}

/// Counts failovers and switchovers started, and the duration of those completed.
fn record_failovers(metrics: &Metrics, topology: &Topology) {
    for news in &topology.news {
        match news.reason {
            "FailoverStarted" => metrics.record_primary_change(crate::crd::FAILOVER),
            "SwitchoverStarted" => metrics.record_primary_change(crate::crd::SWITCHOVER),
            _ => {}
        }
    }
    for done in topology.shards.iter().filter_map(|shard| {
        shard
            .last_failover
            .as_ref()
            .filter(|_| shard.failover.is_none())
            .filter(|_| {
                shard
                    .news
                    .iter()
                    .any(|news| news.reason.ends_with("Completed"))
            })
    }) {
        if let Some(completed) = &done.completed_at {
            let seconds = completed.0.duration_since(done.started_at.0).as_secs_f64();
            metrics.record_primary_change_seconds(&done.kind, seconds);
        }
    }
}

/// Writes the status if it differs from the current one; returns whether it wrote.
async fn write_status(
    context: &Context,
    app: &ScaledApp,
    namespace: &str,
    current: Option<&ScaledAppStatus>,
    status: &ScaledAppStatus,
) -> Result<bool, ReconcileError> {
    if current == Some(status) {
        return Ok(false);
    }
    let api: Api<ScaledApp> = Api::namespaced(context.client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": ScaledApp::api_version(&()),
        "kind": ScaledApp::kind(&()),
        "status": status,
    });
    context.metrics.record_write("ScaledApp/status");
    api.patch_status(
        &app.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| ReconcileError::PatchStatus {
        namespace: namespace.to_string(),
        name: app.name_any(),
        source,
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_api::FakeApi;
    use crate::metrics::Metrics;
    use crate::test_support::example;
    use crate::validate::Defaults;

    const APPS: &str = "/apis/scaled.dev/v1alpha1/namespaces/default/scaledapps";

    fn setup() -> (FakeApi, Arc<Context>) {
        let fake = FakeApi::default();
        let app = example("shop");
        fake.insert(APPS, "shop", serde_json::to_value(&app).expect("json"));
        let context = Arc::new(Context::new(
            fake.client(),
            Metrics::new(),
            Some("test".into()),
            Defaults::default(),
        ));
        (fake, context)
    }

    #[test]
    fn a_shard_whose_primary_is_in_question_is_looked_at_again_within_a_second() {
        let of = |shards| Topology {
            shards,
            ..Topology::default()
        };
        let healthy = postgres::ShardDecision::default();
        assert_eq!(next_look(true, &of(vec![healthy.clone()])), RESYNC);
        assert_eq!(next_look(false, &of(vec![healthy.clone()])), PROGRESS_CHECK);
        let unhealthy = postgres::ShardDecision {
            primary_health: Some("pod shop-shard-0-0 does not exist".into()),
            failover_due: true,
            ..Default::default()
        };
        assert_eq!(
            next_look(true, &of(vec![healthy.clone(), unhealthy])),
            PRIMARY_CHECK
        );
        // Nobody can take over (or, on simulated nodes, nothing answers): no polling.
        let stuck = postgres::ShardDecision {
            primary_health: Some("the instance manager of shop-shard-0-0 does not answer".into()),
            instances: vec![crate::crd::InstanceSummary {
                pod: "shop-shard-0-0".into(),
                role: "Unknown".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(next_look(true, &of(vec![stuck])), RESYNC);
        let rolling = postgres::ShardDecision {
            replace: vec!["shop-shard-0-1".into()],
            ..Default::default()
        };
        assert_eq!(next_look(false, &of(vec![rolling])), PRIMARY_CHECK);
        let rejoining = postgres::ShardDecision {
            instances: vec![crate::crd::InstanceSummary {
                pod: "shop-shard-0-2".into(),
                role: "Replica".into(),
                ready: false,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(next_look(true, &of(vec![rejoining])), INSTANCE_CHECK);
    }

    /// The pass wrote nothing but the ScaledApp's status and Events.
    fn assert_only_status_and_events(fake: &FakeApi) {
        let writes = fake.take_writes();
        assert!(
            writes
                .iter()
                .all(|w| w.ends_with("/status") || w.contains("events")),
            "{writes:#?}"
        );
    }

    fn stored(fake: &FakeApi) -> Arc<ScaledApp> {
        Arc::new(
            serde_json::from_value(fake.get(APPS, "shop").expect("stored")).expect("ScaledApp"),
        )
    }

    #[tokio::test]
    async fn a_scaledapp_being_deleted_gets_no_writes_so_its_children_stay_deleted() {
        let (fake, context) = setup();
        let mut app = (*stored(&fake)).clone();
        app.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let action = reconcile(Arc::new(app), context.clone())
            .await
            .expect("reconcile");
        assert_eq!(action, Action::await_change());
        assert_eq!(fake.take_writes(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_second_reconcile_of_an_unchanged_scaledapp_makes_no_writes() {
        let (fake, context) = setup();
        reconcile(stored(&fake), context.clone())
            .await
            .expect("first reconcile");
        let first = fake.take_writes();
        assert!(
            first.iter().any(|w| w.contains("/deployments/shop-app")),
            "{first:#?}"
        );
        assert!(
            first.iter().any(|w| w.ends_with("/scaledapps/shop/status")),
            "{first:#?}"
        );

        reconcile(stored(&fake), context.clone())
            .await
            .expect("second reconcile");
        assert_eq!(fake.take_writes(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_child_deleted_by_hand_is_recreated_and_nothing_else_is_touched() {
        let (fake, context) = setup();
        reconcile(stored(&fake), context.clone())
            .await
            .expect("first reconcile");
        reconcile(stored(&fake), context.clone())
            .await
            .expect("second reconcile");
        fake.take_writes();
        fake.remove(
            "/apis/apps/v1/namespaces/default/deployments",
            "shop-worker-email",
        );
        reconcile(stored(&fake), context.clone())
            .await
            .expect("third reconcile");
        let writes = fake.take_writes();
        let applies: Vec<_> = writes
            .iter()
            .filter(|w| w.starts_with("PATCH") && !w.contains("/status") && !w.contains("/events/"))
            .collect();
        assert_eq!(applies.len(), 1, "{writes:#?}");
        assert!(applies[0].ends_with("/deployments/shop-worker-email"));
    }

    #[tokio::test]
    async fn secrets_are_created_once_and_never_overwritten() {
        let (fake, context) = setup();
        reconcile(stored(&fake), context.clone())
            .await
            .expect("first reconcile");
        let secret = |fake: &FakeApi| {
            fake.get("/api/v1/namespaces/default/secrets", "shop-postgres")
                .expect("secret")
        };
        let before = secret(&fake)["data"].clone();
        assert!(before["app-password"].is_string(), "{before}");
        // A restarted operator (empty memory) applies again, but must keep the passwords.
        let restarted = Arc::new(Context::new(
            fake.client(),
            Metrics::new(),
            Some("test".into()),
            Defaults::default(),
        ));
        reconcile(stored(&fake), restarted)
            .await
            .expect("reconcile after restart");
        assert_eq!(secret(&fake)["data"], before);
    }

    #[tokio::test]
    async fn an_unrealisable_spec_writes_only_status_and_waits_for_a_change() {
        let (fake, context) = setup();
        let mut app = example("shop");
        app.spec.app.replicas.max = 1000;
        fake.insert(APPS, "shop", serde_json::to_value(&app).expect("json"));
        let action = reconcile(stored(&fake), context.clone())
            .await
            .expect("reconcile");
        assert_eq!(action, Action::await_change());
        assert_only_status_and_events(&fake);
        let status = stored(&fake).status.clone().expect("status");
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(ready.reason, "ConnectionBudgetExceeded");
    }

    #[tokio::test]
    async fn a_paused_scaledapp_changes_no_children() {
        let (fake, context) = setup();
        let mut app = example("shop");
        app.spec.paused = true;
        fake.insert(APPS, "shop", serde_json::to_value(&app).expect("json"));
        reconcile(stored(&fake), context.clone())
            .await
            .expect("reconcile");
        assert_only_status_and_events(&fake);
        let status = stored(&fake).status.clone().expect("status");
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Paused" && c.status == "True")
        );
    }

    #[tokio::test]
    async fn the_first_pod_of_each_shard_is_recorded_as_primary_and_pods_are_labelled_once() {
        let (fake, context) = setup();
        const PODS: &str = "/api/v1/namespaces/default/pods";
        for ordinal in 0..3 {
            let name = format!("shop-shard-0-{ordinal}");
            fake.insert(
                PODS,
                &name,
                serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
                    "name": name, "namespace": "default",
                    "labels": {"app.kubernetes.io/instance": "shop", "app.kubernetes.io/component": "postgres", "scaled.dev/shard": "0"}}}),
            );
        }
        reconcile(stored(&fake), context.clone())
            .await
            .expect("first reconcile");
        let writes = fake.take_writes();
        let labelled: Vec<_> = writes.iter().filter(|w| w.contains("/pods/")).collect();
        assert_eq!(labelled.len(), 3, "{writes:#?}");
        let role = |pod: &str| {
            fake.get(PODS, pod).expect("pod")["metadata"]["labels"]["scaled.dev/role"].clone()
        };
        assert_eq!(role("shop-shard-0-0"), "primary");
        assert_eq!(role("shop-shard-0-2"), "replica");
        let status = stored(&fake).status.clone().expect("status");
        assert_eq!(
            status.shards[0].primary_pod.as_deref(),
            Some("shop-shard-0-0")
        );
        assert_eq!(
            status.shards[1].primary_pod.as_deref(),
            Some("shop-shard-1-0"),
            "chosen before its pods exist"
        );

        reconcile(stored(&fake), context.clone())
            .await
            .expect("second reconcile");
        assert_eq!(fake.take_writes(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_strangers_secret_under_a_generated_name_is_not_taken_over_and_nothing_rolls_out() {
        let (fake, context) = setup();
        fake.insert(
            "/api/v1/namespaces/default/secrets",
            "shop-postgres",
            serde_json::json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "shop-postgres", "namespace": "default", "uid": "theirs"},
                "data": {"app-password": "c3RyYW5nZXI="}}),
        );
        reconcile(stored(&fake), context.clone())
            .await
            .expect_err("a conflict is not a success");
        let writes = fake.take_writes();
        assert!(
            writes
                .iter()
                .all(|w| w.ends_with("/scaledapps/shop/status") || w.contains("events")),
            "nothing but status and the Event: {writes:#?}"
        );
        let secret = fake
            .get("/api/v1/namespaces/default/secrets", "shop-postgres")
            .expect("still there");
        assert_eq!(secret["data"]["app-password"], "c3RyYW5nZXI=");
        assert!(secret["metadata"]["labels"].is_null(), "not relabelled");
        let status = stored(&fake).status.clone().expect("status");
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "SecretConflict")
        );
        assert!(ready.message.contains("shop-postgres"), "{}", ready.message);
    }
}
