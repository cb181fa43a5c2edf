//! A shard survives losing its primary, on pods that really run: failover with synchronous and
//! asynchronous replication, a switchover under load, the split-brain fence, and an operator
//! restart in the middle of a failover. A test client commits numbered rows through the shard's
//! `-primary` Service and records each acknowledged id; afterwards every acknowledged id must be
//! on the new primary (synchronous replication) or the number lost is reported (asynchronous).
//!
//! After the failover the app, never restarted, signs a user up and reads it back with its
//! consistency token (read-your-writes across the timeline change).
//!
//! Run by `e2e/real-pods.sh` (they fail without `SCALEDAPP_REAL_PODS=1`); the fencing and
//! mid-failover parts cut a pod off from the API server from the host's side of its network
//! namespace, which needs the local real node (the test runs on it): elsewhere they fail, unless
//! `SCALEDAPP_HOST_SIDE_CHECKS=0` leaves them out, saying SKIP.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use scaled_e2e::real::*;
use scaled_e2e::*;
use serde_json::json;

const APP: &str = "ha";
/// `database.failover.delaySeconds` of the test's ScaledApps: no failover promotes sooner, which
/// bounds every measured outage from below.
const FAILOVER_DELAY_SECONDS: u64 = 2;

fn failover_settings() -> serde_json::Value {
    json!({"delaySeconds": FAILOVER_DELAY_SECONDS, "fenceAfterSeconds": 10})
}

async fn start(client: &Client, prefix: &str, small: Small) -> TestNamespace {
    let namespace = real_node_namespace(client, prefix).await;
    namespace
        .apps()
        .create(&PostParams::default(), &small.scaledapp())
        .await
        .expect("create");
    wait_ready(&namespace.apps(), APP, REAL_READY_TIMEOUT).await;
    namespace
}

async fn recorded_primary(namespace: &TestNamespace) -> String {
    let app = namespace.apps().get(APP).await.expect("scaledapp");
    app.status
        .and_then(|status| status.shards.first().and_then(|s| s.primary_pod.clone()))
        .expect("a recorded primary")
}

async fn writer(client: &Client, namespace: &TestNamespace) -> Writer {
    let host = cluster_ip(client, &namespace.name, &format!("{APP}-shard-0-primary")).await;
    let password = secret_value(
        client,
        &namespace.name,
        &format!("{APP}-postgres"),
        "app-password",
    )
    .await;
    let writer = Writer::start(host, 5432, password).await;
    // Commits before the fault, so there is something to lose.
    writer
        .wait_for_acknowledged(20, Duration::from_secs(60))
        .await;
    writer
}

fn kill_postgres(namespace: &str, pod: &str) {
    let _ = exec(
        namespace,
        pod,
        "postgres",
        &[
            "sh",
            "-c",
            "kill -9 $(head -n 1 /var/lib/postgresql/data/pgdata/postmaster.pid)",
        ],
    );
}

/// Deletes `pod` at once; returns the uid it had.
async fn delete_now(namespace: &TestNamespace, pod: &str) -> Option<String> {
    let uid = namespace.api::<Pod>().get(pod).await.expect("pod").uid();
    namespace
        .api::<Pod>()
        .delete(pod, &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    uid
}

/// Panics if the pod the StatefulSet recreated under the deleted primary's name (another uid
/// than `deleted`) is Ready while the operator has not yet decided: it would have started as
/// primary on its own, beside the replica being promoted. Only a follower of the new primary
/// (after the decision) may become Ready.
async fn assert_recreated_primary_waits(
    namespace: &TestNamespace,
    pod: &str,
    deleted: &Option<String>,
) {
    let Some(recreated) = namespace.api::<Pod>().get_opt(pod).await.expect("get pod") else {
        return;
    };
    let ready = recreated
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|condition| condition.type_ == "Ready" && condition.status == "True")
        });
    assert!(
        recreated.uid() == *deleted || !ready,
        "{pod} was recreated and became Ready before the operator started a failover: it \
         started as primary on its own"
    );
}

/// Kills the primary's postgres, deletes its pod at once, and waits until a failover away from
/// it has started (or already completed); returns when the kill was done (the exec returned: a
/// commit acknowledged before that may still be the old primary's). Meanwhile the pod recreated
/// under its name must not become Ready on its own.
/// Returns when the kill was sent (before the exec that kills): the outage is measured by the
/// client from there ([`Written::outage_after`]).
async fn kill_primary_until_a_failover_starts(namespace: &TestNamespace, old: &str) -> Instant {
    let killed = Instant::now();
    kill_postgres(&namespace.name, old);
    let deleted = delete_now(namespace, old).await;
    eventually(
        "the failover to start",
        Duration::from_secs(120),
        || async {
            assert_recreated_primary_waits(namespace, old, &deleted).await;
            let app = namespace.apps().get(APP).await?;
            let shard = app.status.and_then(|status| status.shards.first().cloned());
            match shard {
                Some(shard)
                    if shard
                        .failover
                        .as_ref()
                        .or(shard.last_failover.as_ref())
                        .is_some_and(|change| change.from == old) =>
                {
                    Ok(Some(()))
                }
                // Say what the operator sees, for the timeout message.
                Some(shard) => anyhow::bail!(
                    "primary {:?}, health {:?}, instances {:?}",
                    shard.primary_pod,
                    shard.primary_health,
                    shard.instances
                ),
                None => Ok(None),
            }
        },
    )
    .await;
    killed
}

/// Waits until the shard's last completed failover or switchover started after `since` and
/// names `from`; returns the new primary.
async fn completed_change(namespace: &TestNamespace, from: &str, kind: &str) -> String {
    eventually(
        &format!("a completed {kind} away from {from}"),
        Duration::from_secs(180),
        || async {
            let app = namespace.apps().get(APP).await?;
            let shard = app.status.and_then(|status| status.shards.first().cloned());
            Ok(shard
                .and_then(|shard| shard.last_failover)
                .filter(|done| done.from == from && done.kind == kind)
                .map(|done| done.to))
        },
    )
    .await
}

/// Exactly one instance reports itself primary, it is the recorded one, and every other pod is a
/// ready replica streaming from it.
async fn converged(namespace: &TestNamespace, replicas: usize) -> String {
    eventually(
        "one primary, every other pod a ready replica",
        Duration::from_secs(300),
        || async {
            let app = namespace.apps().get(APP).await?;
            let Some(shard) = app.status.and_then(|status| status.shards.first().cloned()) else {
                return Ok(None);
            };
            let primaries: Vec<&str> = shard
                .instances
                .iter()
                .filter(|instance| instance.role == "Primary" && instance.ready)
                .map(|instance| instance.pod.as_str())
                .collect();
            let ready_replicas = shard
                .instances
                .iter()
                .filter(|instance| instance.role == "Replica" && instance.ready)
                .count();
            let recorded = shard.primary_pod.clone().unwrap_or_default();
            Ok((primaries == [recorded.as_str()]
                && ready_replicas == replicas
                && shard.failover.is_none())
            .then_some(recorded))
        },
    )
    .await
}

/// Through the app's Service, from a pod: a sign-up (a write to the shard's new primary), then a
/// read of it with the consistency token the write returned. The app pods were not restarted.
async fn the_app_writes_and_reads_its_write(client: &Client, namespace: &TestNamespace) {
    let ns = &namespace.name;
    let output = eventually(
        "the app to accept a write on the new primary",
        Duration::from_secs(60),
        || async {
            // Until the app's pool has reconnected, a write may get 503: a new pod (and a new
            // e-mail address) per attempt.
            let name = format!(
                "after-{}",
                rand::distr::SampleString::sample_string(
                    &rand::distr::Alphanumeric,
                    &mut rand::rng(),
                    5
                )
                .to_lowercase()
            );
            let script = format!(
                r#"set -e
base=http://{APP}-app.{ns}.svc
out=$(wget -S -q -O - --header 'Content-Type: application/json' --post-data '{{"name":"After","email":"{name}@example.org","password":"correct horse battery staple"}}' $base/api/users 2>&1)
token=$(echo "$out" | sed -n 's/.*[Xx]-[Cc]onsistency-[Tt]oken: *\([^ ]*\).*/\1/p' | tr -d '\r' | head -n 1)
id=$(echo "$out" | sed -n 's/.*"id":\([0-9]*\).*/\1/p' | head -n 1)
[ -n "$id" ] && [ -n "$token" ] || {{ echo "no id or token in: $out"; exit 1; }}
echo "READ $(wget -q -O - --header "X-Consistency-Token: $token" $base/api/users/$id)"
echo "ID $id""#
            );
            Ok(client_pod(client, ns, &name, json!({}), &script).await.ok())
        },
    )
    .await;
    let id = output
        .lines()
        .find_map(|line| line.strip_prefix("ID "))
        .expect("an id");
    let read = output
        .lines()
        .find_map(|line| line.strip_prefix("READ "))
        .expect("a read");
    assert!(read.contains(&format!("\"id\":{id}")), "{output}");
    let restarts: i32 = namespace
        .api::<Pod>()
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={APP},app.kubernetes.io/component=app"
        )))
        .await
        .expect("app pods")
        .items
        .iter()
        .flat_map(|pod| {
            pod.status
                .clone()
                .unwrap_or_default()
                .container_statuses
                .unwrap_or_default()
        })
        .map(|container| container.restart_count)
        .sum();
    assert_eq!(
        restarts, 0,
        "the app was not restarted to find the new primary"
    );
}

async fn pod_ip(namespace: &TestNamespace, pod: &str) -> String {
    namespace
        .api::<Pod>()
        .get(pod)
        .await
        .expect("pod")
        .status
        .and_then(|status| status.pod_ip)
        .expect("pod IP")
}

fn missing(written: &Written, stored: &std::collections::BTreeSet<i64>) -> Vec<i64> {
    written
        .acknowledged
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !stored.contains(id))
        .collect()
}

#[tokio::test]
#[ignore = "needs pods that really run: e2e/real-pods.sh runs it"]
async fn with_synchronous_replication_failover_and_switchover_lose_no_acknowledged_write() {
    require_real_pods();
    let client = client().await;
    let namespace = start(
        &client,
        "sync",
        Small {
            replicas_per_shard: 2,
            synchronous_replication: true,
            failover: Some(failover_settings()),
            workers: 0,
            ..Small::new(APP)
        },
    )
    .await;
    let ns = namespace.name.clone();

    // Failover: the primary's postgres is killed and its pod deleted.
    let old = recorded_primary(&namespace).await;
    let writes = writer(&client, &namespace).await;
    let killed = kill_primary_until_a_failover_starts(&namespace, &old).await;
    let new = completed_change(&namespace, &old, "Failover").await;
    assert_ne!(new, old);
    // A commit the new primary acknowledged (one after the kill could still be the old one's).
    writes
        .wait_for_a_write_after(Instant::now(), Duration::from_secs(60))
        .await;
    let failover_written = writes.stop().await;
    let outage = failover_written.outage_after(killed).expect(
        "the client failed after the kill and wrote again after the failover (else nothing was measured)",
    );
    eprintln!(
        "BENCH failover (synchronous): writes refused for {:.1}s (first failed attempt to first commit after the last one), {} acknowledged",
        outage.as_secs_f64(),
        failover_written.acknowledged.len()
    );
    assert!(
        outage < Duration::from_secs(30),
        "new primary took {outage:?}"
    );
    // A failover waits delaySeconds before it promotes: a shorter outage means the clock did
    // not measure the failover.
    assert!(
        outage >= Duration::from_secs(FAILOVER_DELAY_SECONDS - 1),
        "an outage of {outage:?} is shorter than the failover delay ({FAILOVER_DELAY_SECONDS}s): the clock measured something else"
    );
    let primary = converged(&namespace, 2).await;
    let lost = missing(
        &failover_written,
        &stored_ids(&ns, &primary).expect("read ids"),
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes lost in a synchronous failover: {lost:?}"
    );
    assert!(
        namespace
            .apps()
            .get(APP)
            .await
            .expect("app")
            .status
            .expect("status")
            .shards[0]
            .instances
            .iter()
            .any(|instance| instance.pod == old && instance.role == "Replica" && instance.ready),
        "the old primary is back as a replica"
    );
    the_app_writes_and_reads_its_write(&client, &namespace).await;

    // Switchover under load: errors only inside the write pause, which is measured.
    let writes = writer(&client, &namespace).await;
    let binary = std::env::var("SCALEDAPP_OPERATOR_BIN").unwrap_or_else(|_| {
        repo_root()
            .join("target/debug/scaledapp-operator")
            .display()
            .to_string()
    });
    let output = std::process::Command::new(binary)
        .args([
            "switchover",
            APP,
            "--shard",
            "0",
            "-n",
            &ns,
            "--wait",
            "120",
        ])
        .env("KUBECONFIG", kubeconfig())
        .output()
        .expect("run scaledapp-operator switchover");
    assert!(output.status.success(), "{output:?}");
    // Done means the new primary accepts writes; the client's own reconnection (and, with
    // synchronous replication, a standby streaming from the new primary) may take a little
    // longer. The pause lasts until the client's next acknowledged commit.
    let switched_at = Instant::now();
    writes
        .wait_for_a_write_after(switched_at, Duration::from_secs(60))
        .await;
    // Failures that come late (an insert timing out on the old primary's dropped connection)
    // still count, and a commit must follow them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    writes.wait_for_recovery(Duration::from_secs(60)).await;
    let switched = writes.stop().await;
    // The pause: the failures' window when there were any (the connections the old primary
    // dropped), else the longest gap between commits.
    let (pause, failures) = match switched.failure_window() {
        Some((_, pause)) => (pause, switched.failures.len()),
        None => (switched.longest_pause().0, 0),
    };
    eprintln!(
        "BENCH switchover (synchronous): write pause {:.2}s, {} failed attempts, all inside it; {}",
        pause.as_secs_f64(),
        failures,
        String::from_utf8_lossy(&output.stdout).trim()
    );
    assert!(
        switched.failure_window().is_some() || switched.failures.is_empty(),
        "no write was acknowledged after the failures: {:?}",
        switched.failures
    );
    assert!(
        pause < Duration::from_secs(20),
        "switchover pause {pause:?} (failures spread over it: {failures})"
    );
    let primary = converged(&namespace, 2).await;
    assert_ne!(primary, new, "the primary moved");
    let lost = missing(&switched, &stored_ids(&ns, &primary).expect("read ids"));
    assert!(
        lost.is_empty(),
        "acknowledged writes lost in a switchover: {lost:?}"
    );

    // The split-brain fence: cut off from the API server while clients still reach it, the
    // primary stops accepting writes within fenceAfterSeconds.
    if !host_side_part("the split-brain fence") {
        namespace.delete().await;
        return;
    }
    let fenced = primary;
    let ip = pod_ip(&namespace, &fenced).await;
    let password = secret_value(&client, &ns, &format!("{APP}-postgres"), "app-password").await;
    let direct = Writer::start(ip.clone(), 5432, password).await;
    direct
        .wait_for_acknowledged(20, Duration::from_secs(60))
        .await;
    cut_off_from_api_server(&ip, true).expect("cut the primary off from the API server");
    let cut = Instant::now();
    tokio::time::sleep(Duration::from_secs(10 + 12)).await;
    let direct_written = direct.stop().await;
    cut_off_from_api_server(&ip, false).expect("restore");
    // What makes the measurement mean something: the client wrote to this pod before the cut,
    // still reached it after the cut (so the cut took the API server away, not the clients),
    // and after its last write was answered with refusals, not silence.
    assert!(
        direct_written.acknowledged.iter().any(|(_, at)| *at < cut),
        "the direct client never wrote to {fenced} before the cut: nothing was measured"
    );
    let last_ack = direct_written
        .acknowledged
        .iter()
        .map(|(_, at)| *at)
        .rfind(|at| *at > cut)
        .unwrap_or_else(|| {
            panic!(
                "{fenced} acknowledged no write after it was cut off from the API server: clients \
                 must still reach it until it fences itself"
            )
        });
    let refused_after = direct_written
        .refusals
        .iter()
        .filter(|at| **at > last_ack)
        .count();
    assert!(
        refused_after > 0,
        "after its last write {fenced} was never reached and refused ({} failures, none \
         answered): the test cannot tell a fence from a network cut",
        direct_written.failures.len()
    );
    let last = last_ack.saturating_duration_since(cut);
    eprintln!(
        "BENCH fencing: the cut-off primary took its last write {:.1}s after losing the API server (fenceAfterSeconds 10); {refused_after} later attempts were refused",
        last.as_secs_f64()
    );
    assert!(
        last < Duration::from_secs(10 + 5),
        "it kept accepting writes for {last:?}"
    );
    let primary = converged(&namespace, 2).await;
    eprintln!("after the fence, {primary} is the primary");
    namespace.delete().await;
}

#[tokio::test]
#[ignore = "needs pods that really run: e2e/real-pods.sh runs it"]
async fn with_asynchronous_replication_a_failover_converges_and_survives_an_operator_restart() {
    require_real_pods();
    let client = client().await;
    let namespace = start(
        &client,
        "async",
        Small {
            replicas_per_shard: 1,
            failover: Some(failover_settings()),
            workers: 0,
            ..Small::new(APP)
        },
    )
    .await;
    let ns = namespace.name.clone();
    let old = recorded_primary(&namespace).await;
    let replica = namespace
        .apps()
        .get(APP)
        .await
        .expect("app")
        .status
        .expect("status")
        .shards[0]
        .instances
        .iter()
        .map(|instance| instance.pod.clone())
        .find(|pod| *pod != old)
        .expect("the replica");
    // On the real node, hold the promotion back (the replica cannot read the record), so the
    // operator restarts while the failover is in progress.
    let hold = host_side_part("holding the promotion back for an operator restart mid-failover");
    let replica_ip = pod_ip(&namespace, &replica).await;
    if hold {
        cut_off_from_api_server(&replica_ip, true).expect("hold the replica's promotion");
    }

    let writes = writer(&client, &namespace).await;
    let killed = kill_primary_until_a_failover_starts(&namespace, &old).await;
    if hold {
        // Restart the operator mid-failover.
        let operators: Api<Pod> = Api::namespaced(client.clone(), &operator_namespace());
        for pod in operators
            .list(&ListParams::default().labels("app.kubernetes.io/name=scaledapp-operator"))
            .await
            .expect("operator pods")
            .items
        {
            operators
                .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
                .await
                .expect("delete the operator pod");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        cut_off_from_api_server(&replica_ip, false).expect("let the replica promote");
    }
    let new = completed_change(&namespace, &old, "Failover").await;
    assert_eq!(new, replica);
    let primary = converged(&namespace, 1).await;
    assert_eq!(
        primary, replica,
        "exactly one primary, the promoted replica"
    );
    // A commit the new primary acknowledged (one after the kill could still be the old one's).
    writes
        .wait_for_a_write_after(Instant::now(), Duration::from_secs(60))
        .await;
    let written = writes.stop().await;
    let resumed = written.outage_after(killed).expect(
        "the client failed after the kill and wrote again after the failover (else nothing was measured)",
    );
    assert!(
        resumed >= Duration::from_secs(FAILOVER_DELAY_SECONDS - 1),
        "an outage of {resumed:?} is shorter than the failover delay ({FAILOVER_DELAY_SECONDS}s): the clock measured something else"
    );
    let lost = missing(&written, &stored_ids(&ns, &primary).expect("read ids"));
    eprintln!(
        "BENCH failover (asynchronous{}): writes refused for {:.1}s (first failed attempt to first commit after the last one); {} of {} acknowledged writes lost",
        if hold {
            ", operator restarted mid-failover"
        } else {
            ""
        },
        resumed.as_secs_f64(),
        lost.len(),
        written.acknowledged.len()
    );
    // What asynchronous replication may lose is bounded by the replica's lag at the kill: the
    // replica holds a prefix of the primary's WAL, and every insert is its own commit, so only
    // the newest commits before the kill can be missing, never one older than a kept one.
    let newest_kept_before_kill = written
        .acknowledged
        .iter()
        .filter(|(id, at)| *at < killed && !lost.contains(id))
        .map(|(id, _)| *id)
        .max()
        .unwrap_or_default();
    assert!(
        lost.iter().all(|id| *id > newest_kept_before_kill),
        "lost {lost:?} although the newer {newest_kept_before_kill} was kept: not a replication-lag loss"
    );
    let lag_bound = Duration::from_secs(5);
    let lost_earliest = written
        .acknowledged
        .iter()
        .filter(|(id, _)| lost.contains(id))
        .map(|(_, at)| *at)
        .min();
    if let Some(earliest) = lost_earliest {
        assert!(
            killed.saturating_duration_since(earliest) <= lag_bound,
            "a write acknowledged {:?} before the kill was lost: more than the replica's lag could explain",
            killed.saturating_duration_since(earliest)
        );
    }
    namespace.delete().await;
}
