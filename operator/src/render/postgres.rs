//! Postgres per shard: one StatefulSet `<name>-shard-N` of `1 + replicasPerShard` pods, run by
//! the project's own instance manager (`scaled-instance`), not by any image's entrypoint.
//!
//! An init container copies `scaled-instance` from the operator's image into the pod; it then
//! runs as the Postgres container's PID 1 with only the server binaries taken from the Postgres
//! image. It initialises or clones the data directory, writes `postgresql.conf` and `pg_hba.conf`
//! from the `<name>-postgres-config` ConfigMap, and serves `/status`, `/healthz`, `/readyz` and
//! `/metrics` on its own port. Which pod is primary is decided by the operator and recorded in the
//! ScaledApp's status (`shards[].primaryPod`); the instance managers read it through a
//! ServiceAccount that may only read this one ScaledApp, and the operator moves the pods' role
//! label, which the `-primary` and `-replica` Services select on.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    HTTPGetAction, PodSpec, Probe, ResourceRequirements, ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use scaled_contract::instance::{
    DEFAULT_RECLONE_AFTER_SECONDS, ENV_APP_PASSWORD, ENV_INSTANCE_NAMESPACE,
    ENV_INSTANCE_PEER_DOMAIN, ENV_INSTANCE_POD, ENV_INSTANCE_POD_UID, ENV_INSTANCE_SHARD,
    ENV_REPLICATION_PASSWORD, ENV_SUPERUSER_PASSWORD, INSTANCE_CONFIG_DIR, INSTANCE_CONFIG_KEY,
    INSTANCE_SCHEMA_VERSION, INSTANCE_STATUS_PORT, InstanceConfig,
};
use scaled_contract::replication;

use super::secrets::{
    POSTGRES_APP_KEY, POSTGRES_REPLICATION_KEY, POSTGRES_SUPERUSER_KEY, postgres_secret,
};
use super::storage::{Addressing, StatefulSetParts, claim, service, stateful_set};
use super::{
    child_name, field_env, image_pull_secrets, object_meta, plain_env, resources,
    restricted_container, restricted_pod, secret_env, selector_labels, service_host,
};
use crate::children::{PostgresAccess, Rendered, ShardObjects};
use crate::names::{
    CONFIG_HASH_ANNOTATION, DATABASE_NAME, DATABASE_USER, POSTGRES_PORT, ROLE_LABEL, SHARD_LABEL,
};
use crate::validate::ValidatedApp;

pub use crate::names::{POSTGRES_COMPONENT as COMPONENT, PRIMARY_ROLE, REPLICA_ROLE};
/// Where the data volume is mounted; PGDATA is a subdirectory so the volume's `lost+found`
/// never gets in the way, and so clones can be built beside it and renamed into place.
const DATA_MOUNT: &str = "/var/lib/postgresql/data";
const DATA_DIR: &str = "/var/lib/postgresql/data/pgdata";
/// Where the init container puts `scaled-instance`.
const BIN_MOUNT: &str = "/scaled/bin";
/// The instance manager inside the Postgres container.
pub const INSTANCE_BINARY: &str = "/scaled/bin/scaled-instance";
/// Replication role name.
pub const REPLICATION_USER: &str = "replicator";

/// The ConfigMap with the instance managers' shared settings.
pub fn config_map(app: &ValidatedApp) -> ConfigMap {
    ConfigMap {
        metadata: object_meta(app, config_name(app), COMPONENT),
        data: Some(BTreeMap::from([(
            INSTANCE_CONFIG_KEY.to_string(),
            serde_json::to_string_pretty(&instance_config(app))
                .expect("the instance config serialises"),
        )])),
        ..ConfigMap::default()
    }
}

fn config_name(app: &ValidatedApp) -> String {
    child_name(app, "postgres-config")
}

/// Name of a shard's StatefulSet and of its pods' headless Service.
pub fn shard_set_name(app: &ValidatedApp, index: u32) -> String {
    crate::names::shard_set_name(&app.name, index)
}

/// Name of a shard's role Service (`primary` or `replica`).
pub fn shard_service_name(app: &ValidatedApp, index: u32, role: &str) -> String {
    crate::names::shard_service_name(&app.name, index, role)
}

/// What every instance manager of this ScaledApp is told.
pub fn instance_config(app: &ValidatedApp) -> InstanceConfig {
    InstanceConfig {
        schema_version: INSTANCE_SCHEMA_VERSION,
        scaled_app: app.name.clone(),
        data_dir: DATA_DIR.into(),
        bin_dir: app.spec.database.bin_dir.clone(),
        database: DATABASE_NAME.into(),
        app_user: DATABASE_USER.into(),
        replication_user: REPLICATION_USER.into(),
        instances: app.pods_per_shard,
        parameters: server_settings(app),
        synchronous_replication: app.spec.database.synchronous_replication,
        fence_after_seconds: app.spec.database.failover.fence_after_seconds as u32,
        postgres_port: POSTGRES_PORT as u16,
        status_port: INSTANCE_STATUS_PORT,
        reclone_after_seconds: DEFAULT_RECLONE_AFTER_SECONDS,
        clone_max_rate_kib_per_second: None,
    }
}

/// `postgresql.conf` settings, the same on every instance (a hot standby needs
/// `max_connections` at least as high as its primary's, and any replica may become primary).
/// The instance manager adds what it owns: ports, addresses, `wal_log_hints`, the replication
/// source and `synchronous_standby_names`.
pub fn server_settings(app: &ValidatedApp) -> BTreeMap<String, String> {
    let senders = replication::wal_senders(app.pods_per_shard);
    BTreeMap::from([
        ("max_connections".into(), app.max_connections.to_string()),
        ("wal_level".into(), "replica".into()),
        ("max_wal_senders".into(), senders.to_string()),
        ("max_replication_slots".into(), senders.to_string()),
        // What a replica may lag by without a slot (a clone in progress, a replica whose slot
        // was just created); slots hold the rest, up to `max_slot_wal_keep_size`.
        ("wal_keep_size".into(), "256MB".into()),
        // A dead replica's slot may hold at most this much WAL, so it cannot fill the primary's
        // volume. Past that the slot is invalidated and the replica re-clones.
        (
            "max_slot_wal_keep_size".into(),
            replication::slot_wal_keep_setting(app.postgres_volume_mib),
        ),
        // Replicas tell the primary what they still read, so vacuum does not cancel their queries.
        ("hot_standby_feedback".into(), "on".into()),
        ("password_encryption".into(), "scram-sha-256".into()),
    ])
}

/// The ServiceAccount, Role and RoleBinding the instance managers read their ScaledApp with.
pub fn access(app: &ValidatedApp) -> PostgresAccess<Rendered> {
    let name = child_name(app, COMPONENT);
    PostgresAccess {
        service_account: ServiceAccount {
            metadata: object_meta(app, name.clone(), COMPONENT),
            automount_service_account_token: Some(true),
            ..ServiceAccount::default()
        },
        role: Role {
            metadata: object_meta(app, name.clone(), COMPONENT),
            // Only this ScaledApp, only reading: the status names the primary.
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec!["scaled.dev".into()]),
                resources: Some(vec!["scaledapps".into()]),
                resource_names: Some(vec![app.name.clone()]),
                verbs: vec!["get".into(), "watch".into()],
                ..PolicyRule::default()
            }]),
        },
        role_binding: RoleBinding {
            metadata: object_meta(app, name.clone(), COMPONENT),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: name.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name,
                namespace: Some(app.namespace.clone()),
                ..Subject::default()
            }]),
        },
    }
}

/// One shard's objects.
pub fn shard(app: &ValidatedApp, index: u32) -> ShardObjects<Rendered> {
    let set_name = shard_set_name(app, index);
    let pods = shard_selector(app, index);
    let role_service = |role: &str| {
        let mut selector = pods.clone();
        selector.insert(ROLE_LABEL.into(), role.into());
        service(
            shard_meta(app, shard_service_name(app, index, role), index),
            selector,
            &[(COMPONENT, POSTGRES_PORT)],
            Addressing::ClusterIp,
        )
    };
    ShardObjects {
        index,
        statefulset: statefulset(app, index),
        peers: service(
            shard_meta(app, set_name, index),
            pods.clone(),
            &[
                (COMPONENT, POSTGRES_PORT),
                ("status", i32::from(INSTANCE_STATUS_PORT)),
            ],
            // Peers must find the primary's pod by name as soon as it listens, also while it is
            // still catching up or promoting.
            Addressing::Headless { not_ready: true },
        ),
        primary_service: role_service(PRIMARY_ROLE),
        replica_service: (app.spec.database.replicas_per_shard > 0)
            .then(|| role_service(REPLICA_ROLE)),
    }
}

/// Labels selecting every pod of a shard.
pub fn shard_selector(app: &ValidatedApp, index: u32) -> BTreeMap<String, String> {
    let mut labels = selector_labels(app, COMPONENT);
    labels.insert(SHARD_LABEL.into(), index.to_string());
    labels
}

fn shard_meta(
    app: &ValidatedApp,
    name: String,
    index: u32,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    let mut meta = object_meta(app, name, COMPONENT);
    if let Some(labels) = meta.labels.as_mut() {
        labels.insert(SHARD_LABEL.into(), index.to_string());
    }
    meta
}

fn statefulset(app: &ValidatedApp, index: u32) -> StatefulSet {
    let database = &app.spec.database;
    let set_name = shard_set_name(app, index);
    let secret = postgres_secret(app);
    let env = vec![
        field_env(ENV_INSTANCE_POD, "metadata.name"),
        field_env(ENV_INSTANCE_POD_UID, "metadata.uid"),
        field_env(ENV_INSTANCE_NAMESPACE, "metadata.namespace"),
        plain_env(ENV_INSTANCE_SHARD, index.to_string()),
        plain_env(ENV_INSTANCE_PEER_DOMAIN, service_host(app, &set_name)),
        secret_env(
            ENV_SUPERUSER_PASSWORD,
            secret.clone(),
            POSTGRES_SUPERUSER_KEY,
        ),
        secret_env(
            ENV_REPLICATION_PASSWORD,
            secret.clone(),
            POSTGRES_REPLICATION_KEY,
        ),
        secret_env(ENV_APP_PASSWORD, secret, POSTGRES_APP_KEY),
    ];
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("status".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(3),
        ..Probe::default()
    };
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    };
    let container = Container {
        name: COMPONENT.into(),
        image: Some(database.image.clone()),
        // The image's entrypoint is not used: the instance manager is PID 1.
        command: Some(vec![INSTANCE_BINARY.into(), "run".into()]),
        ports: Some(vec![
            ContainerPort {
                name: Some(COMPONENT.into()),
                container_port: POSTGRES_PORT,
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("status".into()),
                container_port: i32::from(INSTANCE_STATUS_PORT),
                ..ContainerPort::default()
            },
        ]),
        env: Some(env),
        resources: Some(resources(&database.resources)),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        // The instance manager answers /healthz through clones and restarts of Postgres; only
        // a stuck manager fails it.
        liveness_probe: Some(probe("/healthz", 10, 6)),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![
            mount("data", DATA_MOUNT, false),
            mount("config", INSTANCE_CONFIG_DIR, true),
            mount("bin", BIN_MOUNT, true),
            mount("run", "/var/run/postgresql", false),
            mount("tmp", "/tmp", false),
        ]),
        ..Container::default()
    };
    let install = Container {
        name: "install-instance-manager".into(),
        image: Some(app.instance_image.clone()),
        // The operator image has no shell: the binary copies itself.
        command: Some(vec![
            "scaled-instance".into(),
            "copy-to".into(),
            BIN_MOUNT.into(),
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("10m".into())),
                ("memory".to_string(), Quantity("16Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("64Mi".into()),
            )])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![mount("bin", BIN_MOUNT, false)]),
        ..Container::default()
    };
    let empty_dir = |name: &str| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    };
    let volumes = vec![
        empty_dir("bin"),
        empty_dir("run"),
        empty_dir("tmp"),
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_name(app),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mut set = stateful_set(
        app,
        StatefulSetParts {
            meta: shard_meta(app, set_name, index),
            selector: shard_selector(app, index),
            replicas: app.pods_per_shard as i32,
            // Each instance manager waits for what it needs (the named primary) by itself; no
            // reason to start the pods one by one.
            pod_management_policy: Some("Parallel"),
            // The operator replaces the pods itself: replicas first, then a switchover, then
            // the old primary, so an update costs one short write pause, not an outage.
            update_strategy: Some("OnDelete"),
            pod: PodSpec {
                service_account_name: Some(child_name(app, COMPONENT)),
                automount_service_account_token: Some(true),
                enable_service_links: Some(false),
                image_pull_secrets: image_pull_secrets(app),
                security_context: Some(restricted_pod(app.postgres_uid)),
                // Postgres needs time for a clean shutdown checkpoint.
                termination_grace_period_seconds: Some(60),
                init_containers: Some(vec![install]),
                containers: vec![container],
                volumes: Some(volumes),
                ..PodSpec::default()
            },
            claims: Some(vec![claim(
                "data",
                &database.storage.size,
                database.storage.storage_class_name.clone(),
            )]),
        },
    );
    // Settings changes (the instance config) roll the pods too, in the same careful order.
    if let Some(template) = set
        .spec
        .as_mut()
        .and_then(|spec| spec.template.metadata.as_mut())
    {
        template.annotations = Some(BTreeMap::from([(
            CONFIG_HASH_ANNOTATION.to_string(),
            instance_config_hash(app),
        )]));
    }
    set
}

/// A short hash of the instance configuration.
fn instance_config_hash(app: &ValidatedApp) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(&instance_config(app)).expect("the instance config serialises");
    hex::encode(&Sha256::digest(&json)[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DataPolicy;
    use crate::test_support::validated_example;

    fn pod(app: &ValidatedApp, index: u32) -> PodSpec {
        shard(app, index)
            .statefulset
            .spec
            .expect("spec")
            .template
            .spec
            .expect("pod")
    }

    #[test]
    fn one_statefulset_per_shard_holds_the_primary_and_its_replicas() {
        let app = validated_example("shop");
        let objects = shard(&app, 1);
        let spec = objects.statefulset.spec.clone().expect("spec");
        assert_eq!(
            objects.statefulset.metadata.name.as_deref(),
            Some("shop-shard-1")
        );
        assert_eq!(
            spec.replicas,
            Some(1 + app.spec.database.replicas_per_shard)
        );
        assert_eq!(spec.service_name.as_deref(), Some("shop-shard-1"));
        let template_labels = spec
            .template
            .metadata
            .and_then(|meta| meta.labels)
            .expect("labels");
        assert!(
            !template_labels.contains_key(ROLE_LABEL),
            "the role is the operator's decision, set on pods, never by the template"
        );
    }

    #[test]
    fn role_services_select_the_role_label_and_the_peer_service_every_pod() {
        let app = validated_example("shop");
        let objects = shard(&app, 0);
        let selector = |service: &k8s_openapi::api::core::v1::Service| {
            service
                .spec
                .as_ref()
                .and_then(|spec| spec.selector.clone())
                .expect("selector")
        };
        assert_eq!(
            selector(&objects.primary_service)
                .get(ROLE_LABEL)
                .map(String::as_str),
            Some(PRIMARY_ROLE)
        );
        let replicas = objects.replica_service.expect("replicas");
        assert_eq!(
            selector(&replicas).get(ROLE_LABEL).map(String::as_str),
            Some(REPLICA_ROLE)
        );
        assert!(!selector(&objects.peers).contains_key(ROLE_LABEL));
        let primary_ip = objects
            .primary_service
            .spec
            .as_ref()
            .and_then(|spec| spec.cluster_ip.clone());
        assert_eq!(primary_ip, None, "a virtual IP follows the label at once");
    }

    #[test]
    fn the_instance_manager_is_pid_1_and_no_entrypoint_or_trust_is_involved() {
        let app = validated_example("shop");
        let pod = pod(&app, 0);
        let postgres = &pod.containers[0];
        assert_eq!(
            postgres.command.as_deref(),
            Some(&[INSTANCE_BINARY.to_string(), "run".to_string()][..])
        );
        assert_eq!(postgres.args, None);
        let install = &pod.init_containers.as_ref().expect("init")[0];
        assert_eq!(install.image.as_deref(), Some(app.instance_image.as_str()));
        let env = postgres.env.clone().expect("env");
        for (variable, key) in [
            (ENV_SUPERUSER_PASSWORD, POSTGRES_SUPERUSER_KEY),
            (ENV_REPLICATION_PASSWORD, POSTGRES_REPLICATION_KEY),
            (ENV_APP_PASSWORD, POSTGRES_APP_KEY),
        ] {
            let reference = env
                .iter()
                .find(|e| e.name == variable)
                .and_then(|e| e.value_from.clone())
                .and_then(|source| source.secret_key_ref)
                .expect("from the Secret");
            assert_eq!(reference.key, key);
            assert_eq!(reference.name, "shop-postgres");
        }
        let config = instance_config(&app);
        assert_eq!(config.instances, 3);
        assert!(
            !serde_json::to_string(&config)
                .expect("json")
                .contains("trust")
        );
    }

    #[test]
    fn max_connections_is_sized_from_the_connection_budget() {
        let app = validated_example("shop");
        let settings = server_settings(&app);
        assert_eq!(settings["max_connections"], app.max_connections.to_string());
        assert!(!settings.contains_key("synchronous_standby_names"));
    }

    #[test]
    fn replication_is_sized_by_the_contracts_rule() {
        // The instance manager's fallback asserts the same figures: 3 instances, a 10 GiB volume.
        let app = validated_example("shop");
        assert_eq!(app.pods_per_shard, 3);
        assert_eq!(app.postgres_volume_mib, 10 * 1024);
        let settings = server_settings(&app);
        assert_eq!(settings["max_wal_senders"], "7");
        assert_eq!(settings["max_replication_slots"], "7");
        assert_eq!(settings["max_slot_wal_keep_size"], "2560MB");
    }

    #[test]
    fn the_pods_run_as_the_images_postgres_user_and_read_only_their_scaledapp() {
        let app = validated_example("shop");
        let pod = pod(&app, 0);
        let security = pod.security_context.expect("security");
        assert_eq!(security.run_as_user, Some(app.postgres_uid));
        assert_eq!(security.fs_group, Some(app.postgres_uid));
        let rules = access(&app).role.rules.expect("rules");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].resource_names, Some(vec!["shop".to_string()]));
        assert_eq!(rules[0].verbs, vec!["get".to_string(), "watch".to_string()]);
    }

    #[test]
    fn volume_retention_follows_the_data_policy() {
        let mut app = validated_example("shop");
        for (policy, expected) in [
            (DataPolicy::Retain, "Retain"),
            (DataPolicy::Delete, "Delete"),
        ] {
            app.spec.data_policy = policy;
            let spec = shard(&app, 0).statefulset.spec.expect("spec");
            let retention = spec
                .persistent_volume_claim_retention_policy
                .expect("retention");
            assert_eq!(retention.when_deleted.as_deref(), Some(expected));
            assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
        }
    }

    #[test]
    fn zero_replicas_per_shard_renders_no_replica_service() {
        let mut scaled_app = crate::test_support::example("shop");
        scaled_app.spec.database.replicas_per_shard = 0;
        let app = crate::validate::validate(&scaled_app, &Default::default()).expect("valid");
        let shard = shard(&app, 0);
        assert!(shard.replica_service.is_none());
        assert_eq!(shard.statefulset.spec.and_then(|s| s.replicas), Some(1));
    }
}
