//! Starting and stopping: SIGTERM is a clean stop, Postgres dying on its own ends the manager,
//! refused data directories are reported and left untouched, and a waiting instance reports what
//! its data directory holds.

use std::time::Duration;

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use scaled_contract::instance::{
    InstanceRole, REASON_FOREIGN_DATA_DIRECTORY, REASON_MAJOR_VERSION_MISMATCH,
};

use crate::support::{
    Cluster, Options, READY_TIMEOUT, as_service_user, cluster_state, give_to_service_user, pg_bin,
    process_running_with, tree_checksum, write_identity,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_postgres_cleanly_and_the_manager_exits_zero() {
    let cluster = Cluster::new(Options::default());
    cluster.name_primary("db-0");
    let mut node = cluster.start(0);
    node.wait_ready(InstanceRole::Primary).await;
    let postmaster = node.postmaster_pid().expect("postgres runs");
    let data_dir = node.pod.data_dir.clone();
    let status = node.stop().await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert_eq!(cluster_state(&data_dir), "shut down");
    assert!(
        kill(Pid::from_raw(postmaster), None).is_err(),
        "the postmaster is gone"
    );
    assert!(!process_running_with(&data_dir.display().to_string()));
    assert!(!data_dir.join("postmaster.pid").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dying_on_its_own_makes_the_manager_exit_non_zero() {
    let cluster = Cluster::new(Options::default());
    cluster.name_primary("db-0");
    let mut node = cluster.start(0);
    node.wait_ready(InstanceRole::Primary).await;
    let postmaster = node.postmaster_pid().expect("postgres runs");
    kill(Pid::from_raw(postmaster), Signal::SIGKILL).expect("kill the postmaster");
    let status = node.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success(), "{status}");
}

async fn assert_refused_and_untouched(cluster: &Cluster, reason: &str) {
    let data_dir = cluster.pods[0].data_dir.clone();
    let before = tree_checksum(&cluster.pods[0].volume);
    cluster.name_primary("db-0");
    let mut node = cluster.start(0);
    let status = node
        .wait_status("refused", READY_TIMEOUT, |status| {
            status.role == InstanceRole::Refused
        })
        .await;
    let problem = status.problem.clone().expect("a problem");
    assert_eq!(problem.reason, reason, "{problem:?}");
    assert!(
        problem.message.contains(&data_dir.display().to_string()),
        "{problem:?}"
    );
    assert_eq!(node.get("/readyz").await.0, 503);
    assert_eq!(
        node.get("/healthz").await.0,
        200,
        "refusing is working as intended"
    );
    // Several more steps, then compare every byte, mode and mtime.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = node.try_status().await.expect("still serving /status");
    assert_eq!(still.role, InstanceRole::Refused);
    drop(node);
    assert_eq!(
        tree_checksum(&cluster.pods[0].volume),
        before,
        "the volume was modified"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_another_major_version_is_refused_and_left_untouched() {
    let cluster = Cluster::new(Options::default());
    let data_dir = cluster.pods[0].data_dir.clone();
    std::fs::create_dir_all(data_dir.join("base/1")).expect("mkdir");
    std::fs::write(data_dir.join("PG_VERSION"), "14\n").expect("write");
    std::fs::write(data_dir.join("base/1/1259"), vec![7u8; 8192]).expect("write");
    std::fs::write(data_dir.join("postgresql.conf"), "port = 5432\n").expect("write");
    write_identity(&data_dir, crate::support::SCALED_APP);
    give_to_service_user(&cluster.pods[0].volume);
    assert_refused_and_untouched(&cluster, REASON_MAJOR_VERSION_MISMATCH).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_this_scaled_app_did_not_create_is_refused_and_left_untouched() {
    let cluster = Cluster::new(Options::default());
    let data_dir = cluster.pods[0].data_dir.clone();
    let pwfile = cluster.dir().join("pw");
    std::fs::write(&pwfile, "someone's password\n").expect("write");
    give_to_service_user(&pwfile);
    let output = as_service_user(pg_bin("initdb"))
        .arg("-D")
        .arg(&data_dir)
        .args(["--auth=scram-sha-256", "-U", "someone", "-N"])
        .arg(format!("--pwfile={}", pwfile.display()))
        .output()
        .expect("initdb runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    give_to_service_user(&cluster.pods[0].volume);
    assert_refused_and_untouched(&cluster, REASON_FOREIGN_DATA_DIRECTORY).await;

    // Another ScaledApp's identity is just as foreign.
    write_identity(&data_dir, "someone-else");
    give_to_service_user(&cluster.pods[0].volume);
    assert_refused_and_untouched(&cluster, REASON_FOREIGN_DATA_DIRECTORY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_instance_reports_what_its_retained_data_holds_and_starts_only_when_named() {
    let cluster = Cluster::new(Options::default());
    cluster.name_primary("db-0");
    let mut node = cluster.start(0);
    let first = node.wait_ready(InstanceRole::Primary).await;
    node.app()
        .await
        .batch_execute("CREATE TABLE kept (id int); INSERT INTO kept VALUES (1)")
        .await
        .expect("write");
    assert!(node.stop().await.success());

    cluster.hide_record();
    let mut node = cluster.start(0);
    let pending = node
        .wait_status("pending with data facts", READY_TIMEOUT, |status| {
            status.role == InstanceRole::Pending && status.current_lsn.is_some()
        })
        .await;
    assert!(!pending.ready);
    assert_eq!(pending.data_major_version, Some(15));
    assert_eq!(pending.server_major_version, Some(15));
    assert_eq!(pending.system_identifier, first.system_identifier);
    assert_eq!(pending.timeline, Some(1));
    assert!(pending.current_lsn.expect("checkpoint") > 0);
    assert_eq!(node.get("/readyz").await.0, 503);
    assert!(
        node.postmaster_pid().is_none(),
        "nothing runs before the record confirms"
    );

    // A record that names nobody is not a confirmation either.
    std::fs::write(&cluster.record, "\n").expect("write");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        node.try_status().await.expect("status").role,
        InstanceRole::Pending
    );

    cluster.name_primary("db-0");
    let running = node.wait_ready(InstanceRole::Primary).await;
    assert_eq!(
        running.system_identifier, first.system_identifier,
        "the same data, not a new initdb"
    );
    let count: i64 = node
        .app()
        .await
        .query_one("SELECT count(*) FROM kept", &[])
        .await
        .expect("read")
        .get(0);
    assert_eq!(count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_initdb_directory_is_removed_and_initdb_is_done_again() {
    let cluster = Cluster::new(Options::default());
    let leftover = cluster.pods[0].volume.join("pgdata.initdb.tmp");
    std::fs::create_dir_all(leftover.join("base")).expect("mkdir");
    std::fs::write(leftover.join("PG_VERSION"), "15\n").expect("write");
    give_to_service_user(&cluster.pods[0].volume);
    cluster.name_primary("db-0");
    let mut node = cluster.start(0);
    node.wait_ready(InstanceRole::Primary).await;
    assert!(!leftover.exists(), "the half-made cluster was removed");

    // `status` prints the same document the port serves.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_scaled-instance"))
        .arg("status")
        .arg("--url")
        .arg(format!("http://127.0.0.1:{}", node.pod.status_port))
        .output()
        .expect("run status");
    assert!(output.status.success());
    let printed: scaled_contract::instance::InstanceStatus =
        serde_json::from_slice(&output.stdout).expect("a status document");
    assert_eq!(printed.role, InstanceRole::Primary);
    assert_eq!(printed.pod, "db-0");
}

#[test]
fn copy_to_installs_an_executable_copy_of_the_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_scaled-instance"))
        .arg("copy-to")
        .arg(dir.path())
        .output()
        .expect("run copy-to");
    assert!(output.status.success(), "{output:?}");
    let copy = dir.path().join("scaled-instance");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&copy).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
    assert_eq!(
        std::fs::read(&copy).expect("read the copy"),
        std::fs::read(env!("CARGO_BIN_EXE_scaled-instance")).expect("read the original")
    );
    let version = std::process::Command::new(&copy)
        .arg("--version")
        .output()
        .expect("the copy runs");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("scaled-instance "));
}
