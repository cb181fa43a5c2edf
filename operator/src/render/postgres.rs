//! Postgres per shard: a primary StatefulSet and a replica StatefulSet, each with a headless
//! Service, plus the bootstrap scripts they share.
//!
//! Replication is real streaming replication: the primary's init script creates a `replicator`
//! role and a `pg_hba` line for it; each replica, on an empty volume, clones the primary with
//! `pg_basebackup -R` (which writes `standby.signal` and `primary_conninfo`) and then runs as a
//! hot standby.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, KeyToPath, PodSpec, Probe, SecretKeySelector, Volume, VolumeMount,
};

use super::config::{DATABASE_NAME, DATABASE_USER};
use super::secrets::{
    POSTGRES_APP_KEY, POSTGRES_REPLICATION_KEY, POSTGRES_SUPERUSER_KEY, postgres_secret,
};
use super::storage::{StatefulSetParts, claim, headless_service, stateful_set};
use super::{
    POSTGRES_PORT, ROLE_LABEL, SHARD_LABEL, child_name, object_meta, resources,
    restricted_container, restricted_pod, selector_labels, service_host, shard_name,
};
use crate::children::{Rendered, ShardObjects};
use crate::validate::ValidatedApp;

/// Component label of Postgres pods.
pub const COMPONENT: &str = "postgres";
/// UID of the `postgres` user in the official Alpine image.
const POSTGRES_UID: i64 = 70;
/// Where the volume is mounted; PGDATA is a subdirectory so the volume's lost+found is no problem.
const DATA_MOUNT: &str = "/var/lib/postgresql/data";
const PGDATA: &str = "/var/lib/postgresql/data/pgdata";

/// Run once by the image's entrypoint when the primary's data directory is initialised.
const PRIMARY_INIT: &str = r#"#!/bin/sh
# Creates the application and replication roles and lets replicas connect for streaming.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v app_user="$APP_USER" -v app_password="$APP_PASSWORD" -v app_database="$APP_DATABASE" \
  -v replication_password="$REPLICATION_PASSWORD" <<'SQL'
CREATE ROLE :"app_user" LOGIN PASSWORD :'app_password';
CREATE DATABASE :"app_database" OWNER :"app_user";
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'replication_password';
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
"#;

/// Run by each replica's init container: clone the primary once, when the volume is empty.
const REPLICA_BOOTSTRAP: &str = r#"#!/bin/sh
# Clones the shard's primary into an empty volume; later restarts keep the existing standby.
set -eu
if [ -s "$PGDATA/PG_VERSION" ]; then
  echo "standby data directory exists; nothing to do"
  exit 0
fi
until pg_isready --host "$PRIMARY_HOST" --port 5432 --quiet; do
  echo "waiting for primary $PRIMARY_HOST"
  sleep 2
done
mkdir -p "$PGDATA"
chmod 0700 "$PGDATA"
PGPASSWORD="$REPLICATION_PASSWORD" pg_basebackup --host "$PRIMARY_HOST" --port 5432 \
  --username replicator --pgdata "$PGDATA" --write-recovery-conf --wal-method stream \
  --checkpoint fast --no-password
echo "standby cloned from $PRIMARY_HOST"
"#;

/// The scripts ConfigMap shared by every shard.
pub fn scripts(app: &ValidatedApp) -> ConfigMap {
    ConfigMap {
        metadata: object_meta(app, scripts_name(app), COMPONENT),
        data: Some(BTreeMap::from([
            ("primary-init.sh".to_string(), PRIMARY_INIT.to_string()),
            (
                "replica-bootstrap.sh".to_string(),
                REPLICA_BOOTSTRAP.to_string(),
            ),
        ])),
        ..ConfigMap::default()
    }
}

fn scripts_name(app: &ValidatedApp) -> String {
    child_name(app, "postgres-scripts")
}

/// One shard's objects.
pub fn shard(app: &ValidatedApp, index: u32) -> ShardObjects<Rendered> {
    let replicas = app.spec.database.replicas_per_shard;
    ShardObjects {
        index,
        primary: statefulset(app, index, Role::Primary),
        primary_service: service(app, index, Role::Primary),
        replicas: (replicas > 0).then(|| statefulset(app, index, Role::Replica)),
        replica_service: (replicas > 0).then(|| service(app, index, Role::Replica)),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Primary,
    Replica,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

fn selector(app: &ValidatedApp, index: u32, role: Role) -> BTreeMap<String, String> {
    let mut labels = selector_labels(app, COMPONENT);
    labels.insert(SHARD_LABEL.into(), index.to_string());
    labels.insert(ROLE_LABEL.into(), role.as_str().into());
    labels
}

fn service(app: &ValidatedApp, index: u32, role: Role) -> k8s_openapi::api::core::v1::Service {
    headless_service(
        app,
        shard_name(app, index, role.as_str()),
        COMPONENT,
        selector(app, index, role),
        POSTGRES_PORT,
    )
}

/// Server settings passed as `-c` flags, the same on primary and replicas (a hot standby needs
/// `max_connections` at least as high as its primary's).
pub fn server_settings(app: &ValidatedApp) -> Vec<(String, String)> {
    let mut settings = vec![
        ("listen_addresses".to_string(), "*".to_string()),
        (
            "max_connections".to_string(),
            app.max_connections.to_string(),
        ),
        ("wal_level".to_string(), "replica".to_string()),
        ("max_wal_senders".to_string(), "16".to_string()),
        ("wal_keep_size".to_string(), "1GB".to_string()),
        ("hot_standby".to_string(), "on".to_string()),
        // Replicas tell the primary what they still read, so vacuum does not cancel their queries.
        ("hot_standby_feedback".to_string(), "on".to_string()),
        (
            "password_encryption".to_string(),
            "scram-sha-256".to_string(),
        ),
    ];
    if app.spec.database.synchronous_replication {
        settings.push((
            "synchronous_standby_names".to_string(),
            "ANY 1 (*)".to_string(),
        ));
        settings.push(("synchronous_commit".to_string(), "on".to_string()));
    }
    settings
}

fn secret_env(name: &str, app: &ValidatedApp, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: postgres_secret(app),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn plain_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn statefulset(app: &ValidatedApp, index: u32, role: Role) -> StatefulSet {
    let name = shard_name(app, index, role.as_str());
    let selector = selector(app, index, role);
    let primary_host = service_host(app, &shard_name(app, index, "primary"));
    let mut args = vec!["postgres".to_string()];
    for (key, value) in server_settings(app) {
        args.push("-c".into());
        args.push(format!("{key}={value}"));
    }
    let env = vec![
        plain_env("PGDATA", PGDATA),
        plain_env("POSTGRES_USER", "postgres"),
        secret_env("POSTGRES_PASSWORD", app, POSTGRES_SUPERUSER_KEY),
        plain_env("APP_USER", DATABASE_USER),
        plain_env("APP_DATABASE", DATABASE_NAME),
        secret_env("APP_PASSWORD", app, POSTGRES_APP_KEY),
        secret_env("REPLICATION_PASSWORD", app, POSTGRES_REPLICATION_KEY),
        plain_env("PRIMARY_HOST", primary_host),
    ];
    let probe = |period: i32, failures: i32| Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                "pg_isready".into(),
                "--host".into(),
                "127.0.0.1".into(),
                "--port".into(),
                POSTGRES_PORT.to_string(),
            ]),
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(5),
        ..Probe::default()
    };
    let mounts = |scripts: Option<&str>| {
        let mut mounts = vec![
            VolumeMount {
                name: "data".into(),
                mount_path: DATA_MOUNT.into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "run".into(),
                mount_path: "/var/run/postgresql".into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            },
        ];
        if let Some(path) = scripts {
            mounts.push(VolumeMount {
                name: "scripts".into(),
                mount_path: path.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
        mounts
    };
    let container = Container {
        name: "postgres".into(),
        image: Some(app.spec.database.image.clone()),
        args: Some(args),
        ports: Some(vec![ContainerPort {
            name: Some("postgres".into()),
            container_port: POSTGRES_PORT,
            ..ContainerPort::default()
        }]),
        env: Some(env.clone()),
        resources: Some(resources(&app.spec.database.resources)),
        readiness_probe: Some(probe(5, 3)),
        liveness_probe: Some(probe(15, 6)),
        security_context: Some(restricted_container()),
        volume_mounts: Some(mounts(
            (role == Role::Primary).then_some("/docker-entrypoint-initdb.d"),
        )),
        ..Container::default()
    };
    let init_containers = (role == Role::Replica).then(|| {
        vec![Container {
            name: "clone-primary".into(),
            image: Some(app.spec.database.image.clone()),
            command: Some(vec!["sh".into(), "/scripts/replica-bootstrap.sh".into()]),
            env: Some(env),
            resources: Some(resources(&app.spec.database.resources)),
            security_context: Some(restricted_container()),
            volume_mounts: Some(mounts(Some("/scripts"))),
            ..Container::default()
        }]
    });
    let script = match role {
        Role::Primary => "primary-init.sh",
        Role::Replica => "replica-bootstrap.sh",
    };
    let empty_dir = |name: &str| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    };
    let volumes = vec![
        empty_dir("run"),
        empty_dir("tmp"),
        Volume {
            name: "scripts".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: scripts_name(app),
                items: Some(vec![KeyToPath {
                    key: script.into(),
                    path: script.into(),
                    mode: None,
                }]),
                default_mode: Some(0o555),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mut meta = object_meta(app, name.clone(), COMPONENT);
    if let Some(labels) = meta.labels.as_mut() {
        labels.insert(SHARD_LABEL.into(), index.to_string());
        labels.insert(ROLE_LABEL.into(), role.as_str().into());
    }
    stateful_set(
        app,
        StatefulSetParts {
            meta,
            selector,
            replicas: match role {
                Role::Primary => 1,
                Role::Replica => app.spec.database.replicas_per_shard,
            },
            // Replicas clone independently; no reason to start them one by one.
            pod_management_policy: Some("Parallel"),
            pod: PodSpec {
                automount_service_account_token: Some(false),
                enable_service_links: Some(false),
                security_context: Some(restricted_pod(POSTGRES_UID)),
                // Postgres needs time for a clean shutdown checkpoint.
                termination_grace_period_seconds: Some(60),
                init_containers,
                containers: vec![container],
                volumes: Some(volumes),
                ..PodSpec::default()
            },
            claims: Some(vec![claim(
                "data",
                &app.spec.database.storage.size,
                app.spec.database.storage.storage_class_name.clone(),
            )]),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DataPolicy;
    use crate::test_support::validated_example;

    #[test]
    fn replicas_clone_the_primary_of_their_own_shard_with_pg_basebackup() {
        let app = validated_example("shop");
        let shard = shard(&app, 1);
        let replicas = shard.replicas.expect("replicas").spec.expect("spec");
        assert_eq!(
            replicas.replicas,
            Some(app.spec.database.replicas_per_shard)
        );
        let pod = replicas.template.spec.expect("pod");
        let init = &pod.init_containers.expect("init")[0];
        let env = init.env.clone().expect("env");
        let primary = env
            .iter()
            .find(|e| e.name == "PRIMARY_HOST")
            .and_then(|e| e.value.clone());
        assert_eq!(primary.as_deref(), Some("shop-shard-1-primary.default.svc"));
        assert!(REPLICA_BOOTSTRAP.contains("pg_basebackup"));
        assert!(REPLICA_BOOTSTRAP.contains("--write-recovery-conf"));
    }

    #[test]
    fn the_primary_allows_replication_and_sizes_max_connections() {
        let app = validated_example("shop");
        assert!(PRIMARY_INIT.contains("WITH REPLICATION"));
        assert!(PRIMARY_INIT.contains("host replication replicator"));
        let settings = server_settings(&app);
        let max = settings
            .iter()
            .find(|(k, _)| k == "max_connections")
            .map(|(_, v)| v.clone());
        assert_eq!(max, Some(app.max_connections.to_string()));
        assert!(
            settings
                .iter()
                .all(|(k, _)| k != "synchronous_standby_names")
        );
    }

    #[test]
    fn synchronous_replication_waits_for_any_one_replica() {
        let mut app = validated_example("shop");
        app.spec.database.synchronous_replication = true;
        assert!(
            server_settings(&app)
                .contains(&("synchronous_standby_names".into(), "ANY 1 (*)".into()))
        );
    }

    #[test]
    fn volume_retention_follows_the_data_policy() {
        let mut app = validated_example("shop");
        for (policy, expected) in [
            (DataPolicy::Retain, "Retain"),
            (DataPolicy::Delete, "Delete"),
        ] {
            app.spec.data_policy = policy;
            let spec = shard(&app, 0).primary.spec.expect("spec");
            let retention = spec
                .persistent_volume_claim_retention_policy
                .expect("retention");
            assert_eq!(retention.when_deleted.as_deref(), Some(expected));
            assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
        }
    }

    #[test]
    fn zero_replicas_per_shard_renders_no_replica_objects() {
        let mut app = validated_example("shop");
        app.spec.database.replicas_per_shard = 0;
        let shard = shard(&app, 0);
        assert!(shard.replicas.is_none() && shard.replica_service.is_none());
    }
}
