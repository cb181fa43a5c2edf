//! Streaming replicas: their own slots, catching up after a stop, and a re-clone when the slot
//! was invalidated.

use std::time::Duration;

use scaled_contract::instance::InstanceRole;

use crate::support::{Cluster, Options, READY_TIMEOUT, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_and_two_replicas_stream_through_their_own_slots_and_see_the_same_rows() {
    let cluster = Cluster::new(Options {
        instances: 3,
        ..Options::default()
    });
    cluster.name_primary("db-0");
    let mut primary = cluster.start(0);
    let mut first = cluster.start(1);
    let mut second = cluster.start(2);
    primary.wait_ready(InstanceRole::Primary).await;
    let first_status = first.wait_ready(InstanceRole::Replica).await;
    second.wait_ready(InstanceRole::Replica).await;
    assert_eq!(first_status.primary_pod.as_deref(), Some("db-0"));

    let superuser = primary.superuser().await;
    let pairs = eventually(
        "both replicas streaming on their own slots",
        READY_TIMEOUT,
        || async {
            let rows = superuser
                .query(
                    "SELECT r.application_name::text, s.slot_name::text \
                 FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid \
                 WHERE r.state = 'streaming' ORDER BY 1",
                    &[],
                )
                .await
                .expect("query pg_stat_replication");
            let pairs: Vec<(String, String)> =
                rows.iter().map(|row| (row.get(0), row.get(1))).collect();
            (pairs.len() == 2).then_some(pairs)
        },
    )
    .await;
    assert_eq!(
        pairs,
        vec![
            ("db-1".to_string(), "db_1".to_string()),
            ("db-2".to_string(), "db_2".to_string())
        ]
    );

    let app = primary.app().await;
    app.batch_execute("CREATE TABLE greetings (id int PRIMARY KEY, text text); INSERT INTO greetings VALUES (1, 'hello')")
        .await
        .expect("write on the primary");
    for replica in [&first, &second] {
        let client = replica.app().await;
        let text = eventually(
            "the row on the replica",
            Duration::from_secs(60),
            || async {
                client
                    .query_opt("SELECT text FROM greetings WHERE id = 1", &[])
                    .await
                    .ok()
                    .flatten()
                    .map(|row| row.get::<_, String>(0))
            },
        )
        .await;
        assert_eq!(text, "hello");
        let error = client
            .batch_execute("INSERT INTO greetings VALUES (2, 'nope')")
            .await
            .expect_err("a replica is read-only");
        assert_eq!(
            error.code(),
            Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
            "{error:?}"
        );
    }

    let status = primary
        .wait_status("both replicas listed", READY_TIMEOUT, |status| {
            status.streaming_replicas.len() == 2
        })
        .await;
    assert_eq!(status.streaming_replicas, vec!["db-1", "db-2"]);
    let replica = first
        .wait_status("lag measured", READY_TIMEOUT, |status| {
            status.lag_bytes == Some(0) && status.replayed_lsn.is_some()
        })
        .await;
    assert_eq!(replica.system_identifier, status.system_identifier);
    let (code, metrics) = first.get("/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("scaled_instance_role{role=\"Replica\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("scaled_instance_up 1"));
    assert!(metrics.contains("scaled_instance_replication_lag_bytes 0"));
}

/// Writes about `megabytes` of WAL on `client`'s server and switches to a new segment.
async fn write_wal(client: &tokio_postgres::Client, megabytes: u32) {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS ballast (filler text)")
        .await
        .expect("create the ballast table");
    for _ in 0..megabytes {
        client
            .batch_execute("INSERT INTO ballast SELECT repeat(md5(random()::text), 32) FROM generate_series(1, 900)")
            .await
            .expect("write ballast");
    }
    client
        .batch_execute("SELECT pg_switch_wal()")
        .await
        .expect("switch WAL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_catches_up_from_its_slot_without_a_reclone() {
    let cluster = Cluster::new(Options {
        instances: 2,
        parameters: vec![
            ("wal_keep_size", "16MB"),
            ("max_slot_wal_keep_size", "1GB"),
            ("max_wal_size", "64MB"),
            ("min_wal_size", "32MB"),
        ],
        reclone_after_seconds: 10,
        ..Options::default()
    });
    cluster.name_primary("db-0");
    let mut primary = cluster.start(0);
    let mut replica = cluster.start(1);
    primary.wait_ready(InstanceRole::Primary).await;
    replica.wait_ready(InstanceRole::Replica).await;
    let stopped = replica.stop().await;
    assert!(stopped.success(), "{stopped}");

    let superuser = primary.superuser().await;
    write_wal(&superuser, 64).await;
    superuser
        .batch_execute("CHECKPOINT; INSERT INTO ballast VALUES ('marker'); CHECKPOINT")
        .await
        .expect("checkpoint");
    let row = superuser
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, \
                    restart_lsn::text, wal_status \
             FROM pg_replication_slots WHERE slot_name = 'db_1'",
            &[],
        )
        .await
        .expect("the replica's slot");
    let (held, restart_lsn, wal_status): (i64, String, String) =
        (row.get(0), row.get(1), row.get(2));
    assert!(
        held > 4 * 16 * 1024 * 1024,
        "far more WAL than wal_keep_size (16MB) waits in the slot: {held}"
    );
    assert_ne!(wal_status, "lost");
    // The segment holding the slot's restart point would be recycled without the slot.
    let lsn = scaled_contract::instance::parse_lsn(&restart_lsn).expect("an LSN");
    let segment = lsn / (16 * 1024 * 1024);
    let name = format!("{:08X}{:08X}{:08X}", 1, segment / 256, segment % 256);
    let kept = superuser
        .query_opt("SELECT 1 FROM pg_ls_waldir() WHERE name = $1", &[&name])
        .await
        .expect("list WAL");
    assert!(kept.is_some(), "the slot keeps {name}");

    let mut replica = cluster.start(1);
    replica.wait_ready(InstanceRole::Replica).await;
    let superuser_on_replica = replica.superuser().await;
    eventually("the replica replays the marker", READY_TIMEOUT, || async {
        superuser_on_replica
            .query_opt("SELECT 1 FROM ballast WHERE filler = 'marker'", &[])
            .await
            .ok()
            .flatten()
    })
    .await;
    let status = replica.try_status().await.expect("status");
    assert_eq!(status.reclones, 0, "{status:?}");
    assert_eq!(status.last_reclone_reason, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_makes_the_replica_clone_again_and_say_why() {
    let cluster = Cluster::new(Options {
        instances: 2,
        parameters: vec![
            ("wal_keep_size", "0"),
            ("max_slot_wal_keep_size", "32MB"),
            ("max_wal_size", "48MB"),
            ("min_wal_size", "32MB"),
        ],
        reclone_after_seconds: 5,
        ..Options::default()
    });
    cluster.name_primary("db-0");
    let mut primary = cluster.start(0);
    let mut replica = cluster.start(1);
    primary.wait_ready(InstanceRole::Primary).await;
    let before = replica.wait_ready(InstanceRole::Replica).await;
    assert_eq!(before.reclones, 0);
    assert!(replica.stop().await.success());

    let superuser = primary.superuser().await;
    eventually("the slot to be invalidated", READY_TIMEOUT, || async {
        write_wal(&superuser, 16).await;
        superuser
            .batch_execute("CHECKPOINT")
            .await
            .expect("checkpoint");
        let status: Option<String> = superuser
            .query_one(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'db_1'",
                &[],
            )
            .await
            .expect("slot state")
            .get(0);
        (status.as_deref() == Some("lost")).then_some(())
    })
    .await;
    superuser
        .batch_execute("INSERT INTO ballast VALUES ('after the loss')")
        .await
        .expect("write after the loss");

    let mut replica = cluster.start(1);
    let status = replica
        .wait_status("a re-clone, ready again", READY_TIMEOUT, |status| {
            status.reclones == 1 && status.ready && status.role == InstanceRole::Replica
        })
        .await;
    let reason = status.last_reclone_reason.expect("a reason");
    assert!(
        reason.contains("db_1") && reason.contains("invalidated"),
        "{reason}"
    );
    let client = replica.superuser().await;
    eventually(
        "the latest row on the re-cloned replica",
        READY_TIMEOUT,
        || async {
            client
                .query_opt("SELECT 1 FROM ballast WHERE filler = 'after the loss'", &[])
                .await
                .ok()
                .flatten()
        },
    )
    .await;
    let (_, metrics) = replica.get("/metrics").await;
    assert!(
        metrics.contains("scaled_instance_reclones_total 1"),
        "{metrics}"
    );
    // The primary made it a fresh slot, and the replica streams from it.
    let active: bool = superuser
        .query_one(
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'db_1'",
            &[],
        )
        .await
        .expect("slot")
        .get(0);
    assert!(active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_synchronous_replication_a_new_primary_bootstraps_alone_and_its_commits_then_wait_for_a_replica()
 {
    let cluster = Cluster::new(Options {
        instances: 2,
        synchronous_replication: true,
        ..Options::default()
    });
    cluster.name_primary("db-0");
    let mut primary = cluster.start(0);
    // Ready with no replica running: bootstrap (roles, the database) commits locally.
    primary.wait_ready(InstanceRole::Primary).await;

    let mut replica = cluster.start(1);
    replica.wait_ready(InstanceRole::Replica).await;
    let superuser = primary.superuser().await;
    let state = eventually(
        "the replica to be the synchronous standby",
        READY_TIMEOUT,
        || async {
            superuser
                .query_opt(
                    "SELECT sync_state::text FROM pg_stat_replication WHERE application_name = 'db-1'",
                    &[],
                )
                .await
                .ok()
                .flatten()
                .map(|row| row.get::<_, String>(0))
                .filter(|state| state != "async")
        },
    )
    .await;
    assert!(state == "quorum" || state == "sync", "{state}");
    let app = primary.app().await;
    app.batch_execute(
        "CREATE TABLE acknowledged (id int PRIMARY KEY); INSERT INTO acknowledged VALUES (1)",
    )
    .await
    .expect("a commit acknowledged by the standby");
    // The app's commits do wait for the standby: with it stopped, one does not return.
    replica.stop().await;
    let waiting = tokio::time::timeout(
        Duration::from_secs(3),
        app.batch_execute("INSERT INTO acknowledged VALUES (2)"),
    )
    .await;
    assert!(
        waiting.is_err(),
        "a commit returned with no standby: {waiting:?}"
    );
}
