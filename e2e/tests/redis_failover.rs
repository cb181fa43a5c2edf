//! Redis is no single point of failure, on pods that really run: a ScaledApp with a Redis
//! primary and one replica takes an order load from signed-in users (every attempt and every
//! acknowledged order id recorded) while its Redis primary is force-deleted, its redis-server
//! SIGKILLed, and it is cut off the network. Each time the operator fails over to the replica,
//! orders and reads go on (they fail for at most two seconds around a fault), and afterwards
//! every acknowledged order is in Postgres exactly once, confirmed by exactly one e-mail.
//!
//! The load signs its users up and in right after the ScaledApp reports Ready, each on the first
//! try: Ready means a signed-in write works.
//!
//! First, before the faults, a switchover on request (`scaledapp-operator switchover --redis`)
//! moves the primary the planned way, with the same bound on the outage.
//!
//! Run by `e2e/real-pods.sh` (it fails without `SCALEDAPP_REAL_PODS=1`). The SIGKILL and the
//! network cut are done from the host's side of the pod (its process and its network
//! namespace), which needs the local real node; elsewhere they fail, unless
//! `SCALEDAPP_HOST_SIDE_CHECKS=0` leaves them out, saying SKIP.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{DeleteParams, PostParams};
use scaled_e2e::orders::{Kind, LoadRecord, OrderLoad};
use scaled_e2e::real::*;
use scaled_e2e::*;
use scaledapp_operator::crd::RedisReplicationStatus;

const APP: &str = "rf";
/// The longest orders or reads may fail around one Redis fault.
const MOST_OUTAGE: Duration = Duration::from_secs(2);
/// Signed-in clients of the load.
const CLIENTS: usize = 8;

async fn replication(namespace: &TestNamespace) -> RedisReplicationStatus {
    namespace
        .apps()
        .get(APP)
        .await
        .expect("scaledapp")
        .status
        .and_then(|status| status.redis_replication)
        .unwrap_or_default()
}

/// Waits until the Redis primary is another pod than `not` (any, if `None`) and every Redis
/// pod serves: the primary takes writes and the other follows it, in sync. Returns the primary.
async fn converged(namespace: &TestNamespace, not: Option<&str>, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let status = replication(namespace).await;
        let serving = status.instances.len() == 2
            && status.instances.iter().all(|instance| instance.ready)
            && status
                .instances
                .iter()
                .any(|instance| instance.role == "Primary")
            && status
                .instances
                .iter()
                .any(|instance| instance.role == "Replica");
        if let Some(primary) = &status.primary_pod
            && serving
            && not != Some(primary.as_str())
        {
            return primary.clone();
        }
        assert!(
            Instant::now() < deadline,
            "Redis did not converge (primary other than {not:?}, both pods serving) within \
             {timeout:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the operator has promoted another pod than `old`; returns how long after `fault`
/// the failover was recorded.
async fn failed_over(namespace: &TestNamespace, old: &str, fault: Instant) -> Duration {
    let deadline = fault + Duration::from_secs(60);
    loop {
        let status = replication(namespace).await;
        if status.primary_pod.as_deref().is_some_and(|p| p != old)
            && status
                .last_failover
                .as_ref()
                .is_some_and(|failover| failover.from == old)
        {
            return fault.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no failover away from {old} within 60 s: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn pod(namespace: &TestNamespace, name: &str) -> Pod {
    namespace.api::<Pod>().get(name).await.expect("pod")
}

/// Every order id stored on the shard, and how many confirmation e-mails each has.
fn stored(namespace: &str, primary: &str) -> (BTreeSet<i64>, BTreeMap<i64, i64>) {
    let orders = psql(namespace, primary, "app", "SELECT id FROM orders").expect("orders");
    let emails = psql(
        namespace,
        primary,
        "app",
        "SELECT order_id, count(*) FROM sent_emails GROUP BY order_id",
    )
    .expect("emails");
    let orders = orders
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    let emails = emails
        .lines()
        .filter_map(|line| {
            let (order, count) = line.trim().split_once('|')?;
            Some((order.parse().ok()?, count.parse().ok()?))
        })
        .collect();
    (orders, emails)
}

/// A fault and the time around it in which its outage is measured.
struct Fault {
    name: &'static str,
    at: Instant,
    settled: Instant,
    failover_after: Duration,
}

fn report(record: &LoadRecord, fault: &Fault) -> (Duration, Duration) {
    let outage = |kind| {
        record
            .longest_outage(kind, fault.at, fault.settled)
            .map_or(Duration::ZERO, |outage| outage.length)
    };
    let (orders, reads) = (outage(Kind::Order), outage(Kind::Read));
    eprintln!(
        "REDIS FAULT {}: failover recorded after {:.2} s; orders failed for {:.2} s at most, \
         reads for {:.2} s",
        fault.name,
        fault.failover_after.as_secs_f64(),
        orders.as_secs_f64(),
        reads.as_secs_f64()
    );
    (orders, reads)
}

#[tokio::test]
#[ignore = "needs real pods: run by e2e/real-pods.sh"]
async fn orders_go_on_through_every_redis_fault_and_none_is_lost() {
    require_real_pods();
    let client = client().await;
    let namespace = real_node_namespace(&client, "redis-ha").await;
    namespace
        .apps()
        .create(&PostParams::default(), &Small::new(APP).scaledapp())
        .await
        .expect("create");
    wait_ready(&namespace.apps(), APP, REAL_READY_TIMEOUT).await;
    let base = format!(
        "http://{}",
        cluster_ip(&client, &namespace.name, &format!("{APP}-app")).await
    );
    // Right after Ready: sign-ups and sign-ins succeed on the first try.
    let load = OrderLoad::start(&base, CLIENTS, &namespace.name)
        .await
        .expect("sign-up and sign-in right after Ready");
    load.wait_for_orders(0, 200, Duration::from_secs(60))
        .await
        .expect("orders before the faults");
    let mut primary = converged(&namespace, None, Duration::from_secs(60)).await;
    let mut faults = Vec::new();

    // 0. A switchover on request: the primary pauses writes until the replica has them all.
    let at = Instant::now();
    let mut out = Vec::new();
    scaledapp_operator::switchover::request_redis(
        client.clone(),
        &namespace.name,
        APP,
        None,
        Duration::from_secs(60),
        &mut out,
    )
    .await
    .unwrap_or_else(|error| {
        panic!(
            "Redis switchover: {error}; it printed: {}",
            String::from_utf8_lossy(&out)
        )
    });
    let failover_after = at.elapsed();
    eprint!("{}", String::from_utf8_lossy(&out));
    let old = primary.clone();
    primary = converged(&namespace, Some(&old), Duration::from_secs(60)).await;
    let acknowledged = load.acknowledged();
    load.wait_for_orders(acknowledged, 100, Duration::from_secs(30))
        .await
        .expect("orders after the switchover");
    faults.push(Fault {
        name: "switchover on request",
        at,
        settled: Instant::now(),
        failover_after,
    });

    // 1. The primary pod is force-deleted.
    let at = Instant::now();
    namespace
        .api::<Pod>()
        .delete(&primary, &DeleteParams::default().grace_period(0))
        .await
        .expect("delete the Redis primary");
    let failover_after = failed_over(&namespace, &primary, at).await;
    let old = primary.clone();
    primary = converged(&namespace, Some(&old), Duration::from_secs(120)).await;
    let acknowledged = load.acknowledged();
    load.wait_for_orders(acknowledged, 100, Duration::from_secs(30))
        .await
        .expect("orders after the force-delete");
    faults.push(Fault {
        name: "primary pod force-deleted",
        at,
        settled: Instant::now(),
        failover_after,
    });

    // 2. redis-server of the primary is SIGKILLed: its container restarts in the same pod,
    //    still labelled primary, and must come back read-only.
    if host_side_part("SIGKILL of the Redis primary's redis-server") {
        let uid = pod(&namespace, &primary).await.uid().expect("uid");
        let at = Instant::now();
        kill_in_pod(&uid, "redis-server").expect("kill redis-server");
        let failover_after = failed_over(&namespace, &primary, at).await;
        let old = primary.clone();
        primary = converged(&namespace, Some(&old), Duration::from_secs(120)).await;
        let acknowledged = load.acknowledged();
        load.wait_for_orders(acknowledged, 100, Duration::from_secs(30))
            .await
            .expect("orders after the SIGKILL");
        faults.push(Fault {
            name: "redis-server SIGKILLed",
            at,
            settled: Instant::now(),
            failover_after,
        });
    }

    // 3. The primary is cut off the network: it runs on, unseen, until the network is back,
    //    when it must rejoin as a replica.
    if host_side_part("cutting the Redis primary off the network") {
        let ip = pod(&namespace, &primary)
            .await
            .status
            .and_then(|status| status.pod_ip)
            .expect("pod IP");
        let at = Instant::now();
        cut_off_network(&ip, true).expect("cut the primary off");
        let failover_after = failed_over(&namespace, &primary, at).await;
        let acknowledged = load.acknowledged();
        let during = load
            .wait_for_orders(acknowledged, 100, Duration::from_secs(30))
            .await;
        cut_off_network(&ip, false).expect("restore the network");
        during.expect("orders while the old primary is cut off");
        converged(&namespace, Some(&primary), Duration::from_secs(120)).await;
        faults.push(Fault {
            name: "primary cut off the network",
            at,
            settled: Instant::now(),
            failover_after,
        });
    }

    let record = load.stop().await;
    let (ok, failed) = record.counts(Kind::Order);
    let (reads_ok, reads_failed) = record.counts(Kind::Read);
    eprintln!(
        "orders: {ok} acknowledged, {failed} failed; reads: {reads_ok} ok, {reads_failed} \
         failed; sample failures: {:?}",
        record.sample_failures
    );
    let outages: Vec<_> = faults
        .iter()
        .map(|fault| (fault.name, report(&record, fault)))
        .collect();

    // Every acknowledged order is stored once and confirmed once, by the e-mail worker that
    // drains the queue the relay fills from the outbox.
    let shard = format!("{APP}-shard-0-0");
    let shard_primary = namespace
        .apps()
        .get(APP)
        .await
        .expect("scaledapp")
        .status
        .and_then(|status| status.shards.first().and_then(|s| s.primary_pod.clone()))
        .unwrap_or(shard);
    let acknowledged: BTreeSet<i64> = record.acknowledged.iter().copied().collect();
    assert_eq!(
        acknowledged.len(),
        record.acknowledged.len(),
        "an order id was acknowledged twice"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let (orders, emails) = loop {
        let (orders, emails) = stored(&namespace.name, &shard_primary);
        let unconfirmed = acknowledged
            .iter()
            .filter(|id| !emails.contains_key(id))
            .count();
        if unconfirmed == 0 || Instant::now() > deadline {
            break (orders, emails);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let missing: Vec<_> = acknowledged.difference(&orders).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged orders are not in Postgres: {missing:?}",
        missing.len()
    );
    let unconfirmed: Vec<_> = acknowledged
        .iter()
        .filter(|id| !emails.contains_key(id))
        .collect();
    assert!(
        unconfirmed.is_empty(),
        "{} acknowledged orders have no e-mail within 120 s: {:?}",
        unconfirmed.len(),
        &unconfirmed[..unconfirmed.len().min(20)]
    );
    let twice: Vec<_> = emails.iter().filter(|(_, count)| **count != 1).collect();
    assert!(
        twice.is_empty(),
        "orders with more than one e-mail: {twice:?}"
    );
    eprintln!(
        "all {} acknowledged orders stored once with one e-mail each",
        acknowledged.len()
    );
    for (name, (orders, reads)) in outages {
        assert!(
            orders <= MOST_OUTAGE,
            "{name}: orders failed for {orders:?} (at most {MOST_OUTAGE:?})"
        );
        assert!(
            reads <= MOST_OUTAGE,
            "{name}: reads failed for {reads:?} (at most {MOST_OUTAGE:?})"
        );
    }
    namespace.delete().await;
}
