//! Failover pieces the operator drives through the primary record: promotion of a named replica,
//! rewind of the old primary, and the split-brain fence.

use std::time::{Duration, Instant};

use scaled_contract::instance::{ENV_INSTANCE_POD_UID, InstanceRole};

use crate::support::{Cluster, Options, READY_TIMEOUT, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_replica_is_promoted_and_the_crashed_old_primary_rewinds_and_follows_it() {
    let cluster = Cluster::new(Options {
        instances: 2,
        ..Options::default()
    });
    cluster.name_primary("db-0");
    let mut old = cluster.start(0);
    let mut new = cluster.start(1);
    let first = old.wait_ready(InstanceRole::Primary).await;
    new.wait_ready(InstanceRole::Replica).await;
    let app = old.app().await;
    app.batch_execute("CREATE TABLE events (what text); INSERT INTO events VALUES ('shared')")
        .await
        .expect("write on the old primary");
    let replica_app = new.app().await;
    eventually("the shared row on the replica", READY_TIMEOUT, || async {
        replica_app
            .query_opt("SELECT 1 FROM events WHERE what = 'shared'", &[])
            .await
            .ok()
            .flatten()
    })
    .await;

    // The replica goes away; the old primary writes what the replica never sees, then crashes.
    assert!(new.stop().await.success());
    app.batch_execute("INSERT INTO events VALUES ('lost with the old primary')")
        .await
        .expect("write only on the old primary");
    drop(app);
    old.crash();

    cluster.name_primary("db-1");
    let mut new = cluster.start(1);
    let promoted = new.wait_ready(InstanceRole::Primary).await;
    assert_eq!(
        promoted.timeline,
        Some(2),
        "promotion starts a new timeline"
    );
    assert_eq!(promoted.system_identifier, first.system_identifier);
    let new_app = new.app().await;
    new_app
        .batch_execute("INSERT INTO events VALUES ('after the failover')")
        .await
        .expect("the promoted replica accepts writes");

    let mut old = cluster.start(0);
    let rejoined = old.wait_ready(InstanceRole::Replica).await;
    assert_eq!(rejoined.primary_pod.as_deref(), Some("db-1"));
    assert_eq!(
        rejoined.reclones, 0,
        "rewound, not cloned again: {rejoined:?}"
    );
    let log = std::fs::read_to_string(&old.pod.log).expect("log");
    assert!(
        log.contains("rewinding from last common checkpoint"),
        "pg_rewind rewound the diverged history"
    );
    let old_app = old.app().await;
    eventually(
        "the new primary's row on the rewound old primary",
        READY_TIMEOUT,
        || async {
            old_app
                .query_opt(
                    "SELECT 1 FROM events WHERE what = 'after the failover'",
                    &[],
                )
                .await
                .ok()
                .flatten()
        },
    )
    .await;
    let lost = old_app
        .query_opt(
            "SELECT 1 FROM events WHERE what = 'lost with the old primary'",
            &[],
        )
        .await
        .expect("query");
    assert!(lost.is_none(), "the diverged write was rewound away");
    let status = old
        .wait_status("following timeline 2", READY_TIMEOUT, |status| {
            status.timeline == Some(2)
        })
        .await;
    assert_eq!(status.role, InstanceRole::Replica);
    new.wait_status("the old primary streaming", READY_TIMEOUT, |status| {
        status.streaming_replicas == vec!["db-0".to_string()]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_cannot_read_the_record_fences_itself_within_fence_after_seconds() {
    let fence_after = 4;
    let cluster = Cluster::new(Options {
        fence_after_seconds: fence_after,
        ..Options::default()
    });
    cluster.name_primary("db-0");
    let mut node = cluster.start(0);
    node.wait_ready(InstanceRole::Primary).await;
    let session = node.app().await;
    session
        .batch_execute("CREATE TABLE ticks (at timestamptz)")
        .await
        .expect("create");

    let hidden = Instant::now();
    cluster.hide_record();
    let failed_after = loop {
        let elapsed = hidden.elapsed();
        if session
            .batch_execute("INSERT INTO ticks VALUES (now())")
            .await
            .is_err()
        {
            break elapsed;
        }
        assert!(
            elapsed < Duration::from_secs(u64::from(fence_after) + 15),
            "the open session still commits {elapsed:?} after the record became unreadable\n{}",
            node.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        failed_after >= Duration::from_secs(u64::from(fence_after) - 1),
        "fenced before fenceAfterSeconds: {failed_after:?}"
    );
    let fenced = node
        .wait_status("fenced", READY_TIMEOUT, |status| {
            status.role == InstanceRole::Fenced
        })
        .await;
    assert!(!fenced.ready);
    assert_eq!(node.get("/readyz").await.0, 503);
    assert_eq!(node.get("/healthz").await.0, 200);
    assert!(
        node.connect_tcp("app", crate::support::APP_PASSWORD, "app")
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        node.postmaster_pid().is_none(),
        "it stays down while the record is unreadable"
    );

    cluster.name_primary("db-0");
    node.wait_ready(InstanceRole::Primary).await;
    let count: i64 = node
        .app()
        .await
        .query_one("SELECT count(*) FROM ticks", &[])
        .await
        .expect("read")
        .get(0);
    assert!(count > 0, "the committed rows survived the fence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_fences_at_once_when_the_record_names_another_pod_and_then_follows_it() {
    let cluster = Cluster::new(Options {
        instances: 3,
        fence_after_seconds: 300,
        reclone_after_seconds: 10,
        ..Options::default()
    });
    cluster.name_primary("db-0");
    let mut old = cluster.start(0);
    let mut new = cluster.start(1);
    let mut other = cluster.start(2);
    old.wait_ready(InstanceRole::Primary).await;
    new.wait_ready(InstanceRole::Replica).await;
    other.wait_ready(InstanceRole::Replica).await;
    let open = old.app().await;
    open.batch_execute("CREATE TABLE orders (id int)")
        .await
        .expect("create");
    open.batch_execute("BEGIN; INSERT INTO orders VALUES (1)")
        .await
        .expect("an open transaction on the old primary");
    let writer = old.app().await;

    let renamed = Instant::now();
    cluster.name_primary("db-1");
    let failed_after = loop {
        if writer
            .batch_execute("INSERT INTO orders VALUES (2)")
            .await
            .is_err()
        {
            break renamed.elapsed();
        }
        assert!(
            renamed.elapsed() < Duration::from_secs(15),
            "the old primary still commits after the record named another pod\n{}",
            old.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Polled every tick (500ms here), so "at once" is within a couple of seconds.
    assert!(failed_after < Duration::from_secs(5), "{failed_after:?}");
    let commit = open.batch_execute("COMMIT").await;
    assert!(
        commit.is_err(),
        "the open transaction was rolled back by the fast shutdown, not committed"
    );
    let fenced = old.try_status().await.map(|status| status.role);
    assert_ne!(fenced, Some(InstanceRole::Primary));

    let promoted = new.wait_ready(InstanceRole::Primary).await;
    assert_eq!(promoted.timeline, Some(2));
    let following = old.wait_ready(InstanceRole::Replica).await;
    assert_eq!(following.primary_pod.as_deref(), Some("db-1"));
    let new_app = new.app().await;
    new_app
        .batch_execute("INSERT INTO orders VALUES (3)")
        .await
        .expect("the new primary accepts writes");
    let rows: Vec<i32> = new_app
        .query("SELECT DISTINCT id FROM orders ORDER BY id", &[])
        .await
        .expect("read")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        !rows.contains(&1),
        "the open transaction left no row: {rows:?}"
    );
    let old_app = old.app().await;
    eventually(
        "the old primary follows the new one",
        READY_TIMEOUT,
        || async {
            old_app
                .query_opt("SELECT 1 FROM orders WHERE id = 3", &[])
                .await
                .ok()
                .flatten()
        },
    )
    .await;
    // The third pod switched its upstream by a reload, and follows the new timeline. (Had it
    // received WAL the new primary never got, it would be cloned again instead; either way it
    // ends up following db-1.)
    other
        .wait_status(
            "the other replica following db-1",
            READY_TIMEOUT,
            |status| {
                status.ready
                    && status.primary_pod.as_deref() == Some("db-1")
                    && status.timeline == Some(2)
            },
        )
        .await;
    let log = std::fs::read_to_string(&other.pod.log).expect("log");
    assert!(
        log.contains("Retargeted"),
        "the replica was retargeted, not restarted"
    );
    let other_app = other.app().await;
    eventually(
        "the new primary's row on the other replica",
        READY_TIMEOUT,
        || async {
            other_app
                .query_opt("SELECT 1 FROM orders WHERE id = 3", &[])
                .await
                .ok()
                .flatten()
        },
    )
    .await;
    let refused = old_app
        .batch_execute("INSERT INTO orders VALUES (4)")
        .await
        .expect_err("the old primary is read-only now");
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
        "{refused:?}"
    );
}

/// A primary pod deleted and recreated by its StatefulSet comes back under the same name but as
/// another pod object. It must not start as primary on its own: the operator may be promoting a
/// replica at that moment. It waits until the record confirms this object (its uid), then starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_primary_waits_until_the_record_confirms_its_uid() {
    let cluster = Cluster::new(Options::default());
    cluster.name_primary_object("db-0", "uid-before");
    let mut before = cluster.start_with(0, &[(ENV_INSTANCE_POD_UID, "uid-before")]);
    before.wait_ready(InstanceRole::Primary).await;
    before.crash();

    let mut after = cluster.start_with(0, &[(ENV_INSTANCE_POD_UID, "uid-after")]);
    let waiting = after
        .wait_status("the recreated pod reporting", READY_TIMEOUT, |_| true)
        .await;
    assert_eq!(waiting.role, InstanceRole::Pending, "{waiting:?}");
    // Several ticks (500 ms each) later it still has not started postgres.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = after.try_status().await.expect("status");
    assert_eq!(still.role, InstanceRole::Pending, "{still:?}");
    assert!(!still.ready);
    // (The crashed server's postmaster.pid stays behind; its process is gone.)
    let running = after
        .postmaster_pid()
        .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(
        !running,
        "postgres started before the operator confirmed the new pod"
    );
    assert!(
        after.log_tail().contains("an earlier pod of that name"),
        "the log says why it waits:\n{}",
        after.log_tail()
    );

    cluster.name_primary_object("db-0", "uid-after");
    let confirmed = after.wait_ready(InstanceRole::Primary).await;
    assert_eq!(confirmed.primary_pod.as_deref(), Some("db-0"));
}
