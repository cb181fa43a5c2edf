//! Helpers for tests whose pods really run: the local cluster's real node, or kind.
//!
//! They are `#[ignore]`d in a plain `cargo test` (reported as ignored, never passed) and fail
//! when run without `SCALEDAPP_REAL_PODS=1` (set by `e2e/real-pods.sh`, which also installs the
//! operator chart in the cluster, pushes the images and runs them with `--ignored`). Images and the
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

/// Fails the test unless real pods run (`SCALEDAPP_REAL_PODS=1`, which `e2e/real-pods.sh` sets
/// after installing the operator chart in the cluster and pushing the images): run with
/// `--ignored` anywhere else, a real-pod test must not pass without having run.
pub fn require_real_pods() {
    assert!(
        std::env::var("SCALEDAPP_REAL_PODS").as_deref() == Ok("1"),
        "this test needs pods that really run (SCALEDAPP_REAL_PODS=1: the local cluster's real \
         node or kind, with the operator chart installed in the cluster); run it through \
         e2e/real-pods.sh"
    );
}

/// Whether a host-side part (`what`) of a test can run: only on the local real node, where the
/// test runs on the node itself. Elsewhere the test fails, unless `SCALEDAPP_HOST_SIDE_CHECKS=0`
/// says to leave those parts out (kind: the node is a container): then it prints `SKIP` (which
/// `make test`'s stage summary counts) and the caller leaves the part out.
pub fn host_side_part(what: &str) -> bool {
    if on_local_real_node() {
        return true;
    }
    assert!(
        std::env::var("SCALEDAPP_HOST_SIDE_CHECKS").as_deref() == Ok("0"),
        "{what} needs the local real node (the test cuts a pod off from the API server from the \
         host); set SCALEDAPP_HOST_SIDE_CHECKS=0 to leave it out on other clusters"
    );
    eprintln!("SKIP {what}: not the local real node (SCALEDAPP_HOST_SIDE_CHECKS=0)");
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
        || async { Ok(pods.get_opt(name).await?.is_none().then_some(())) },
    )
    .await;
    pods.create(&Default::default(), &pod)
        .await
        .context("create the client pod")?;
    let phase = eventually(
        &format!("client pod {name} to finish"),
        Duration::from_secs(180),
        || async {
            let pod = pods.get(name).await?;
            let phase = pod
                .status
                .and_then(|status| status.phase)
                .unwrap_or_default();
            Ok(matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase))
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

/// What a [`Writer`] saw: every id whose commit was acknowledged, with when.
#[derive(Debug, Default)]
pub struct Written {
    /// Acknowledged ids in order, with the time of the acknowledgement.
    pub acknowledged: Vec<(i64, std::time::Instant)>,
    /// When attempts failed (connection refused, read-only, fenced, ...).
    pub failures: Vec<std::time::Instant>,
    /// The failures the server's side answered: a refused connection (the address is reachable,
    /// nothing listens) or a Postgres error. Timeouts are not among them: a cut network or an
    /// absent pod answers nothing.
    pub refusals: Vec<std::time::Instant>,
}

/// Whether a failed attempt was answered (refused) rather than left unanswered.
fn answered(error: &tokio_postgres::Error) -> bool {
    if error.as_db_error().is_some() {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        source = current.source();
    }
    false
}

impl Written {
    /// The outage a kill at `kill_started` caused, as the client saw it: from its first failed
    /// attempt at or after the kill to its first acknowledged commit after its last failure.
    /// Not from the kill itself: backends of a killed postmaster can still acknowledge commits
    /// for a moment, which made a kill-to-first-ack clock read 0.0 s. `None` when the client
    /// never failed after the kill (nothing was measured) or never wrote again.
    pub fn outage_after(&self, kill_started: std::time::Instant) -> Option<Duration> {
        let first = *self.failures.iter().find(|at| **at >= kill_started)?;
        let last = *self.failures.last()?;
        let resumed = self
            .acknowledged
            .iter()
            .map(|(_, at)| *at)
            .find(|at| *at > last)?;
        Some(resumed.duration_since(first))
    }

    /// The write pause the failures fall in: from the last acknowledged commit before the first
    /// failure to the first one after the last failure (`None` without failures, or when no
    /// commit came after them). Failures spread over a long time give a long pause.
    pub fn failure_window(&self) -> Option<(std::time::Instant, Duration)> {
        let first = *self.failures.first()?;
        let last = *self.failures.last()?;
        let start = self
            .acknowledged
            .iter()
            .rev()
            .map(|(_, at)| *at)
            .find(|at| *at < first)
            .unwrap_or(first);
        let end = self
            .acknowledged
            .iter()
            .map(|(_, at)| *at)
            .find(|at| *at > last)?;
        Some((start, end.duration_since(start)))
    }

    /// The longest time between two acknowledged commits, and when it started.
    pub fn longest_pause(&self) -> (Duration, Option<std::time::Instant>) {
        self.acknowledged
            .windows(2)
            .map(|pair| (pair[1].1.duration_since(pair[0].1), Some(pair[0].1)))
            .max_by_key(|(gap, _)| *gap)
            .unwrap_or((Duration::ZERO, None))
    }
}

/// A test client committing numbered rows, one per transaction, into `e2e_writes` through a
/// Postgres address (the shard's `-primary` Service), reconnecting after every failure.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acknowledged: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    last_ack: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    last_failure: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    task: tokio::task::JoinHandle<Written>,
}

impl Writer {
    /// Creates the table if needed and starts writing.
    pub async fn start(host: String, port: u16, password: String) -> Writer {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let last_ack = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = last_ack.clone();
        let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = acknowledged.clone();
        let last_failure = std::sync::Arc::new(std::sync::Mutex::new(None));
        let failed = last_failure.clone();
        let config = format!(
            "host={host} port={port} user=app dbname=app password={password} connect_timeout=2"
        );
        let task = tokio::spawn(async move {
            let mut written = Written::default();
            let mut client: Option<tokio_postgres::Client> = None;
            let mut next = 1_i64;
            while !flag.load(Ordering::Relaxed) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    match tokio_postgres::connect(&config, tokio_postgres::NoTls).await {
                        Ok((connected, connection)) => {
                            tokio::spawn(connection);
                            let _ = connected
                                .batch_execute(
                                    "CREATE TABLE IF NOT EXISTS e2e_writes (id bigint PRIMARY KEY)",
                                )
                                .await;
                            client = Some(connected);
                        }
                        Err(error) => {
                            let now = std::time::Instant::now();
                            written.failures.push(now);
                            *failed.lock().expect("not poisoned") = Some(now);
                            if answered(&error) {
                                written.refusals.push(now);
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    }
                }
                let id = next;
                let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
                let insert = client.as_ref().expect("connected").execute(
                    "INSERT INTO e2e_writes VALUES ($1) ON CONFLICT DO NOTHING",
                    &parameters,
                );
                match tokio::time::timeout(Duration::from_secs(5), insert).await {
                    Ok(Ok(_)) => {
                        let now = std::time::Instant::now();
                        *seen.lock().expect("not poisoned") = Some(now);
                        written.acknowledged.push((next, now));
                        counted.fetch_add(1, Ordering::Relaxed);
                        next += 1;
                    }
                    outcome => {
                        // Unknown outcome or refused: retry the same id on a new connection (the
                        // insert is idempotent); only acknowledged ids count.
                        let now = std::time::Instant::now();
                        written.failures.push(now);
                        *failed.lock().expect("not poisoned") = Some(now);
                        if matches!(&outcome, Ok(Err(error)) if answered(error)) {
                            written.refusals.push(now);
                        }
                        client = None;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            written
        });
        Writer {
            stop,
            acknowledged,
            last_ack,
            last_failure,
            task,
        }
    }

    /// Waits until a commit is acknowledged after `after`.
    pub async fn wait_for_a_write_after(&self, after: std::time::Instant, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self
                .last_ack
                .lock()
                .expect("not poisoned")
                .is_some_and(|at| at > after)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no write was acknowledged within {timeout:?}");
    }

    /// Waits until the writer has recovered: a commit acknowledged after its last failure (an
    /// insert can still be waiting out its 5 s timeout when the fault is over; stopping before
    /// its retry is acknowledged leaves a failure with no commit after it).
    pub async fn wait_for_recovery(&self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            let ack = *self.last_ack.lock().expect("not poisoned");
            let failure = *self.last_failure.lock().expect("not poisoned");
            if ack.is_some_and(|ack| failure.is_none_or(|failure| ack > failure)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no write was acknowledged after the last failure within {timeout:?}");
    }

    /// Waits until at least `count` commits have been acknowledged since the writer started.
    pub async fn wait_for_acknowledged(&self, count: usize, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.acknowledged.load(std::sync::atomic::Ordering::Relaxed) >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("fewer than {count} writes were acknowledged within {timeout:?}");
    }

    /// Stops writing and returns what was acknowledged.
    pub async fn stop(self) -> Written {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("writer task")
    }
}

/// The ClusterIP of a Service.
pub async fn cluster_ip(client: &Client, namespace: &str, service: &str) -> String {
    let service: k8s_openapi::api::core::v1::Service = Api::namespaced(client.clone(), namespace)
        .get(service)
        .await
        .expect("service");
    service
        .spec
        .and_then(|spec| spec.cluster_ip)
        .expect("a ClusterIP")
}

/// Ids present in `e2e_writes` on a shard pod (read with psql in the pod).
pub fn stored_ids(namespace: &str, pod: &str) -> Result<std::collections::BTreeSet<i64>> {
    let rows = psql(namespace, pod, "app", "SELECT id FROM e2e_writes")?;
    Ok(rows
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect())
}

/// The network namespace (as `ip netns` names it) holding `pod_ip`, on the local real node.
fn netns_of(pod_ip: &str) -> Result<String> {
    let namespaces = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    let namespaces = String::from_utf8_lossy(&namespaces.stdout).into_owned();
    Ok(namespaces
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .find(|netns| {
            std::process::Command::new("ip")
                .args(["-n", netns, "-4", "-o", "addr", "show"])
                .output()
                .map(|out| {
                    String::from_utf8_lossy(&out.stdout).contains(&format!("inet {pod_ip}/"))
                })
                .unwrap_or(false)
        })
        .with_context(|| format!("no network namespace holds {pod_ip}"))?
        .to_string())
}

/// Cuts (or restores) all of a pod's network but its loopback, from inside its network
/// namespace: nothing reaches it and it reaches nothing, while its processes run on and its exec
/// probes pass. Only on the local real node.
pub fn cut_off_network(pod_ip: &str, cut: bool) -> Result<()> {
    let netns = netns_of(pod_ip)?;
    let action = if cut { "-I" } else { "-D" };
    for chain in [["INPUT", "-i"], ["OUTPUT", "-o"]] {
        let status = std::process::Command::new("ip")
            .args([
                "netns", "exec", &netns, "iptables", action, chain[0], "!", chain[1], "lo", "-j",
                "DROP",
            ])
            .status()?;
        if !status.success() {
            bail!("iptables {action} {} in {netns} failed", chain[0]);
        }
    }
    Ok(())
}

/// SIGKILLs the process named `command` (as `/proc/<pid>/comm` has it) running in the pod with
/// uid `pod_uid`, from the host: a container's main process ignores signals sent from inside
/// its own PID namespace. Only on the local real node. Returns the host PID killed.
pub fn kill_in_pod(pod_uid: &str, command: &str) -> Result<i32> {
    let underscored = pod_uid.replace('-', "_");
    for entry in std::fs::read_dir("/proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != command {
            continue;
        }
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if cgroup.contains(pod_uid) || cgroup.contains(&underscored) {
            let status = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()?;
            if !status.success() {
                bail!("kill -9 {pid} failed");
            }
            return Ok(pid);
        }
    }
    bail!("no {command} process in pod {pod_uid}")
}

/// Cuts (or restores) a pod's access to the API server, from inside its network namespace, while
/// everything else still reaches it. Only on the local real node, where the test runs on the node.
pub fn cut_off_from_api_server(pod_ip: &str, cut: bool) -> Result<()> {
    let netns = netns_of(pod_ip)?;
    // The pod reaches the API server as the kubernetes Service (10.96.0.1:443, translated
    // outside its namespace); drop what it sends there, both before and after translation.
    let api = kubectl(&[
        "get",
        "endpoints",
        "kubernetes",
        "-n",
        "default",
        "-o",
        "jsonpath={.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port}",
    ])?;
    let (api_ip, api_port) = api.trim().split_once(':').context("API endpoint")?;
    for (address, port) in [("10.96.0.1", "443"), (api_ip, api_port)] {
        let action = if cut { "-I" } else { "-D" };
        let status = std::process::Command::new("ip")
            .args([
                "netns", "exec", &netns, "iptables", action, "OUTPUT", "-d", address, "-p", "tcp",
                "--dport", port, "-j", "DROP",
            ])
            .status()?;
        if !status.success() && cut {
            bail!("iptables {action} in {netns} failed");
        }
    }
    Ok(())
}
