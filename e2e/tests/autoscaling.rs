//! Autoscaling on the operator's own metrics APIs, on a cluster whose pods really run: the
//! APIServices become Available, both groups serve values for a running ScaledApp, the HPA
//! controller reads them, a request load scales the app up, a queue backlog scales a worker pool
//! up, Redis down leaves the worker HPA at its size with a condition saying why, and both scale
//! back down after the ScaledApp's (shortened) stabilization window.
//!
//! `#[ignore]`d in a plain `cargo test` (reported as ignored, never as passed), and failing without
//! `SCALEDAPP_REAL_PODS=1`: on the local control plane's simulated nodes no pod serves metrics
//! and no Redis holds queues. What the tests expect of the cluster in `KUBECONFIG`:
//! - the chart installed with the operator running **in the cluster** (not
//!   `localOperator.enabled`), `metricsApi` enabled (the default), in `SCALEDAPP_OPERATOR_NAMESPACE`
//!   (default `scaledapp-system`), its pods able to run (on the local cluster: that namespace
//!   annotated for the real node);
//! - API aggregation configured on the API server (front-proxy CA and client certificate);
//! - images the node can pull: `SCALEDAPP_APP_IMAGE` (default
//!   `localhost/scaled/scaled-app:0.1.0`), `SCALEDAPP_REDIS_IMAGE`, `SCALEDAPP_BUSYBOX_IMAGE`, and
//!   Postgres as `SCALEDAPP_POSTGRES_OFFICIAL_LAYOUT_IMAGE` or `SCALEDAPP_POSTGRES_IMAGE` with
//!   `SCALEDAPP_POSTGRES_BINDIR` and `SCALEDAPP_POSTGRES_UID` (up.sh exports these);
//! - a StorageClass the node can write (`SCALEDAPP_STORAGE_CLASS`, default `local-path`);
//! - optionally `SCALEDAPP_REAL_NODE_NAMESPACE_ANNOTATIONS=1` (the default when the real node's
//!   label exists): test namespaces get the annotations that put their pods on the real node.
//!
//! Run: `SCALEDAPP_REAL_PODS=1 KUBECONFIG=... cargo test -p scaled-e2e --test autoscaling --
//! --ignored --test-threads=1 --nocapture` (about 10 to 20 minutes).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use scaled_e2e::real::{Small, env_or, operator_namespace, real_node_namespace, require_real_pods};
use scaled_e2e::*;
use scaledapp_operator::crd::ScaledApp;
use serde_json::{Value, json};

/// Name of the test's ScaledApp.
const APP: &str = "auto";
/// The app HPA's per-pod request target: small, so a busybox load generator exceeds it.
const TARGET_REQUESTS_PER_SECOND: i64 = 5;
/// The worker pool's target backlog per replica.
const TARGET_BACKLOG: i64 = 50;
/// Messages held in the backlog: enough for the pool's maximum.
const HELD_MESSAGES: i64 = 300;
/// The shortened scale-down stabilization window.
const SCALE_DOWN_WINDOW_SECONDS: i64 = 30;
/// Consumer that holds the pushed backlog (never a worker).
const HOLDER: &str = "e2e-holder";

fn metrics_api_service() -> String {
    env_or(
        "SCALEDAPP_METRICS_API_SERVICE",
        "scaledapp-operator-metrics-api",
    )
}

/// The test's ScaledApp: the shared small one (`scaled_e2e::real::Small`: images, storage and
/// requests for the cluster) with one app pod at rest (1..3), one worker pool on `email:send`
/// (1..3), one Postgres shard with one replica, and the scale-down window shortened. Postgres is
/// the image with the official image's layout when there is one (the other real-pod tests use
/// the Debian layout), so both layouts run.
fn scaledapp() -> ScaledApp {
    let mut app = Small {
        replicas_per_shard: 1,
        workers: 0,
        ..Small::new(APP)
    }
    .json();
    let small = json!({"requests": {"cpu": "50m", "memory": "64Mi"}});
    let rules = |window: i64| json!({"stabilizationWindowSeconds": window, "maxPercentPerMinute": 100, "maxPodsPerMinute": 4});
    let spec = &mut app["spec"];
    if let Ok(image) = std::env::var("SCALEDAPP_POSTGRES_OFFICIAL_LAYOUT_IMAGE") {
        let database = spec["database"].as_object_mut().expect("database");
        database.insert("image".into(), image.into());
        database.remove("binDir");
        database.remove("runAsUser");
        if let Some(uid) = std::env::var("SCALEDAPP_POSTGRES_OFFICIAL_LAYOUT_UID")
            .ok()
            .and_then(|uid| uid.parse::<i64>().ok())
        {
            database.insert("runAsUser".into(), uid.into());
        }
    }
    spec["app"]["replicas"] = json!({"min": 1, "max": 3});
    spec["autoscaling"] = json!({
        "targetRequestsPerSecond": TARGET_REQUESTS_PER_SECOND,
        // Latency is served and read, but set high so that only the load moves the HPA.
        "targetResponseTimeMs": 60000,
        "scaleUp": rules(0),
        "scaleDown": rules(SCALE_DOWN_WINDOW_SECONDS),
    });
    spec["workers"] = json!([{
        "name": "email",
        "queues": ["email:send"],
        "replicas": {"min": 1, "max": 3},
        "targetQueueDepthPerReplica": TARGET_BACKLOG,
        "concurrency": 2,
        "resources": small,
    }]);
    serde_json::from_value(app).expect("a valid ScaledApp")
}

/// `kubectl get --raw` as JSON.
fn raw(path: &str) -> Result<Value> {
    let text = kubectl(&["get", "--raw", path])?;
    serde_json::from_str(&text).with_context(|| format!("{path} answered {text}"))
}

/// The error `kubectl get --raw` prints for `path` (which must fail).
fn raw_error(path: &str, extra: &[&str]) -> String {
    let mut args = vec!["get", "--raw", path];
    args.extend_from_slice(extra);
    match kubectl(&args) {
        Ok(body) => panic!("{path} answered instead of failing: {body}"),
        Err(error) => format!("{error:#}"),
    }
}

fn apiservice_available(name: &str) -> Result<bool> {
    let status = kubectl(&[
        "get",
        "apiservice",
        name,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Available\")].status}",
    ])?;
    Ok(status.trim() == "True")
}

async fn replicas(client: &Client, namespace: &str, deployment: &str) -> Result<i32> {
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(deployment)
        .await?;
    Ok(deployment.spec.and_then(|spec| spec.replicas).unwrap_or(1))
}

/// The current value an HPA reports for `metric` (`averageValue`, else `value`).
fn current_value(hpa: &HorizontalPodAutoscaler, metric: &str) -> Option<String> {
    hpa.status
        .as_ref()?
        .current_metrics
        .iter()
        .flatten()
        .find_map(|status| {
            let (name, current) = match (&status.pods, &status.external) {
                (Some(pods), _) => (&pods.metric.name, &pods.current),
                (_, Some(external)) => (&external.metric.name, &external.current),
                _ => return None,
            };
            (name == metric)
                .then(|| current.average_value.clone().or(current.value.clone()))
                .flatten()
                .map(|quantity| quantity.0)
        })
}

/// A quantity as a number (`1500m` -> 1.5).
fn quantity(text: &str) -> f64 {
    match text.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().unwrap_or(f64::NAN) / 1000.0,
        None => text.parse().unwrap_or(f64::NAN),
    }
}

/// Runs a Lua script in the ScaledApp's Redis (redis-cli in its container has the password).
fn redis_eval(namespace: &str, script: &str, keys: &[&str], args: &[&str]) -> Result<String> {
    let pod = format!("{APP}-redis-0");
    let key_count = keys.len().to_string();
    let mut command = vec![
        "exec",
        "-n",
        namespace,
        &pod,
        "-c",
        "redis",
        "--",
        "redis-cli",
        "EVAL",
        script,
        &key_count,
    ];
    command.extend_from_slice(keys);
    command.extend_from_slice(args);
    let output = kubectl(&command)?;
    if output.starts_with("(error)") || output.starts_with("ERR") {
        bail!("redis-cli: {output}");
    }
    Ok(output.trim().to_string())
}

/// Adds `count` messages and hands them all to [`HOLDER`] in one atomic step, so no worker can
/// take them first: a backlog (pending) that stays until released.
const HOLD: &str = r#"
pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], 'scaled-workers', '0', 'MKSTREAM')
for i = 1, tonumber(ARGV[1]) do
  redis.call('XADD', KEYS[1], '*', 'payload', '{"e2e":"held backlog"}')
end
local read = redis.call('XREADGROUP', 'GROUP', 'scaled-workers', ARGV[2], 'COUNT', ARGV[1], 'STREAMS', KEYS[1], '>')
return #read[1][2]
"#;

/// Resets the idle time of the held messages, so the workers' reclaim (after 30 s idle) never
/// takes them.
const KEEP: &str = r#"
local pending = redis.call('XPENDING', KEYS[1], 'scaled-workers', '-', '+', 10000, ARGV[1])
for _, entry in ipairs(pending) do
  redis.call('XCLAIM', KEYS[1], 'scaled-workers', ARGV[1], 0, entry[1], 'JUSTID')
end
return #pending
"#;

/// Acknowledges and deletes the held messages, as a worker would.
const RELEASE: &str = r#"
local pending = redis.call('XPENDING', KEYS[1], 'scaled-workers', '-', '+', 10000, ARGV[1])
for _, entry in ipairs(pending) do
  redis.call('XACK', KEYS[1], 'scaled-workers', entry[1])
  redis.call('XDEL', KEYS[1], entry[1])
end
return #pending
"#;

/// Keeps the held backlog held every 10 s until dropped.
struct Keeper {
    running: Arc<AtomicBool>,
}

impl Keeper {
    fn start(namespace: &str) -> Keeper {
        let running = Arc::new(AtomicBool::new(true));
        let (flag, namespace) = (running.clone(), namespace.to_string());
        std::thread::spawn(move || {
            // Redis is stopped on purpose for a while: say so once, not every 10 s.
            let mut failing = false;
            while flag.load(Ordering::Relaxed) {
                match redis_eval(&namespace, KEEP, &["email:send"], &[HOLDER]) {
                    Err(error) if !failing => {
                        failing = true;
                        let error = format!("{error:#}");
                        eprintln!(
                            "keeping the backlog held failed (Redis down?), retrying every 10 s: {}",
                            error.lines().last().unwrap_or_default()
                        );
                    }
                    Err(_) => {}
                    Ok(_) if failing => {
                        failing = false;
                        eprintln!("keeping the backlog held again");
                    }
                    Ok(_) => {}
                }
                std::thread::sleep(Duration::from_secs(10));
            }
        });
        Keeper { running }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
    }
}

/// A busybox pod that GETs the app's Service in `loops` parallel shell loops.
fn load_generator(namespace: &str, loops: u32) -> Pod {
    let url = format!("http://{APP}-app.{namespace}.svc/health");
    let script = format!(
        "for i in $(seq {loops}); do (while true; do wget -q -O /dev/null {url} || sleep 0.2; done) & done; wait"
    );
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "load"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65534, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "load",
                "image": env_or("SCALEDAPP_BUSYBOX_IMAGE", "localhost/scaled/busybox:1.37"),
                "command": ["sh", "-c", script],
                "resources": {"requests": {"cpu": "100m", "memory": "16Mi"}},
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }))
    .expect("a valid pod")
}

/// The operator's metrics API asked directly (through a port-forward to its Service), with no
/// client certificate and no token: the HTTP status and the JSON body. Every way this can fail
/// to ask is an error, never a silent pass.
fn unauthenticated_status(path: &str) -> Result<(u16, Value), String> {
    Command::new("curl")
        .arg("--version")
        .output()
        .map_err(|error| {
            format!("curl cannot run ({error}): scripts/install-deps.sh installs it")
        })?;
    let binary = env_or("SCALEDAPP_KUBECTL", "kubectl");
    let mut forward = Command::new(&binary)
        .args([
            "port-forward",
            "-n",
            &operator_namespace(),
            &format!("svc/{}", metrics_api_service()),
            ":443",
        ])
        .env("KUBECONFIG", kubeconfig())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| format!("{binary} port-forward does not start: {error}"))?;
    let mut line = String::new();
    {
        use std::io::BufRead;
        let stdout = forward.stdout.take().expect("piped");
        let mut reader = std::io::BufReader::new(stdout);
        let _ = reader.read_line(&mut line);
        // Keep reading what it prints ("Handling connection for ..."): a closed pipe would
        // kill kubectl at its next line, before curl's connection is forwarded (which is what
        // made this check see HTTP 0).
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    }
    // "Forwarding from 127.0.0.1:PORT -> 6443"
    let result = (|| {
        let port = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or_else(|| format!("port-forward printed no local port: {line:?}"))?;
        // The first connections through a fresh port-forward may fail while it opens its
        // stream to the pod (the smoke test's port-forward check retries the same way).
        let mut attempts = 0;
        let (output, text) = loop {
            attempts += 1;
            let output = Command::new("curl")
                .args([
                    "-sSk",
                    "--max-time",
                    "10",
                    "-w",
                    "\n%{http_code}",
                    &format!("https://127.0.0.1:{port}{path}"),
                ])
                .output()
                .map_err(|error| format!("curl failed: {error}"))?;
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            if output.status.success() || attempts == 10 {
                break (output, text);
            }
            eprintln!(
                "curl through the port-forward failed (attempt {attempts}): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            std::thread::sleep(std::time::Duration::from_secs(1));
        };
        let (body, code) = text
            .rsplit_once('\n')
            .ok_or_else(|| format!("curl printed no status line: {text:?}"))?;
        let code = code
            .trim()
            .parse()
            .map_err(|_| format!("not an HTTP status: {code:?} (curl exit {})", output.status))?;
        if !output.status.success() {
            return Err(format!(
                "curl failed {attempts} times through the port-forward: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        let body = serde_json::from_str(body).map_err(|error| {
            format!("HTTP {code} with a body that is not JSON ({error}): {body}")
        })?;
        Ok((code, body))
    })();
    let _ = forward.kill();
    let _ = forward.wait();
    result
}

#[tokio::test]
#[ignore = "needs pods that really run: e2e/real-pods.sh runs it"]
async fn the_metrics_apiservices_are_available_and_refuse_bad_input_with_statuses() {
    require_real_pods();
    for name in [
        "v1beta2.custom.metrics.k8s.io",
        "v1beta1.external.metrics.k8s.io",
    ] {
        eventually(
            &format!("APIService {name} Available=True"),
            Duration::from_secs(180),
            || async { Ok(apiservice_available(name)?.then_some(())) },
        )
        .await;
    }
    let custom = raw("/apis/custom.metrics.k8s.io/v1beta2").expect("discovery");
    assert!(
        custom.to_string().contains("pods/http_requests_per_second"),
        "{custom}"
    );
    let external = raw("/apis/external.metrics.k8s.io/v1beta1").expect("discovery");
    assert!(
        external.to_string().contains("scaledapp_queue_depth"),
        "{external}"
    );

    // Unknown metric, unknown namespace: 404 metav1.Status (kubectl prints its reason).
    for (path, says) in [
        (
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/no_such_metric",
            "not served",
        ),
        (
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/no_such_metric",
            "not served",
        ),
        (
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/e2e-no-such-namespace/scaledapp_queue_depth",
            "no ScaledApp",
        ),
    ] {
        let error = raw_error(path, &[]);
        assert!(
            error.contains("NotFound") && error.contains(says),
            "{path}: {error}"
        );
    }

    // A caller without access gets 403, never data.
    let error = raw_error(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/scaledapp_queue_depth",
        &["--as=system:serviceaccount:default:e2e-nobody"],
    );
    assert!(error.contains("Forbidden"), "{error}");

    // Straight to the operator's Service, no certificate, no token: 401 metav1.Status.
    let (code, body) = unauthenticated_status(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/scaledapp_queue_depth",
    )
    .unwrap_or_else(|why| panic!("the unauthenticated request was not made: {why}"));
    assert_eq!(code, 401, "{body}");
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["reason"], "Unauthorized", "{body}");
}

#[tokio::test]
#[ignore = "needs pods that really run: e2e/real-pods.sh runs it"]
async fn load_and_backlog_each_move_an_hpa_on_the_operators_own_metrics() {
    require_real_pods();
    let client = client().await;
    let namespace = real_node_namespace(&client, "autoscale").await;
    let ns = namespace.name.clone();
    namespace
        .apps()
        .create(&PostParams::default(), &scaledapp())
        .await
        .expect("ScaledApp accepted");
    wait_ready(&namespace.apps(), APP, Duration::from_secs(900)).await;
    // The shard, from whichever image layout this run uses, replicates.
    let primary = namespace
        .apps()
        .get(APP)
        .await
        .expect("app")
        .status
        .and_then(|status| {
            status
                .shards
                .first()
                .and_then(|shard| shard.primary_pod.clone())
        })
        .expect("a recorded primary");
    eventually("the replica to stream", Duration::from_secs(60), || async {
        let count = scaled_e2e::real::psql(
            &ns,
            &primary,
            "postgres",
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        )?;
        Ok((count.trim() == "1").then_some(()))
    })
    .await;
    let app_deployment = format!("{APP}-app");
    let worker_deployment = format!("{APP}-worker-email");
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns);

    // 1. Both groups serve values for the running ScaledApp.
    let pods_path = format!(
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/*/http_requests_per_second?labelSelector=app.kubernetes.io%2Finstance%3D{APP}%2Capp.kubernetes.io%2Fcomponent%3Dapp"
    );
    let served = eventually(
        "a requests/s value per app pod (after two scrapes)",
        Duration::from_secs(120),
        || async {
            let list = raw(&pods_path)?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            Ok((!items.is_empty()).then_some(items))
        },
    )
    .await;
    assert_eq!(served[0]["describedObject"]["kind"], "Pod");
    let backlog_path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/scaledapp_queue_depth?labelSelector=scaledapp%3D{APP}%2Cqueue%3Demail.send"
    );
    let backlog = raw(&backlog_path).expect("the backlog is served");
    assert_eq!(backlog["items"][0]["value"], "0", "{backlog}");
    assert_eq!(
        backlog["items"][0]["metricLabels"],
        json!({"scaledapp": APP, "queue": "email.send"})
    );

    // 2. The HPA controller reads them: status.currentMetrics shows the served values.
    eventually(
        "the app HPA's currentMetrics show http_requests_per_second",
        Duration::from_secs(120),
        || async {
            let hpa = hpas.get(&app_deployment).await?;
            Ok(current_value(&hpa, "http_requests_per_second"))
        },
    )
    .await;
    eventually(
        "the worker HPA's currentMetrics show scaledapp_queue_depth",
        Duration::from_secs(120),
        || async {
            let hpa = hpas.get(&worker_deployment).await?;
            Ok(current_value(&hpa, "scaledapp_queue_depth"))
        },
    )
    .await;

    // 3. A request load past the per-pod target scales the app up.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &load_generator(&ns, 6))
        .await
        .expect("load generator created");
    let seen = eventually(
        "the app HPA scales up on requests/s",
        Duration::from_secs(300),
        || async {
            let hpa = hpas.get(&app_deployment).await?;
            let value = current_value(&hpa, "http_requests_per_second");
            let replicas = replicas(&client, &ns, &app_deployment).await?;
            Ok((replicas > 1).then_some((replicas, value)))
        },
    )
    .await;
    eprintln!(
        "app scaled to {} at {:?} requests/s per pod",
        seen.0, seen.1
    );
    pods.delete("load", &DeleteParams::background())
        .await
        .expect("load generator deleted");
    if apiservice_available("v1beta1.metrics.k8s.io").unwrap_or(false) {
        eventually(
            "the app scales back down after the stabilization window",
            Duration::from_secs(300),
            || async { Ok((replicas(&client, &ns, &app_deployment).await? == 1).then_some(())) },
        )
        .await;
    } else {
        eprintln!(
            "app scale-down not checked: no metrics-server, so the app HPA's CPU metric is missing \
             and the HPA refuses to scale down on incomplete metrics (by design)"
        );
    }

    // 4. A pushed backlog scales the worker pool up.
    let held = redis_eval(
        &ns,
        HOLD,
        &["email:send"],
        &[&HELD_MESSAGES.to_string(), HOLDER],
    )
    .expect("backlog pushed");
    assert_eq!(held, HELD_MESSAGES.to_string());
    let keeper = Keeper::start(&ns);
    eventually(
        "the worker pool scales up on the backlog",
        Duration::from_secs(300),
        || async { Ok((replicas(&client, &ns, &worker_deployment).await? == 3).then_some(())) },
    )
    .await;
    let hpa = hpas.get(&worker_deployment).await.expect("worker HPA");
    let value = current_value(&hpa, "scaledapp_queue_depth").expect("a current value");
    assert!(
        quantity(&value) >= (HELD_MESSAGES / 3) as f64,
        "served backlog per replica {value}"
    );

    // 5. Redis down: an error the HPA shows as a condition, and the pool keeps its size.
    namespace
        .apps()
        .patch(
            APP,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": true}})),
        )
        .await
        .expect("paused");
    kubectl(&[
        "scale",
        "-n",
        &ns,
        "statefulset",
        &format!("{APP}-redis"),
        "--replicas=0",
    ])
    .expect("Redis stopped");
    let condition = eventually(
        "the worker HPA reports it cannot get the metric",
        Duration::from_secs(180),
        || async {
            let hpa = hpas.get(&worker_deployment).await?;
            Ok(hpa
                .status
                .and_then(|status| status.conditions)
                .into_iter()
                .flatten()
                .find(|condition| {
                    condition.type_ == "ScalingActive"
                        && condition.status == "False"
                        && condition.reason.as_deref() == Some("FailedGetExternalMetric")
                }))
        },
    )
    .await;
    eprintln!("worker HPA while Redis is down: {:?}", condition.message);
    let error = raw_error(&backlog_path, &[]);
    assert!(error.contains("ServiceUnavailable"), "{error}");
    tokio::time::sleep(Duration::from_secs(
        2 * SCALE_DOWN_WINDOW_SECONDS as u64 + 15,
    ))
    .await;
    assert_eq!(
        replicas(&client, &ns, &worker_deployment)
            .await
            .expect("read"),
        3,
        "missing data must not scale the pool to its minimum"
    );

    // 6. Redis back, backlog released: both drop, and the pool scales down after the window.
    namespace
        .apps()
        .patch(
            APP,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await
        .expect("unpaused");
    eventually("Redis back", Duration::from_secs(180), || async {
        Ok(raw(&backlog_path).ok().map(|_| ()))
    })
    .await;
    drop(keeper);
    // Held messages that survived the restart are released; any a worker reclaimed meanwhile
    // are dead-lettered by it (they are not real e-mails).
    let _ = redis_eval(&ns, RELEASE, &["email:send"], &[HOLDER]);
    eventually(
        "the worker pool scales back down after the stabilization window",
        Duration::from_secs(300),
        || async { Ok((replicas(&client, &ns, &worker_deployment).await? == 1).then_some(())) },
    )
    .await;
    let backlog = raw(&backlog_path).expect("the backlog is served");
    assert_eq!(backlog["items"][0]["value"], "0", "{backlog}");

    namespace.delete().await;
}
