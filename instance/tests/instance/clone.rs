//! Cloning: a clone killed half-way is thrown away and done again, and nothing half-cloned ever
//! sits at the data directory.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use scaled_contract::instance::{IDENTITY_FILE, InstanceRole};

use crate::support::{Cluster, Options, READY_TIMEOUT, eventually, pids_with};

/// Watches `data_dir` until stopped: it must be absent or complete, never partial.
fn watch_data_dir(
    data_dir: PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut violations = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if data_dir.exists()
                && !(data_dir.join("PG_VERSION").exists()
                    && data_dir.join(IDENTITY_FILE).exists()
                    && data_dir.join("standby.signal").exists())
            {
                // The rename is atomic, so this must never be seen.
                let listing: Vec<String> = std::fs::read_dir(&data_dir)
                    .map(|entries| {
                        entries
                            .filter_map(Result::ok)
                            .map(|entry| entry.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                violations.push(format!("incomplete data directory: {listing:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        violations
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_killed_half_way_is_redone_from_scratch_and_never_appears_finished() {
    let cluster = Cluster::new(Options {
        instances: 2,
        // Slow enough to kill it half-way on any machine: ~30MB at 2MB/s.
        clone_max_rate: Some(2048),
        ..Options::default()
    });
    cluster.name_primary("db-0");
    let mut primary = cluster.start(0);
    primary.wait_ready(InstanceRole::Primary).await;
    primary
        .app()
        .await
        .batch_execute("CREATE TABLE survivors (id int); INSERT INTO survivors VALUES (42)")
        .await
        .expect("write on the primary");

    let data_dir = cluster.pods[1].data_dir.clone();
    let scratch = cluster.pods[1].volume.join("pgdata.clone.tmp");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_data_dir(data_dir.clone(), stop.clone());

    let mut replica = cluster.start(1);
    let scratch_text = scratch.display().to_string();
    eventually(
        "pg_basebackup copying into the scratch directory",
        READY_TIMEOUT,
        || async {
            let running = !pids_with(&["pg_basebackup", &scratch_text]).is_empty();
            let copied = std::fs::read_dir(scratch.join("base"))
                .map(|entries| entries.count())
                .unwrap_or(0);
            (running && copied > 0).then_some(())
        },
    )
    .await;
    let status = replica.try_status().await.expect("status while cloning");
    assert_eq!(status.role, InstanceRole::Cloning);
    kill(Pid::from_raw(replica.pid()), Signal::SIGKILL).expect("kill the manager");
    // pg_basebackup and its forked WAL streamer, as the container's death would take both.
    for pid in pids_with(&["pg_basebackup", &scratch_text]) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    replica.wait_exit(Duration::from_secs(30)).await;
    eventually("pg_basebackup gone", Duration::from_secs(30), || async {
        pids_with(&["pg_basebackup", &scratch_text])
            .is_empty()
            .then_some(())
    })
    .await;
    drop(replica);
    assert!(
        !data_dir.exists(),
        "a killed clone leaves nothing at the data directory"
    );
    assert!(
        scratch.exists(),
        "the half clone is left in its scratch directory"
    );

    // Again, at full speed this time.
    cluster.write_config(1, |config| config.clone_max_rate_kib_per_second = None);
    let mut replica = cluster.start(1);
    let status = replica.wait_ready(InstanceRole::Replica).await;
    assert_eq!(status.reclones, 0, "a fresh clone, not a re-clone");
    stop.store(true, Ordering::Relaxed);
    let violations = watcher.join().expect("the watcher ends");
    assert!(violations.is_empty(), "{violations:?}");
    assert!(!scratch.exists(), "the leftover was removed");
    let client = replica.app().await;
    let id: i32 = client
        .query_one("SELECT id FROM survivors", &[])
        .await
        .expect("the row arrived")
        .get(0);
    assert_eq!(id, 42);
}
