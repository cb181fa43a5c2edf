//! The stack on pods that really run (the local cluster's real node, or kind): a ScaledApp with
//! 2 shards x 1 replica, 2 app pods and a worker pool becomes Ready with every init container and
//! probe really run; replication is real; the app serves through its Service and DNS from a pod;
//! NetworkPolicies isolate Postgres and Redis; deleted pods come back without losing data; and
//! a changed runtime setting (the rate limit) reaches the running app; and a ScaledApp deleted
//! under `dataPolicy: Retain` finds its data when re-created.
//!
//! `#[ignore]`d in a plain `cargo test` (reported as ignored, never as passed); `e2e/real-pods.sh`
//! runs them with `--ignored` and `SCALEDAPP_REAL_PODS=1`, without which they fail.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use scaled_e2e::real::*;
use scaled_e2e::*;
use serde_json::{Value, json};

const APP: &str = "shop";
const PASSWORD: &str = "correct horse battery staple";

fn shop() -> Small {
    Small {
        shards: 2,
        replicas_per_shard: 1,
        app_pods: 2,
        // The flow deletes a primary pod: fail over after 5 s rather than the default.
        failover: Some(json!({"delaySeconds": 5})),
        ..Small::new(APP)
    }
}

/// Signs a user up, reads it twice, signs in and places an order, all through the app's
/// Service by its DNS name from a pod in the cluster; prints what it got.
fn app_flow(namespace: &str, email: &str) -> String {
    format!(
        r#"set -e
base=http://{APP}-app.{namespace}.svc
json='Content-Type: application/json'
user=$(wget -q -O - --header "$json" --post-data '{{"name":"Real","email":"{email}","password":"{PASSWORD}"}}' $base/api/users)
echo "USER $user"
id=$(echo "$user" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
echo "FIRST $(wget -q -O - $base/api/users/$id)"
echo "SECOND $(wget -q -O - $base/api/users/$id)"
cookie=$(wget -S -q -O /dev/null --header "$json" --post-data '{{"email":"{email}","password":"{PASSWORD}"}}' $base/api/sessions 2>&1 | sed -n 's/.*[Ss]et-[Cc]ookie: \([^;]*\).*/\1/p' | head -n 1)
[ -n "$cookie" ] || {{ echo "no session cookie"; exit 1; }}
echo "ORDER $(wget -q -O - --header "$json" --header "Cookie: $cookie" --post-data '{{"items":[{{"sku":"book","quantity":2}}],"total":30.5}}' $base/api/orders)"
"#
    )
}

/// The JSON after `label ` in a client pod's output.
fn field(output: &str, label: &str) -> Value {
    let line = output
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{label} ")))
        .unwrap_or_else(|| panic!("no {label} line in:\n{output}"));
    serde_json::from_str(line).unwrap_or_else(|error| panic!("{label}: {error}: {line}"))
}

async fn pods(namespace: &TestNamespace) -> Vec<Pod> {
    namespace
        .api::<Pod>()
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={APP}")))
        .await
        .expect("pods")
        .items
}

/// Every pod of the ScaledApp runs on a node whose kubelet really ran it: its init containers
/// exited 0 and every container passed its readiness probe.
async fn every_pod_really_ran(namespace: &TestNamespace) {
    let pods = pods(namespace).await;
    // 2 app pods, 2 shards of a primary and a replica, Redis, one worker.
    let expected = 2 + 2 * 2 + 1 + 1;
    assert!(pods.len() >= expected, "{} pods", pods.len());
    for pod in &pods {
        let name = pod.name_any();
        let status = pod.status.clone().expect("status");
        assert_eq!(status.phase.as_deref(), Some("Running"), "{name}");
        for init in status.init_container_statuses.iter().flatten() {
            let exit = init
                .state
                .as_ref()
                .and_then(|state| state.terminated.as_ref())
                .map(|terminated| terminated.exit_code);
            assert_eq!(
                exit,
                Some(0),
                "{name}: init container {} did not exit 0",
                init.name
            );
        }
        for container in status.container_statuses.iter().flatten() {
            assert!(container.ready, "{name}: {} not ready", container.name);
            assert!(
                container
                    .state
                    .as_ref()
                    .and_then(|s| s.running.as_ref())
                    .is_some(),
                "{name}: {} not running",
                container.name
            );
        }
        // Pinned by digest, and run by digest: the runtime's image ID names the digest the
        // pod spec asked for (a tag can be moved; a digest cannot).
        let statuses = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten());
        let spec = pod.spec.as_ref().expect("spec");
        let asked: BTreeMap<&str, &str> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .filter_map(|container| Some((container.name.as_str(), container.image.as_deref()?)))
            .collect();
        for container in statuses {
            let digest = asked
                .get(container.name.as_str())
                .and_then(|image| image.split_once('@'))
                .map(|(_, digest)| digest);
            if let Some(digest) = digest {
                assert!(
                    container.image_id.ends_with(&format!("@{digest}")),
                    "{name}: {} asked for {digest} but runs {}",
                    container.name,
                    container.image_id
                );
            }
        }
        let component = pod
            .labels()
            .get("app.kubernetes.io/component")
            .cloned()
            .unwrap_or_default();
        if on_local_real_node() && matches!(component.as_str(), "app" | "worker") {
            let image = &pod.spec.as_ref().expect("spec").containers[0].image;
            assert!(
                image
                    .as_deref()
                    .is_some_and(|image| image.contains("@sha256:")),
                "{name}: the app image is not pinned by digest: {image:?}"
            );
        }
        if on_local_real_node() {
            let node = pod.spec.as_ref().and_then(|spec| spec.node_name.clone());
            assert_eq!(
                node.as_deref(),
                Some("scaledapp-real"),
                "{name} is not on the real node"
            );
        }
    }
}

/// `(primary, replica)` pod names of `shard`, from the status the instance managers obey.
async fn roles(namespace: &TestNamespace, shard: usize) -> (String, String) {
    let app = namespace.apps().get(APP).await.expect("scaledapp");
    let status = app.status.expect("status");
    let shard = &status.shards[shard];
    let primary = shard.primary_pod.clone().expect("a recorded primary");
    let replica = shard
        .instances
        .iter()
        .map(|instance| instance.pod.clone())
        .find(|pod| *pod != primary)
        .expect("a replica");
    (primary, replica)
}

/// Replication is real: the primary's `pg_stat_replication` shows its replica streaming from
/// its own slot, and a row written on the primary is read on the replica.
async fn replication_is_real(namespace: &TestNamespace) {
    for shard in 0..2 {
        let (primary, replica) = roles(namespace, shard).await;
        let streaming = eventually(
            &format!("{replica} to stream from {primary}"),
            Duration::from_secs(120),
            || async {
                let rows = psql(
                    &namespace.name,
                    &primary,
                    "postgres",
                    "SELECT application_name || ' ' || state || ' ' || coalesce(s.slot_name, '') \
                     FROM pg_stat_replication r LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid",
                )?;
                Ok(rows
                    .lines()
                    .any(|line| line.starts_with(&format!("{replica} streaming ")))
                    .then_some(rows))
            },
        )
        .await;
        assert!(
            streaming.contains(&replica.replace('-', "_")),
            "the replica streams through its own slot: {streaming}"
        );
        let marker = format!("written on {primary}");
        psql(
            &namespace.name,
            &primary,
            "app",
            &format!(
                "CREATE TABLE IF NOT EXISTS e2e_replication (note text); \
                 INSERT INTO e2e_replication VALUES ('{marker}')"
            ),
        )
        .expect("write on the primary");
        eventually(
            &format!("the row to reach {replica}"),
            Duration::from_secs(60),
            || async {
                let rows = psql(
                    &namespace.name,
                    &replica,
                    "app",
                    "SELECT note FROM e2e_replication",
                )?;
                Ok(rows.contains(&marker).then_some(()))
            },
        )
        .await;
    }
}

/// Sums a counter family over every app pod's `/metrics`, fetched from a pod in the cluster.
async fn app_metric(client: &kube::Client, namespace: &TestNamespace, family: &str) -> u64 {
    let ips: Vec<String> = pods(namespace)
        .await
        .iter()
        .filter(|pod| {
            pod.labels()
                .get("app.kubernetes.io/component")
                .map(String::as_str)
                == Some("app")
        })
        .filter_map(|pod| pod.status.as_ref()?.pod_ip.clone())
        .collect();
    let script = ips
        .iter()
        .map(|ip| format!("wget -q -O - http://{ip}:9090/metrics"))
        .collect::<Vec<_>>()
        .join("; ");
    let metrics = client_pod(client, &namespace.name, "metrics", json!({}), &script)
        .await
        .expect("scrape the app pods");
    counter_total(&metrics, family)
}

async fn wait_for_worker_effect(namespace: &TestNamespace, order: i64) {
    eventually(
        "the worker to send the order's confirmation",
        Duration::from_secs(120),
        || async {
            for shard in 0..2 {
                let (primary, _) = roles(namespace, shard).await;
                let sent = psql(
                    &namespace.name,
                    &primary,
                    "app",
                    &format!("SELECT count(*) FROM sent_emails WHERE order_id = {order}"),
                )?;
                if sent.trim() == "1" {
                    return Ok(Some(()));
                }
            }
            Ok(None)
        },
    )
    .await;
}

/// A user created earlier is still there, read through the Service.
async fn user_is_still_there(client: &kube::Client, namespace: &TestNamespace, id: i64) {
    let script = format!(
        "wget -q -O - http://{APP}-app.{}.svc/api/users/{id}",
        namespace.name
    );
    let output = eventually(
        "the user to be readable",
        Duration::from_secs(120),
        || async {
            client_pod(client, &namespace.name, "reader", json!({}), &script)
                .await
                .map(Some)
        },
    )
    .await;
    let user: Value = serde_json::from_str(output.trim()).expect("user JSON");
    assert_eq!(user["id"], id, "{output}");
}

/// The shard whose primary holds user `id`, asked of every primary (not computed, so a wrong
/// slot rule cannot hide here).
async fn user_shard(namespace: &TestNamespace, id: i64) -> usize {
    let mut holders = Vec::new();
    for shard in 0..2 {
        let (primary, _) = roles(namespace, shard).await;
        let count = psql(
            &namespace.name,
            &primary,
            "app",
            &format!("SELECT count(*) FROM users WHERE id = {id}"),
        )
        .expect("count the user's rows");
        if count.trim() == "1" {
            holders.push(shard);
        }
    }
    assert_eq!(
        holders.len(),
        1,
        "user {id} is on exactly one shard: {holders:?}"
    );
    holders[0]
}

/// Whether a pod labelled `labels` reaches `host:port` (busybox nc, 3 s).
async fn reaches(
    client: &kube::Client,
    namespace: &TestNamespace,
    labels: Value,
    host: &str,
    port: u16,
) -> bool {
    // Busybox's nc has no -z: `-e true` exits 0 once the connection is made, 1 if it is refused
    // or (a NetworkPolicy drops the SYN) the 3 s connect timeout passes. A new pod's address
    // reaches the policy rules a moment after it starts (kube-router syncs on pod events), so
    // a few attempts are made before a port counts as closed.
    let script = format!(
        "for i in 1 2 3 4 5; do if nc -w 3 {host} {port} -e true; then echo OPEN; exit 0; fi; \
         sleep 1; done; echo CLOSED"
    );
    let output = client_pod(client, &namespace.name, "probe", labels, &script)
        .await
        .expect("probe pod");
    output.contains("OPEN")
}

/// Lowers `rateLimit.requests` to 3 per minute and checks that, once the app pods rolled, a
/// client gets 3 answers and then 429s (it got 6 of 6 under the old limit of 1000).
async fn new_rate_limit_is_enforced(client: &kube::Client, namespace: &TestNamespace) {
    // `/api/data` is the rate-limited route (the article's example endpoint).
    let url = format!("http://{APP}-app.{}.svc/api/data", namespace.name);
    let script = format!(
        "for i in 1 2 3 4 5 6; do \
           if out=$(wget -q -O /dev/null {url} 2>&1); then echo CODE 200; \
           else echo \"CODE $(echo \"$out\" | grep -o 'HTTP/1\\.[01] [0-9]*' | cut -d' ' -f2)\"; fi; \
         done"
    );
    let codes = |output: &str| -> Vec<String> {
        output
            .lines()
            .filter_map(|line| line.strip_prefix("CODE "))
            .map(str::to_string)
            .collect()
    };
    let before = client_pod(client, &namespace.name, "limit-before", json!({}), &script)
        .await
        .expect("requests under the old limit");
    assert_eq!(codes(&before), vec!["200"; 6], "{before}");
    let app_pods_before = app_pod_uids(namespace).await;

    namespace
        .apps()
        .patch(
            APP,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rateLimit": {"requests": 3, "windowSeconds": 60}}})),
        )
        .await
        .expect("lower the rate limit");
    let changed = std::time::Instant::now();
    // The limit is one of the settings the app reloads live from its mounted ConfigMap (the pod
    // templates' config hash leaves it out, so no pod is replaced): it takes effect once the
    // kubelet has refreshed the volume, which can take its sync period (about a minute). Each
    // attempt is a new client pod, so a new address with an empty window.
    let mut attempt = 0;
    eventually(
        "the app to enforce the new limit",
        Duration::from_secs(180),
        || {
            attempt += 1;
            let name = format!("limit-after-{attempt}");
            let script = script.clone();
            async move {
                let after = client_pod(client, &namespace.name, &name, json!({}), &script).await?;
                // While the app pods pick the change up one by one, a request may still meet
                // the old limit on one of them: only the full pattern, from one client, counts.
                let codes = codes(&after);
                if codes != ["200", "200", "200", "429", "429", "429"] {
                    anyhow::bail!("not enforced yet: {codes:?}");
                }
                Ok(Some(()))
            }
        },
    )
    .await;
    eprintln!(
        "the new rate limit was enforced {:.0}s after the ScaledApp changed",
        changed.elapsed().as_secs_f64()
    );
    assert_eq!(
        app_pod_uids(namespace).await,
        app_pods_before,
        "the same app pods enforce the new limit: reloaded live, not rolled"
    );
}

/// The uids of the ScaledApp's app pods (not being deleted).
async fn app_pod_uids(namespace: &TestNamespace) -> BTreeSet<String> {
    pods(namespace)
        .await
        .into_iter()
        .filter(|pod| {
            pod.labels()
                .get("app.kubernetes.io/component")
                .map(String::as_str)
                == Some("app")
                && pod.metadata.deletion_timestamp.is_none()
        })
        .filter_map(|pod| pod.uid())
        .collect()
}

async fn delete_pod_and_wait_ready(namespace: &TestNamespace, pod: &str) {
    let uid = namespace.api::<Pod>().get(pod).await.expect("pod").uid();
    namespace
        .api::<Pod>()
        .delete(pod, &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    eventually(
        &format!("{pod} to come back"),
        Duration::from_secs(180),
        || async {
            let new = namespace.api::<Pod>().get_opt(pod).await?;
            Ok(new.filter(|new| new.uid() != uid).map(|_| ()))
        },
    )
    .await;
    wait_ready(&namespace.apps(), APP, REAL_READY_TIMEOUT).await;
}

#[tokio::test]
#[ignore = "needs pods that really run: e2e/real-pods.sh runs it"]
async fn a_small_scaledapp_runs_for_real_and_keeps_its_data() {
    require_real_pods();
    let client = client().await;
    let namespace = real_node_namespace(&client, "real").await;
    let mut app = shop().json();
    app["spec"]["dataPolicy"] = json!("Retain");
    let app: scaledapp_operator::crd::ScaledApp = serde_json::from_value(app).expect("valid");
    let started = std::time::Instant::now();
    namespace
        .apps()
        .create(&PostParams::default(), &app)
        .await
        .expect("create");
    wait_ready(&namespace.apps(), APP, REAL_READY_TIMEOUT).await;
    eprintln!("ready after {:.1}s", started.elapsed().as_secs_f64());

    // 2. Every init container and probe really ran.
    every_pod_really_ran(&namespace).await;

    // 3. Replication is real.
    replication_is_real(&namespace).await;

    // 4. The app serves through its Service and DNS, from a pod.
    let lookups_before = app_metric(&client, &namespace, "cache_lookups_total").await;
    let requests_before = app_metric(&client, &namespace, "http_requests_total").await;
    let email = format!("real-{}@example.org", namespace.name);
    let output = client_pod(
        &client,
        &namespace.name,
        "user",
        json!({}),
        &app_flow(&namespace.name, &email),
    )
    .await
    .expect("the app flow");
    let user = field(&output, "USER");
    let id = user["id"].as_i64().expect("user id");
    assert_eq!(field(&output, "FIRST")["id"], id);
    assert_eq!(field(&output, "SECOND")["id"], id);
    assert!(
        field(&output, "FIRST").get("email").is_none(),
        "public reads carry no email"
    );
    let order = field(&output, "ORDER");
    let order_id = order["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("order id in {order}"));
    wait_for_worker_effect(&namespace, order_id).await;
    let requests_after = app_metric(&client, &namespace, "http_requests_total").await;
    assert!(
        requests_after >= requests_before + 5,
        "the app pods counted the requests: {requests_before} -> {requests_after}"
    );
    let lookups_after = app_metric(&client, &namespace, "cache_lookups_total").await;
    assert!(
        lookups_after > lookups_before,
        "reads went through the cache"
    );

    // 5. Isolation: another app's pod cannot reach this ScaledApp's Postgres or Redis; the app can.
    let ns = &namespace.name;
    let primary_host = format!("{APP}-shard-0-primary.{ns}.svc");
    let redis_host = format!("{APP}-redis-primary.{ns}.svc");
    let stranger =
        json!({"app.kubernetes.io/instance": "other", "app.kubernetes.io/component": "app"});
    let ours = json!({"app.kubernetes.io/instance": APP, "app.kubernetes.io/component": "app"});
    assert!(
        reaches(&client, &namespace, ours.clone(), &primary_host, 5432).await,
        "the app reaches Postgres"
    );
    assert!(
        reaches(&client, &namespace, ours, &redis_host, 6379).await,
        "the app reaches Redis"
    );
    assert!(
        !reaches(&client, &namespace, stranger.clone(), &primary_host, 5432).await,
        "another app is kept from Postgres"
    );
    assert!(
        !reaches(&client, &namespace, stranger, &redis_host, 6379).await,
        "another app is kept from Redis"
    );
    // Anyone who may create pods here can label one as the operator: Redis admits the
    // operator's pods from the operator's namespace only.
    let impostor = json!({"app.kubernetes.io/name": "scaledapp-operator"});
    assert!(
        !reaches(&client, &namespace, impostor, &redis_host, 6379).await,
        "a pod labelled as the operator outside the operator's namespace is kept from Redis"
    );

    // 6. Deleted pods come back, and nothing is lost.
    let app_pod = pods(&namespace)
        .await
        .into_iter()
        .find(|pod| {
            pod.labels()
                .get("app.kubernetes.io/component")
                .map(String::as_str)
                == Some("app")
        })
        .expect("an app pod")
        .name_any();
    eprintln!("deleting app pod {app_pod}");
    namespace
        .api::<Pod>()
        .delete(&app_pod, &DeleteParams::default().grace_period(0))
        .await
        .expect("delete app pod");
    wait_ready(&namespace.apps(), APP, REAL_READY_TIMEOUT).await;
    delete_pod_and_wait_ready(&namespace, &format!("{APP}-redis-0")).await;
    // The data is kept by Postgres, not by the caches (Redis is persisted too): the user's shard
    // loses its replica and then its primary, and the row is read from the shard's primary
    // itself, with psql.
    let shard = user_shard(&namespace, id).await;
    let (_, replica) = roles(&namespace, shard).await;
    delete_pod_and_wait_ready(&namespace, &replica).await;
    let (primary, _) = roles(&namespace, shard).await;
    eprintln!("deleting shard {shard}'s primary {primary}");
    let deleted = namespace
        .api::<Pod>()
        .get(&primary)
        .await
        .expect("pod")
        .uid();
    delete_pod_and_wait_ready(&namespace, &primary).await;
    // A Ready read right after the deletion can be the status from before it: wait until the
    // recorded primary is a pod object other than the deleted one, running and ready (after
    // the failover to the replica, or the operator's confirmation of the recreated pod).
    let primary = eventually(
        &format!("a ready primary of shard {shard} other than the deleted pod"),
        REAL_READY_TIMEOUT,
        || async {
            let app = namespace.apps().get(APP).await?;
            let recorded = app
                .status
                .and_then(|status| status.shards.get(shard).cloned())
                .and_then(|shard| shard.primary_pod);
            let Some(primary) = recorded else {
                return Ok(None);
            };
            let Some(pod) = namespace.api::<Pod>().get_opt(&primary).await? else {
                return Ok(None);
            };
            let ready = pod
                .status
                .as_ref()
                .and_then(|status| status.container_statuses.as_ref())
                .is_some_and(|containers| {
                    !containers.is_empty() && containers.iter().all(|container| container.ready)
                });
            Ok((ready && pod.uid() != deleted).then_some(primary))
        },
    )
    .await;
    eprintln!("shard {shard}'s primary is now {primary}");
    let stored = psql(
        &namespace.name,
        &primary,
        "app",
        &format!("SELECT email FROM users WHERE id = {id}"),
    )
    .expect("read the user on the shard's primary");
    assert_eq!(
        stored.trim(),
        email,
        "shard {shard}'s primary {primary} has the user"
    );
    user_is_still_there(&client, &namespace, id).await;

    // A runtime setting changed on the ScaledApp reaches the running app: the app pods roll
    // (the rendered config's hash is on their template) and enforce the new limit.
    new_rate_limit_is_enforced(&client, &namespace).await;

    // 7. Deleted under Retain, the volumes stay; re-created, the data is found.
    let claims = |namespace: &TestNamespace| {
        let api = namespace.api::<PersistentVolumeClaim>();
        async move {
            api.list(&ListParams::default())
                .await
                .expect("pvcs")
                .items
                .into_iter()
                .filter(|claim| claim.metadata.deletion_timestamp.is_none())
                .map(|claim| (claim.name_any(), claim.uid().unwrap_or_default()))
                .collect::<BTreeMap<_, _>>()
        }
    };
    let before = claims(&namespace).await;
    // Two claims per shard (primary and replica) and Redis's.
    let expected = 2 * 2 + 1;
    assert!(before.len() >= expected, "{before:?}");
    namespace
        .apps()
        .delete(APP, &DeleteParams::foreground())
        .await
        .expect("delete the ScaledApp");
    eventually(
        "the ScaledApp's pods to be gone",
        Duration::from_secs(180),
        || async { Ok(pods(&namespace).await.is_empty().then_some(())) },
    )
    .await;
    eventually(
        "the ScaledApp to be gone",
        Duration::from_secs(120),
        || async { Ok(namespace.apps().get_opt(APP).await?.is_none().then_some(())) },
    )
    .await;
    assert_eq!(
        claims(&namespace).await,
        before,
        "Retain keeps every volume"
    );
    namespace
        .apps()
        .create(&PostParams::default(), &app)
        .await
        .expect("re-create");
    wait_ready(&namespace.apps(), APP, REAL_READY_TIMEOUT).await;
    assert_eq!(
        claims(&namespace).await,
        before,
        "the same volumes are used again"
    );
    user_is_still_there(&client, &namespace, id).await;
    namespace.delete().await;
}

#[tokio::test]
#[ignore = "needs pods that really run: e2e/real-pods.sh runs it"]
async fn the_charts_operator_runs_as_a_pod_under_its_service_account_and_leads() {
    require_real_pods();
    let client = client().await;
    let namespace = operator_namespace();
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &namespace);
    let running: Vec<Pod> = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=scaledapp-operator"))
        .await
        .expect("operator pods")
        .items
        .into_iter()
        .filter(|pod| pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .collect();
    assert!(!running.is_empty(), "no operator pod runs in {namespace}");
    for pod in &running {
        let spec = pod.spec.clone().expect("spec");
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some("scaledapp-operator")
        );
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|containers| containers.iter().all(|c| c.ready));
        assert!(ready, "{} is not ready", pod.name_any());
    }
    let holder = eventually(
        "an operator pod to hold the lease",
        Duration::from_secs(60),
        || async {
            let holder = lease_holder(&client).await;
            Ok(holder.filter(|holder| running.iter().any(|pod| pod.name_any() == *holder)))
        },
    )
    .await;
    eprintln!("lease held by {holder}");
}
