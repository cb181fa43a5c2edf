//! Helpers for tests whose pods really run: the local cluster's real node, or kind.
//!
//! They are skipped, saying so, unless `SCALEDAPP_REAL_PODS=1` (set by `e2e/real-pods.sh`,
//! which also installs the operator chart in the cluster and pushes the images). Images and the
//! storage class come from the environment `e2e/cluster/up.sh` exports; on kind the defaults
//! name the images `e2e/kind/up.sh` loads.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use scaledapp_operator::crd::ScaledApp;
use serde_json::{Value, json};

use crate::{TestNamespace, eventually, kubectl};

/// How long a small ScaledApp may take to become Ready on real pods (2-core machine).
pub const REAL_READY_TIMEOUT: Duration = Duration::from_secs(300);

/// An environment variable, or `default`.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// `true` when real pods run; otherwise prints why `test` is skipped.
pub fn real_pods(test: &str) -> bool {
    if std::env::var("SCALEDAPP_REAL_PODS").as_deref() == Ok("1") {
        return true;
    }
    eprintln!(
        "SKIPPED {test}: needs pods that really run (SCALEDAPP_REAL_PODS=1: the local cluster's \
         real node or kind, with the operator chart installed in the cluster; e2e/real-pods.sh \
         sets this up)"
    );
    false
}

/// Whether this is the local cluster's real node (host-side checks are possible: the test runs
/// on the node itself).
pub fn on_local_real_node() -> bool {
    std::env::var("SCALEDAPP_REAL_NODE").as_deref() == Ok("1")
}

/// The namespace the chart's operator runs in.
pub fn operator_namespace() -> String {
    env_or("SCALEDAPP_OPERATOR_NAMESPACE", "scaledapp-system")
}

/// A test namespace whose pods run on the real node when the cluster has one.
pub async fn real_node_namespace(client: &Client, prefix: &str) -> TestNamespace {
    let namespace = TestNamespace::create(client, prefix).await;
    let annotate = match std::env::var("SCALEDAPP_REAL_NODE_NAMESPACE_ANNOTATIONS") {
        Ok(value) => value == "1",
        Err(_) => kubectl(&["get", "nodes", "-l", "scaled.dev/node=real", "-o", "name"])
            .map(|nodes| !nodes.trim().is_empty())
            .unwrap_or(false),
    };
    if annotate {
        Api::<Namespace>::all(client.clone())
            .patch(
                &namespace.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {
                    "scheduler.alpha.kubernetes.io/node-selector": "scaled.dev/node=real",
                    "scheduler.alpha.kubernetes.io/defaultTolerations":
                        "[{\"key\":\"scaled.dev/real-node\",\"operator\":\"Exists\",\"effect\":\"NoSchedule\"}]",
                }}})),
            )
            .await
            .expect("annotate the namespace for the real node");
    }
    namespace
}

/// The shape of a small ScaledApp for real pods.
#[derive(Clone, Debug)]
pub struct Small {
    /// ScaledApp name.
    pub name: &'static str,
    /// Shards.
    pub shards: i32,
    /// Replicas per shard.
    pub replicas_per_shard: i32,
    /// App pods (min = max; no autoscaling unless `autoscaling` says otherwise).
    pub app_pods: i32,
    /// Worker pools (each 1 pod draining both queues) – 0 or 1.
    pub workers: i32,
    /// Commit waits for a replica.
    pub synchronous_replication: bool,
    /// `database.failover`.
    pub failover: Option<Value>,
}

impl Small {
    /// A ScaledApp named `name`: 1 shard with 1 replica, 1 app pod, 1 worker pool.
    pub fn new(name: &'static str) -> Small {
        Small {
            name,
            shards: 1,
            replicas_per_shard: 1,
            app_pods: 1,
            workers: 1,
            synchronous_replication: false,
            failover: None,
        }
    }

    /// The ScaledApp as JSON, images and storage from the environment, small requests.
    pub fn json(&self) -> Value {
        let storage_class = env_or("SCALEDAPP_STORAGE_CLASS", "local-path");
        let small = json!({"requests": {"cpu": "25m", "memory": "48Mi"}});
        let mut database = json!({
            "shards": self.shards,
            "replicasPerShard": self.replicas_per_shard,
            "storage": {"size": "512Mi", "storageClassName": storage_class},
            "pool": {"size": 4, "maxOverflow": 4, "acquireTimeoutMs": 2000},
            "synchronousReplication": self.synchronous_replication,
            "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}},
        });
        if let Some(failover) = &self.failover {
            database["failover"] = failover.clone();
        }
        if let Ok(image) = std::env::var("SCALEDAPP_POSTGRES_IMAGE") {
            database["image"] = image.into();
            if let Ok(bin_dir) = std::env::var("SCALEDAPP_POSTGRES_BINDIR") {
                database["binDir"] = bin_dir.into();
            }
            if let Some(uid) = std::env::var("SCALEDAPP_POSTGRES_UID")
                .ok()
                .and_then(|uid| uid.parse::<i64>().ok())
            {
                database["runAsUser"] = uid.into();
            }
        }
        let mut redis = json!({"maxMemoryMib": 32,
            "persistence": {"enabled": true, "size": "256Mi", "storageClassName": storage_class}});
        if let Ok(image) = std::env::var("SCALEDAPP_REDIS_IMAGE") {
            redis["image"] = image.into();
        }
        let workers: Vec<Value> = (0..self.workers)
            .map(|_| {
                json!({"name": "all", "queues": ["email:send", "analytics:track"],
                       "replicas": {"min": 1, "max": 1}, "concurrency": 4, "resources": small})
            })
            .collect();
        json!({
            "apiVersion": "scaled.dev/v1alpha1",
            "kind": "ScaledApp",
            "metadata": {"name": self.name},
            "spec": {
                "app": {
                    "image": app_image(),
                    "replicas": {"min": self.app_pods, "max": self.app_pods},
                    "resources": small,
                },
                "autoscaling": {"enabled": false},
                "cache": {"redis": redis},
                "database": database,
                "workers": workers,
                "rateLimit": {"requests": 1000, "windowSeconds": 60},
                "sessions": {"cookieSecure": false},
                "dataPolicy": "Delete",
            },
        })
    }

    /// The ScaledApp.
    pub fn scaledapp(&self) -> ScaledApp {
        serde_json::from_value(self.json()).expect("a valid ScaledApp")
    }
}

/// The app image the node can pull.
pub fn app_image() -> String {
    env_or("SCALEDAPP_APP_IMAGE", "localhost/scaled/scaled-app:0.1.0")
}

/// The busybox image the node can pull (client pods).
pub fn busybox_image() -> String {
    env_or("SCALEDAPP_BUSYBOX_IMAGE", "localhost/scaled/busybox:1.37")
}

/// `kubectl exec` in a pod's container; returns stdout.
pub fn exec(namespace: &str, pod: &str, container: &str, command: &[&str]) -> Result<String> {
    let mut args = vec!["exec", "-n", namespace, pod, "-c", container, "--"];
    args.extend_from_slice(command);
    kubectl(&args)
}

/// Runs SQL with psql inside a Postgres pod, as the superuser over the local socket (the only
/// way the superuser may log in); returns unaligned, tuples-only output.
pub fn psql(namespace: &str, pod: &str, database: &str, sql: &str) -> Result<String> {
    let script = format!(
        "export PGPASSWORD=\"$SCALED_SUPERUSER_PASSWORD\"; \
         for dir in /usr/lib/postgresql/*/bin; do PATH=\"$dir:$PATH\"; done; \
         exec psql -X -q -At -v ON_ERROR_STOP=1 -h /var/run/postgresql -U postgres -d {database} -c \"$0\""
    );
    exec(namespace, pod, "postgres", &["sh", "-c", &script, sql])
        .with_context(|| format!("psql in {namespace}/{pod}: {sql}"))
}

/// Runs a shell script in a throwaway busybox pod in `namespace` (on the real node when the
/// namespace is annotated) and returns what it printed. Fails with the pod's log if it fails.
pub async fn client_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    labels: Value,
    script: &str,
) -> Result<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65534,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "client",
                "image": busybox_image(),
                "command": ["sh", "-c", script],
                "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}},
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }))
    .expect("a valid pod");
    let _ = pods
        .delete(name, &kube::api::DeleteParams::default().grace_period(0))
        .await;
    eventually(
        "the previous client pod to be gone",
        Duration::from_secs(60),
        || async { pods.get_opt(name).await.ok()?.is_none().then_some(()) },
    )
    .await;
    pods.create(&Default::default(), &pod)
        .await
        .context("create the client pod")?;
    let phase = eventually(
        &format!("client pod {name} to finish"),
        Duration::from_secs(180),
        || async {
            let pod = pods.get(name).await.ok()?;
            let phase = pod.status?.phase?;
            matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
        },
    )
    .await;
    let log = kubectl(&["logs", "-n", namespace, name])?;
    let _ = pods
        .delete(name, &kube::api::DeleteParams::default().grace_period(0))
        .await;
    if phase != "Succeeded" {
        bail!("client pod {name} failed:\n{log}");
    }
    Ok(log)
}

/// The value of `key` in a Secret in `namespace`.
pub async fn secret_value(client: &Client, namespace: &str, secret: &str, key: &str) -> String {
    let secret: k8s_openapi::api::core::v1::Secret = Api::namespaced(client.clone(), namespace)
        .get(secret)
        .await
        .expect("secret");
    let bytes = secret
        .data
        .and_then(|data| data.get(key).cloned())
        .expect("key in secret");
    String::from_utf8(bytes.0).expect("utf-8 secret")
}
