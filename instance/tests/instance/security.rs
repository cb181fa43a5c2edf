//! Authentication: SCRAM passwords everywhere, no `trust`, the superuser only over the local
//! socket, passwords followed when the Secret changes, and no password in any output.

use std::time::Duration;

use scaled_contract::instance::{InstanceRole, SETTINGS_FILE};
use tokio_postgres::error::SqlState;

use crate::support::{
    APP_PASSWORD, APP_USER, Cluster, Options, REPLICATION_PASSWORD, REPLICATION_USER,
    SUPERUSER_PASSWORD,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_right_scram_password_opens_the_database_and_the_superuser_stays_local() {
    let cluster = Cluster::new(Options::default());
    cluster.name_primary("db-0");
    let mut node = cluster.start(0);
    node.wait_ready(InstanceRole::Primary).await;

    let app = node.app().await;
    let row = app
        .query_one("SELECT current_user::text, current_database()::text", &[])
        .await
        .expect("the app role works");
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        (APP_USER.into(), APP_USER.into())
    );
    let owner: String = app
        .query_one(
            "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .expect("owner")
        .get(0);
    assert_eq!(owner, APP_USER, "the database belongs to the app role");
    let method: String = app
        .query_one(
            "SELECT left(rolpassword, 13) FROM pg_authid WHERE rolname = 'app'",
            &[],
        )
        .await
        .map(|row| row.get(0))
        .unwrap_or_else(|_| "not readable by the app role".into());
    assert_eq!(method, "not readable by the app role");

    let wrong = node
        .connect_tcp(APP_USER, "not-the-password", APP_USER)
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(wrong.code(), Some(&SqlState::INVALID_PASSWORD), "{wrong}");

    let remote_superuser = node
        .connect_tcp("postgres", SUPERUSER_PASSWORD, "postgres")
        .await
        .expect_err("the superuser may not connect over TCP, even with its password");
    assert_eq!(
        remote_superuser.code(),
        Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{remote_superuser}"
    );

    let superuser = node.superuser().await;
    let verifier: String = superuser
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'",
            &[],
        )
        .await
        .expect("read the superuser's verifier")
        .get(0);
    assert!(
        verifier.starts_with("SCRAM-SHA-256$"),
        "stored as a SCRAM verifier"
    );
    let rules: Vec<String> = superuser
        .query("SELECT auth_method FROM pg_hba_file_rules", &[])
        .await
        .expect("read the hba rules")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(!rules.is_empty());
    assert!(!rules.iter().any(|method| method == "trust"), "{rules:?}");
    let hba = std::fs::read_to_string(node.pod.data_dir.join("pg_hba.conf")).expect("pg_hba.conf");
    assert!(!hba.contains("trust"), "{hba}");

    let replication = node
        .connect_tcp(REPLICATION_USER, REPLICATION_PASSWORD, "postgres")
        .await
        .expect("the replication role may use database postgres (pg_rewind)");
    let files: i64 = replication
        .query_one("SELECT count(*) FROM pg_ls_dir('.', true, false)", &[])
        .await
        .expect("pg_rewind's functions are granted")
        .get(0);
    assert!(files > 0);
    node.connect_tcp(REPLICATION_USER, REPLICATION_PASSWORD, APP_USER)
        .await
        .expect_err("the replication role has no business in the app database");

    // No password in any output: the endpoints, the settings file, the log, postgres's environment.
    let secrets = [SUPERUSER_PASSWORD, REPLICATION_PASSWORD, APP_PASSWORD];
    for path in ["/status", "/metrics", "/readyz", "/healthz"] {
        let (_, body) = node.get(path).await;
        for secret in secrets {
            assert!(!body.contains(secret), "{path} shows a password");
        }
    }
    let settings =
        std::fs::read_to_string(node.pod.data_dir.join(SETTINGS_FILE)).expect("scaled.conf");
    let log = std::fs::read_to_string(&node.pod.log).expect("the manager log");
    let postmaster = node.postmaster_pid().expect("postgres runs");
    let environment = std::fs::read(format!("/proc/{postmaster}/environ")).expect("environ");
    let environment = String::from_utf8_lossy(&environment);
    for secret in secrets {
        assert!(!settings.contains(secret), "scaled.conf holds a password");
        assert!(!log.contains(secret), "the log holds a password");
        assert!(
            !environment.contains(secret),
            "postgres inherited a password"
        );
    }
    assert!(
        !std::fs::read_dir(node.pod.volume.clone())
            .expect("list the volume")
            .any(|entry| entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .contains("pwfile")),
        "initdb's password file was deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_app_password_in_the_secret_is_followed_after_a_restart() {
    let cluster = Cluster::new(Options::default());
    cluster.name_primary("db-0");
    let mut node = cluster.start(0);
    node.wait_ready(InstanceRole::Primary).await;
    node.app().await;
    assert!(node.stop().await.success());

    let rotated = "app-Rotated-51f";
    let mut node = cluster.start_with(0, &[(scaled_contract::instance::ENV_APP_PASSWORD, rotated)]);
    node.wait_ready(InstanceRole::Primary).await;
    crate::support::eventually(
        "the new password works",
        Duration::from_secs(60),
        || async { node.connect_tcp(APP_USER, rotated, APP_USER).await.ok() },
    )
    .await;
    let old = node
        .connect_tcp(APP_USER, APP_PASSWORD, APP_USER)
        .await
        .expect_err("the old password no longer works");
    assert_eq!(old.code(), Some(&SqlState::INVALID_PASSWORD), "{old}");
}
