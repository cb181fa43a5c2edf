//! The operator's promises, checked against a real API server with the operator running under
//! the chart's ServiceAccount (started by `e2e/run.sh`). Each test works in its own namespace,
//! labelled to enforce the `restricted` Pod Security Standard.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Event, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use scaled_e2e::*;
use scaledapp_operator::crd::{DataPolicy, ScaledApp, WorkerPoolSpec};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(180);

async fn create(namespace: &TestNamespace, app: &ScaledApp) -> ScaledApp {
    namespace
        .apps()
        .create(&PostParams::default(), app)
        .await
        .expect("ScaledApp accepted")
}

async fn merge_spec(namespace: &TestNamespace, name: &str, spec: serde_json::Value) {
    namespace
        .apps()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .expect("spec patch accepted");
}

/// A fresh namespace holding `examples/shop.yaml`, already Ready.
async fn ready_shop(prefix: &str) -> TestNamespace {
    let client = client().await;
    let namespace = TestNamespace::create(&client, prefix).await;
    create(&namespace, &example("shop")).await;
    wait_ready(&namespace.apps(), "shop", READY_TIMEOUT).await;
    namespace
}

fn names<K: kube::Resource>(items: &[K]) -> BTreeSet<String> {
    items
        .iter()
        .map(|item| item.meta().name.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn every_example_reaches_ready_and_shows_its_printer_columns() {
    let client = client().await;
    let namespace = TestNamespace::create(&client, "examples").await;
    let mut examples: Vec<String> = std::fs::read_dir(repo_root().join("examples"))
        .expect("examples/")
        .filter_map(|entry| entry.ok()?.path().file_stem()?.to_str().map(String::from))
        .collect();
    examples.sort();
    assert!(examples.len() >= 2, "examples/ has {examples:?}");
    for example in &examples {
        let path = repo_root().join("examples").join(format!("{example}.yaml"));
        kubectl(&[
            "apply",
            "-n",
            &namespace.name,
            "-f",
            path.to_str().expect("utf-8 path"),
        ])
        .expect("kubectl apply");
    }
    for example in &examples {
        let name = scaled_e2e::example(example).name_any();
        let resource = format!("scaledapp/{name}");
        kubectl(&[
            "wait",
            "-n",
            &namespace.name,
            "--for=condition=Ready",
            "--timeout=180s",
            &resource,
        ])
        .unwrap_or_else(|e| panic!("{example} did not become Ready: {e}"));
    }
    let table = kubectl(&["get", "sapp", "-n", &namespace.name]).expect("kubectl get sapp");
    let header = table.lines().next().expect("header line");
    for column in ["NAME", "READY", "APP", "SHARDS", "WORKERS", "AGE"] {
        assert!(
            header.contains(column),
            "missing column {column} in:\n{table}"
        );
    }
    let shop = table
        .lines()
        .find(|line| line.starts_with("shop "))
        .expect("shop row");
    assert!(
        shop.contains("True") && shop.contains("3/3") && shop.contains("2/2"),
        "{table}"
    );
    namespace.delete().await;
}

#[tokio::test]
async fn every_rendered_object_is_accepted_by_server_side_dry_run() {
    let client = client().await;
    let namespace = TestNamespace::create(&client, "render").await;
    let binary = std::env::var("SCALEDAPP_OPERATOR_BIN")
        .expect("SCALEDAPP_OPERATOR_BIN names the operator binary");
    for example in ["shop", "minimal"] {
        let path = repo_root().join("examples").join(format!("{example}.yaml"));
        let output = std::process::Command::new(&binary)
            .args([
                "render",
                "-n",
                &namespace.name,
                "-f",
                path.to_str().expect("utf-8"),
            ])
            .output()
            .expect("run render");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let manifests = String::from_utf8(output.stdout).expect("utf-8");
        // Secrets print placeholders under stringData; the API accepts them as-is in a dry run.
        let result = kubectl_stdin(
            &[
                "apply",
                "--dry-run=server",
                "--server-side",
                "--field-manager=e2e",
                "-n",
                &namespace.name,
                "-f",
                "-",
            ],
            &manifests,
        )
        .unwrap_or_else(|e| panic!("{example}: {e}"));
        assert!(result.contains("deployment.apps/"), "{result}");
        assert!(result.contains("statefulset.apps/"), "{result}");
        assert!(
            result.contains("horizontalpodautoscaler.autoscaling/"),
            "{result}"
        );
    }
    namespace.delete().await;
}

#[tokio::test]
async fn children_have_the_right_names_owners_labels_and_numbers() {
    let client = client().await;
    let namespace = TestNamespace::create(&client, "children").await;
    let app = create(&namespace, &example("shop")).await;
    let uid = app.uid().expect("uid");
    let ready = wait_ready(&namespace.apps(), "shop", READY_TIMEOUT).await;

    let list = ListParams::default().labels("app.kubernetes.io/instance=shop");
    let deployments = namespace
        .api::<Deployment>()
        .list(&list)
        .await
        .expect("deployments")
        .items;
    assert_eq!(
        names(&deployments),
        ["shop-app", "shop-worker-analytics", "shop-worker-email"]
            .map(String::from)
            .into()
    );
    let statefulsets = namespace
        .api::<StatefulSet>()
        .list(&list)
        .await
        .expect("statefulsets")
        .items;
    assert_eq!(
        names(&statefulsets),
        ["shop-redis", "shop-shard-0", "shop-shard-1"]
            .map(String::from)
            .into()
    );
    for object in deployments
        .iter()
        .map(|d| d.meta())
        .chain(statefulsets.iter().map(|s| s.meta()))
    {
        let owner = &object.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("ScaledApp", uid.as_str(), Some(true))
        );
        let labels = object.labels.as_ref().expect("labels");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "scaledapp-operator");
    }

    let hpa = namespace
        .api::<HorizontalPodAutoscaler>()
        .get("shop-app")
        .await
        .expect("app HPA");
    let spec = hpa.spec.expect("spec");
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(3), 50));
    let metrics = spec.metrics.expect("metrics");
    let cpu = metrics
        .iter()
        .find_map(|m| m.resource.as_ref())
        .expect("cpu metric");
    assert_eq!(cpu.target.average_utilization, Some(70));
    let rps = metrics
        .iter()
        .find_map(|m| {
            m.pods
                .as_ref()
                .filter(|p| p.metric.name == "http_requests_per_second")
        })
        .expect("rps metric");
    let rps_target = rps.target.average_value.as_ref().map(|q| q.0.as_str());
    assert!(matches!(rps_target, Some("1k" | "1000")), "{rps_target:?}");
    let down = spec
        .behavior
        .expect("behavior")
        .scale_down
        .expect("scale down");
    assert_eq!(down.stabilization_window_seconds, Some(300));

    let policies = namespace
        .api::<NetworkPolicy>()
        .list(&list)
        .await
        .expect("policies")
        .items;
    assert_eq!(
        names(&policies),
        ["shop-postgres", "shop-redis"].map(String::from).into()
    );
    let pdb = namespace
        .api::<PodDisruptionBudget>()
        .get("shop-app")
        .await
        .expect("pdb");
    assert!(pdb.spec.expect("spec").max_unavailable.is_some());
    for secret in ["shop-postgres", "shop-redis", "shop-app"] {
        let secret = namespace
            .api::<Secret>()
            .get(secret)
            .await
            .expect("generated secret");
        let data = secret.data.expect("data");
        assert!(
            data.values().all(|value| value.0.len() >= 32),
            "{:?} has short values",
            secret.metadata.name
        );
    }
    let config = namespace
        .api::<ConfigMap>()
        .get("shop-config")
        .await
        .expect("config");
    let document = &config.data.expect("data")["config.json"];
    let runtime = scaled_contract_from(document);
    assert_eq!(runtime["shardMap"]["slots"], 1024);

    let status = ready.status.expect("status");
    assert_eq!(status.app.as_ref().map(|a| a.summary.as_str()), Some("3/3"));
    assert_eq!(status.shards.len(), 2);
    assert_eq!(status.shards[0].slot_ranges, "0-511");
    assert_eq!(status.shards[1].stateful_set.summary, "3/3");
    // The operator chose each shard's first primary and labelled the pods to match, so the
    // -primary Service selects exactly that pod.
    for shard in &status.shards {
        let primary = format!("shop-shard-{}-0", shard.index);
        assert_eq!(shard.primary_pod.as_deref(), Some(primary.as_str()));
        let pod = namespace
            .api::<Pod>()
            .get(&primary)
            .await
            .expect("primary pod");
        assert_eq!(
            pod.labels().get("scaled.dev/role").map(String::as_str),
            Some("primary")
        );
        let replica = namespace
            .api::<Pod>()
            .get(&format!("shop-shard-{}-1", shard.index))
            .await
            .expect("replica pod");
        assert_eq!(
            replica.labels().get("scaled.dev/role").map(String::as_str),
            Some("replica")
        );
    }
    assert_eq!(status.workers.len(), 2);
    assert_eq!(
        status.redis.as_ref().map(|r| r.name.as_str()),
        Some("shop-redis")
    );
    assert_eq!(
        status.endpoints.as_ref().map(|e| e.primaries.clone()),
        Some(vec![
            format!("shop-shard-0-primary.{}.svc:5432", namespace.name),
            format!("shop-shard-1-primary.{}.svc:5432", namespace.name)
        ])
    );
    // Clients reach Redis through a virtual IP: its name resolves while no pod backs it.
    assert_eq!(
        status.endpoints.as_ref().map(|e| e.redis.clone()),
        Some(format!(
            "redis://shop-redis-primary.{}.svc:6379",
            namespace.name
        ))
    );
    let redis_service = namespace
        .api::<Service>()
        .get("shop-redis-primary")
        .await
        .expect("the Redis clients' Service");
    let cluster_ip = redis_service
        .spec
        .and_then(|spec| spec.cluster_ip)
        .expect("a cluster IP");
    assert!(
        cluster_ip.parse::<std::net::IpAddr>().is_ok(),
        "not headless: {cluster_ip}"
    );
    // Restricted Pod Security: every component's pods were admitted.
    let pods = namespace
        .api::<Pod>()
        .list(&list)
        .await
        .expect("pods")
        .items;
    let components: BTreeSet<String> = pods
        .iter()
        .filter_map(|pod| pod.labels().get("app.kubernetes.io/component").cloned())
        .collect();
    assert_eq!(
        components,
        ["app", "postgres", "redis", "worker"]
            .map(String::from)
            .into()
    );
    namespace.delete().await;
}

fn scaled_contract_from(document: &str) -> serde_json::Value {
    serde_json::from_str(document).expect("config.json is JSON")
}

#[tokio::test]
async fn spec_changes_converge() {
    let namespace = ready_shop("changes").await;

    let mut workers = example("shop").spec.workers;
    workers.retain(|pool| pool.name != "analytics");
    workers.push(WorkerPoolSpec {
        name: "reports".into(),
        // Only queues the app has handlers for are accepted (the CRD says so).
        queues: vec!["analytics:track".into()],
        ..workers[0].clone()
    });
    merge_spec(
        &namespace,
        "shop",
        json!({
            "app": {"replicas": {"min": 4, "max": 20}},
            "workers": workers,
            "cache": {"redis": {"maxMemoryMib": 512}},
        }),
    )
    .await;
    wait_ready(&namespace.apps(), "shop", READY_TIMEOUT).await;

    let hpa = namespace
        .api::<HorizontalPodAutoscaler>()
        .get("shop-app")
        .await
        .expect("hpa");
    let spec = hpa.spec.expect("spec");
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(4), 20));
    let deployments = namespace.api::<Deployment>();
    assert!(
        deployments
            .get_opt("shop-worker-reports")
            .await
            .expect("get")
            .is_some()
    );
    eventually("analytics pool pruned", Duration::from_secs(30), || async {
        Ok(deployments
            .get_opt("shop-worker-analytics")
            .await?
            .is_none()
            .then_some(()))
    })
    .await;
    let hpas = namespace.api::<HorizontalPodAutoscaler>();
    assert!(
        hpas.get_opt("shop-worker-analytics")
            .await
            .expect("get")
            .is_none()
    );
    let redis = namespace
        .api::<StatefulSet>()
        .get("shop-redis")
        .await
        .expect("redis");
    let script = redis
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod")
        .containers[0]
        .command
        .clone()
        .expect("command")
        .join(" ");
    assert!(script.contains("maxmemory 512mb"), "{script}");
    namespace.delete().await;
}

#[tokio::test]
async fn a_child_edited_or_deleted_by_hand_is_reverted_or_recreated() {
    let namespace = ready_shop("drift").await;

    let hpas = namespace.api::<HorizontalPodAutoscaler>();
    hpas.patch(
        "shop-app",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"maxReplicas": 7}})),
    )
    .await
    .expect("hand edit");
    eventually(
        "hand-edited HPA reverted",
        Duration::from_secs(60),
        || async {
            let hpa = hpas.get("shop-app").await?;
            Ok((hpa.spec.map(|s| s.max_replicas) == Some(50)).then_some(()))
        },
    )
    .await;

    let services = namespace.api::<Service>();
    services
        .delete("shop-app", &DeleteParams::default())
        .await
        .expect("hand delete");
    eventually(
        "deleted Service recreated",
        Duration::from_secs(60),
        || async {
            Ok(services
                .get_opt("shop-app")
                .await?
                .and_then(|s| s.metadata.deletion_timestamp.is_none().then_some(())))
        },
    )
    .await;
    namespace.delete().await;
}

#[tokio::test]
async fn an_unrealisable_spec_is_reported_not_half_applied() {
    let client = client().await;
    let namespace = TestNamespace::create(&client, "unrealisable").await;
    let mut app = example("shop");
    // Valid for the schema, but 1000 pods x 60 connections is more than a primary may take.
    app.spec.app.replicas.max = 1000;
    create(&namespace, &app).await;
    let apps = namespace.apps();
    let (_, reason, message) = eventually(
        "Ready=False with a reason",
        Duration::from_secs(60),
        || async {
            let app = apps.get("shop").await?;
            Ok(condition(&app, "Ready").filter(|(status, _, _)| status == "False"))
        },
    )
    .await;
    assert_eq!(reason, "ConnectionBudgetExceeded");
    assert!(message.contains("lower database.pool"), "{message}");
    let events = namespace.api::<Event>();
    eventually("a Warning event", Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .any(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some("ConnectionBudgetExceeded")
            })
            .then_some(()))
    })
    .await;
    let deployments = namespace
        .api::<Deployment>()
        .list(&ListParams::default())
        .await
        .expect("list");
    assert!(
        deployments.items.is_empty(),
        "nothing may be rolled out for an invalid spec"
    );
    namespace.delete().await;
}

#[tokio::test]
async fn pausing_stops_changes_and_says_so() {
    let namespace = ready_shop("paused").await;
    merge_spec(&namespace, "shop", json!({"paused": true})).await;
    let apps = namespace.apps();
    eventually("Paused=True", Duration::from_secs(30), || async {
        let app = apps.get("shop").await?;
        Ok(condition(&app, "Paused").filter(|(status, _, _)| status == "True"))
    })
    .await;
    merge_spec(
        &namespace,
        "shop",
        json!({"app": {"replicas": {"min": 5, "max": 9}}}),
    )
    .await;
    // The operator has seen the change (and, paused, left the children alone) once its status
    // names the new generation: no fixed wait.
    eventually(
        "the operator to observe the paused change",
        Duration::from_secs(60),
        || async {
            let app = apps.get("shop").await?;
            let generation = app.metadata.generation;
            let observed = app
                .status
                .as_ref()
                .and_then(|status| status.observed_generation);
            Ok((observed.is_some() && observed >= generation).then_some(()))
        },
    )
    .await;
    let hpa = namespace
        .api::<HorizontalPodAutoscaler>()
        .get("shop-app")
        .await
        .expect("hpa");
    assert_eq!(
        hpa.spec.expect("spec").max_replicas,
        50,
        "paused: the HPA must not change"
    );
    merge_spec(&namespace, "shop", json!({"paused": false})).await;
    wait_ready(&apps, "shop", READY_TIMEOUT).await;
    let hpa = namespace
        .api::<HorizontalPodAutoscaler>()
        .get("shop-app")
        .await
        .expect("hpa");
    assert_eq!(
        hpa.spec.expect("spec").max_replicas,
        9,
        "resumed: the change lands"
    );
    namespace.delete().await;
}

async fn delete_and_check_data(policy: DataPolicy, keeps_data: bool) {
    let client = client().await;
    let namespace = TestNamespace::create(&client, "deletion").await;
    let mut app = example("minimal");
    app.spec.data_policy = policy;
    create(&namespace, &app).await;
    wait_ready(&namespace.apps(), "minimal", READY_TIMEOUT).await;
    let claims = namespace.api::<PersistentVolumeClaim>();
    assert!(
        !claims
            .list(&ListParams::default())
            .await
            .expect("pvcs")
            .items
            .is_empty()
    );

    namespace
        .apps()
        .delete("minimal", &DeleteParams::default())
        .await
        .expect("delete");
    let deployments = namespace.api::<Deployment>();
    // The garbage collector is shared with every other test's namespace clean-up: be patient.
    eventually(
        "children garbage-collected",
        Duration::from_secs(240),
        || async {
            let left = deployments.list(&ListParams::default()).await?.items.len()
                + namespace
                    .api::<StatefulSet>()
                    .list(&ListParams::default())
                    .await?
                    .items
                    .len();
            Ok((left == 0).then_some(()))
        },
    )
    .await;
    let secrets = namespace.api::<Secret>();
    if keeps_data {
        // Give the garbage collector time to (wrongly) remove them.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            secrets
                .get_opt("minimal-postgres")
                .await
                .expect("get")
                .is_some(),
            "Retain keeps Secrets"
        );
        assert!(
            !claims
                .list(&ListParams::default())
                .await
                .expect("pvcs")
                .items
                .is_empty(),
            "Retain keeps PVCs"
        );
    } else {
        eventually(
            "Secrets and PVCs removed",
            Duration::from_secs(240),
            || async {
                let secret = secrets.get_opt("minimal-postgres").await?;
                let pvcs = claims.list(&ListParams::default()).await?.items;
                let live = pvcs
                    .iter()
                    .filter(|pvc| pvc.metadata.deletion_timestamp.is_none())
                    .count();
                Ok((secret.is_none() && live == 0).then_some(()))
            },
        )
        .await;
    }
    namespace.delete().await;
}

#[tokio::test]
async fn deleting_keeps_volumes_and_secrets_under_the_default_retain_policy() {
    delete_and_check_data(DataPolicy::Retain, true).await;
}

#[tokio::test]
async fn deleting_removes_volumes_and_secrets_under_the_delete_policy() {
    delete_and_check_data(DataPolicy::Delete, false).await;
}

#[tokio::test]
async fn a_converged_scaledapp_costs_no_writes() {
    let namespace = ready_shop("quiet").await;
    // Let stragglers (status of the last pods, HPA status) settle, then watch for a full minute.
    let settle = std::env::var("SCALEDAPP_E2E_QUIET_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let family = "scaledapp_operator_api_writes_total";
    let before = counter_total(&operator_metrics().await.expect("metrics"), family);
    let audit_before = audit_writes(&namespace.name);
    // 0 == 0 would also pass with audit logging broken or the filter wrong: the operator created
    // every child of this namespace, so the log must show those writes already.
    assert!(
        audit_before.operator_writes > 0,
        "the audit log shows none of the operator's writes in {}: is auditing on, and does \
         SCALEDAPP_OPERATOR_USER name the operator?",
        namespace.name
    );
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let after = counter_total(&operator_metrics().await.expect("metrics"), family);
    // And the log was still being written when the quiet period ended: a write of the test's
    // own in this namespace (the policy logs writes) shows up in it.
    let probe: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "audit-probe"},
        "data": {"why": "the audit log is still written"}
    }))
    .expect("a ConfigMap");
    namespace
        .api::<ConfigMap>()
        .create(&PostParams::default(), &probe)
        .await
        .expect("write the audit probe");
    let audit_after = eventually(
        "the test's own request in the audit log",
        Duration::from_secs(30),
        || async {
            let counts = audit_writes(&namespace.name);
            Ok((counts.events > audit_before.events).then_some(counts))
        },
    )
    .await;
    // Other tests run at the same time, so the operator-wide counter may move; the audit log,
    // filtered to this namespace and the operator's identity, may not.
    assert_eq!(
        audit_after.operator_writes, audit_before.operator_writes,
        "operator writes in {} during {settle}s",
        namespace.name
    );
    eprintln!(
        "operator-wide writes during the quiet period: {}",
        after - before
    );
    namespace.delete().await;
}

/// What the API server's audit log holds about one namespace.
#[derive(Clone, Copy, Debug)]
struct AuditCounts {
    /// Write requests by the operator's ServiceAccount.
    operator_writes: usize,
    /// Completed requests of anyone.
    events: usize,
}

/// What the audit log records in `namespace` (every file of it: the API server rotates it at
/// 100 MB).
fn audit_writes(namespace: &str) -> AuditCounts {
    let path = std::env::var("SCALEDAPP_AUDIT_LOG")
        .expect("SCALEDAPP_AUDIT_LOG names the API server audit log");
    let user = std::env::var("SCALEDAPP_OPERATOR_USER")
        .expect("SCALEDAPP_OPERATOR_USER names the operator's identity");
    let path = std::fs::canonicalize(&path).expect("the audit log exists");
    let directory = path.parent().expect("the audit log is in a directory");
    let files = std::fs::read_dir(directory)
        .expect("read the audit log directory")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|file| {
            file.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("audit") && name.ends_with(".log"))
        });
    let events: Vec<serde_json::Value> = files
        .flat_map(|file| {
            std::fs::read_to_string(file)
                .unwrap_or_default()
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .collect::<Vec<_>>()
        })
        .filter(|event| event["stage"] == "ResponseComplete")
        .filter(|event| event["objectRef"]["namespace"] == namespace)
        .collect();
    let operator_writes = events
        .iter()
        .filter(|event| event["user"]["username"] == user.as_str())
        .filter(|event| {
            matches!(
                event["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            )
        })
        .count();
    AuditCounts {
        operator_writes,
        events: events.len(),
    }
}

#[tokio::test]
async fn rotating_the_session_secret_stages_the_new_value_then_swaps_it_after_each_rollout() {
    use scaledapp_operator::names::{
        SESSION_SECRET_PREVIOUS_KEY, SESSION_SECRET_ROTATION_ANNOTATION,
    };
    let namespace = ready_shop("rotate").await;
    let secrets = namespace.api::<Secret>();
    let value = |secret: &Secret, key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .map(|bytes| bytes.0.clone())
    };
    let before = secrets.get("shop-app").await.expect("app secret");
    let old = value(&before, "session-secret").expect("a session secret");
    assert_eq!(value(&before, SESSION_SECRET_PREVIOUS_KEY), None);

    let mut out = Vec::new();
    scaledapp_operator::rotate::request(
        client().await,
        &namespace.name,
        "shop",
        Duration::from_secs(240),
        &mut out,
    )
    .await
    .unwrap_or_else(|error| {
        panic!(
            "rotation: {error}; it printed: {}",
            String::from_utf8_lossy(&out)
        )
    });

    let after = secrets.get("shop-app").await.expect("app secret");
    let new = value(&after, "session-secret").expect("a session secret");
    assert_ne!(new, old, "the signing secret is new");
    assert_eq!(
        value(&after, SESSION_SECRET_PREVIOUS_KEY).as_ref(),
        Some(&old),
        "the old secret is still accepted"
    );
    let deployment = namespace
        .api::<Deployment>()
        .get("shop-app")
        .await
        .expect("app deployment");
    let template = deployment.spec.expect("spec").template;
    let marker = template
        .metadata
        .as_ref()
        .and_then(|meta| meta.annotations.as_ref())
        .and_then(|annotations| annotations.get(SESSION_SECRET_ROTATION_ANNOTATION))
        .cloned()
        .unwrap_or_default();
    assert!(
        marker.ends_with("/signing"),
        "pod template marker {marker:?}"
    );
    let env = template.spec.expect("pod spec").containers[0]
        .env
        .clone()
        .unwrap_or_default();
    let previous = env
        .iter()
        .find(|var| var.name == "SCALED_SESSION_SECRET_PREVIOUS")
        .expect("the previous secret reaches the app");
    let reference = previous
        .value_from
        .as_ref()
        .and_then(|from| from.secret_key_ref.as_ref())
        .expect("from the Secret");
    assert_eq!(reference.key, SESSION_SECRET_PREVIOUS_KEY);
    assert_eq!(reference.optional, Some(true));
    let app = namespace.apps().get("shop").await.expect("scaledapp");
    let status = serde_json::to_string(&app.status).expect("status");
    for secret in [&old, &new] {
        let text = String::from_utf8_lossy(secret);
        assert!(
            !status.contains(text.as_ref()),
            "a secret value is in status"
        );
    }
    let rotation = app
        .status
        .and_then(|status| status.session_secret_rotation)
        .expect("rotation status");
    assert!(rotation.in_progress.is_none());
    assert!(
        rotation
            .last_completed
            .is_some_and(|done| done.completed_at.is_some())
    );
    namespace.delete().await;
}
