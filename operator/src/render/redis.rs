//! Redis run by the operator: a StatefulSet of one primary and `cache.redis.replicas` replicas,
//! the headless Service that governs it, and the ClusterIP Service every client (app, workers,
//! the operator's queue reader) connects to, which selects the pod labelled `primary`. The
//! password comes from the generated Secret and is written into a config file at start, so it
//! never shows in the pod spec or the process list.
//!
//! Clients use the ClusterIP Service because its name resolves for as long as the Service
//! exists: a headless name resolves only while a ready pod backs it, so a restarting Redis pod
//! turned every client's reconnect into a DNS failure, cached negatively by the resolver for
//! seconds after the pod was back.
//!
//! With replicas, every server starts read-only, as a replica of nobody, except the first pod
//! the first time it starts: which server takes writes is the operator's decision alone
//! (`crate::redis`), so a primary restarted in place can never take writes with less than its
//! replica holds.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, PodSpec,
    Probe, SecretKeySelector, Service, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::secrets::{REDIS_PASSWORD_KEY, redis_secret};
use super::storage::{Addressing, StatefulSetParts, claim, service, stateful_set};
use super::{
    child_name, image_pull_secrets, object_meta, restricted_container, restricted_pod,
    selector_labels,
};
use crate::children::{RedisObjects, Rendered};
use crate::crd::RedisSpec;
use crate::names::{PRIMARY_ROLE, REDIS_PORT, ROLE_LABEL};
use crate::redis::{FENCE_HOST, FENCE_PORT};
use crate::validate::ValidatedApp;

use crate::names::{REDIS_COMPONENT as COMPONENT, redis_primary_service_name};
/// UID of the `redis` user in the official image.
const REDIS_UID: i64 = 999;

/// Redis objects, unless an external Redis is configured.
pub fn objects(app: &ValidatedApp) -> Option<RedisObjects<Rendered>> {
    if app.spec.cache.external_redis.is_some() {
        return None;
    }
    let spec = app.spec.cache.redis.clone().unwrap_or_default();
    Some(RedisObjects {
        statefulset: statefulset(app, &spec),
        peers: peers_service(app),
        primary_service: primary_service(app),
    })
}

/// File on the data volume that says a server has started on it before. Only a first pod
/// without it starts as the primary; every later start is fenced.
const STARTED_MARKER: &str = "/data/.scaled-started";

/// The start script: writes `redis.conf`, then runs redis-server. With `replicas` > 0 it
/// starts fenced (a replica of nobody) unless it is the first pod starting for the first time.
pub fn start_script(spec: &RedisSpec, replicas: u32) -> String {
    let persistence = if spec.persistence.enabled {
        "appendonly yes\nappendfsync everysec\n"
    } else {
        "appendonly no\nsave \"\"\n"
    };
    let role = if replicas == 0 {
        // One server: nobody else holds its data, so it always takes writes.
        "role=\n".to_string()
    } else {
        format!(
            "role='replicaof {FENCE_HOST} {FENCE_PORT}'\n\
             name=$(cat /proc/sys/kernel/hostname)\n\
             if [ \"${{name##*-}}\" = 0 ] && [ ! -e {STARTED_MARKER} ]; then role=; fi\n\
             touch {STARTED_MARKER}\n"
        )
    };
    format!(
        "set -eu\n\
         umask 077\n\
         {role}\
         cat > /conf/redis.conf <<EOF\n\
         bind * -::*\n\
         port {REDIS_PORT}\n\
         dir /data\n\
         requirepass ${{REDIS_PASSWORD}}\n\
         masterauth ${{REDIS_PASSWORD}}\n\
         replica-read-only yes\n\
         maxmemory {memory}mb\n\
         maxmemory-policy {policy}\n\
         {persistence}\
         ${{role}}\n\
         EOF\n\
         exec redis-server /conf/redis.conf\n",
        memory = spec.max_memory_mib,
        policy = spec.max_memory_policy.as_redis(),
    )
}

fn statefulset(app: &ValidatedApp, spec: &RedisSpec) -> StatefulSet {
    let name = child_name(app, COMPONENT);
    let selector = selector_labels(app, COMPONENT);
    // Headroom over maxmemory for fragmentation, buffers and the AOF rewrite.
    let memory = Quantity(format!(
        "{}Mi",
        spec.max_memory_mib + spec.max_memory_mib / 4
    ));
    let password = EnvVar {
        name: "REDIS_PASSWORD".into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: redis_secret(app),
                key: REDIS_PASSWORD_KEY.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    };
    // redis-cli reads REDISCLI_AUTH, so the probe has no password on its command line.
    let cli_auth = EnvVar {
        name: "REDISCLI_AUTH".into(),
        ..password.clone()
    };
    let probe = |period: i32| Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                "sh".into(),
                "-c".into(),
                "redis-cli ping | grep -q PONG".into(),
            ]),
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(3),
        ..Probe::default()
    };
    let container = Container {
        name: "redis".into(),
        image: Some(spec.image.clone()),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            start_script(spec, app.redis_replicas),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("redis".into()),
            container_port: REDIS_PORT,
            ..ContainerPort::default()
        }]),
        env: Some(vec![password, cli_auth]),
        resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("100m".into())),
                ("memory".to_string(), memory.clone()),
            ])),
            limits: Some(BTreeMap::from([("memory".to_string(), memory)])),
            ..Default::default()
        }),
        readiness_probe: Some(probe(5)),
        liveness_probe: Some(probe(15)),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "data".into(),
                mount_path: "/data".into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "conf".into(),
                mount_path: "/conf".into(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let mut volumes = vec![Volume {
        name: "conf".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let claims = if spec.persistence.enabled {
        Some(vec![claim(
            "data",
            &spec.persistence.size,
            spec.persistence.storage_class_name.clone(),
        )])
    } else {
        volumes.push(Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
        None
    };
    stateful_set(
        app,
        StatefulSetParts {
            meta: object_meta(app, name, COMPONENT),
            selector,
            replicas: app.redis_pods as i32,
            // Replicas need not wait for the first pod to be ready: each starts fenced.
            pod_management_policy: Some("Parallel"),
            update_strategy: None,
            pod: PodSpec {
                automount_service_account_token: Some(false),
                enable_service_links: Some(false),
                image_pull_secrets: image_pull_secrets(app),
                security_context: Some(restricted_pod(REDIS_UID)),
                containers: vec![container],
                volumes: Some(volumes),
                ..PodSpec::default()
            },
            claims,
        },
    )
}

/// The StatefulSet's governing Service (its name is fixed in the StatefulSet for good, so it
/// keeps the name it always had).
fn peers_service(app: &ValidatedApp) -> Service {
    service(
        object_meta(app, child_name(app, COMPONENT), COMPONENT),
        selector_labels(app, COMPONENT),
        &[(COMPONENT, REDIS_PORT)],
        Addressing::Headless { not_ready: false },
    )
}

fn primary_service(app: &ValidatedApp) -> Service {
    let mut selector = selector_labels(app, COMPONENT);
    selector.insert(ROLE_LABEL.into(), PRIMARY_ROLE.into());
    service(
        object_meta(app, redis_primary_service_name(&app.name), COMPONENT),
        selector,
        &[(COMPONENT, REDIS_PORT)],
        Addressing::ClusterIp,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ExternalRedisSpec, MaxMemoryPolicy};
    use crate::test_support::validated_example;

    #[test]
    fn the_config_sets_maxmemory_policy_and_takes_the_password_from_the_environment() {
        let spec = RedisSpec {
            max_memory_mib: 512,
            max_memory_policy: MaxMemoryPolicy::AllkeysLru,
            ..RedisSpec::default()
        };
        let script = start_script(&spec, 0);
        assert!(script.contains("maxmemory 512mb\n"), "{script}");
        assert!(
            script.contains("maxmemory-policy allkeys-lru\n"),
            "{script}"
        );
        assert!(
            script.contains("requirepass ${REDIS_PASSWORD}\n"),
            "{script}"
        );
        assert!(script.contains("appendonly yes"), "{script}");
    }

    #[test]
    fn with_replicas_every_start_is_fenced_but_the_first_pods_first_and_one_server_never_is() {
        let spec = RedisSpec::default();
        let replicated = start_script(&spec, 1);
        assert!(
            replicated.contains("role='replicaof 127.0.0.1 1'\n"),
            "{replicated}"
        );
        assert!(
            replicated.contains(
                "if [ \"${name##*-}\" = 0 ] && [ ! -e /data/.scaled-started ]; then role=; fi\n"
            ),
            "{replicated}"
        );
        assert!(replicated.contains("masterauth ${REDIS_PASSWORD}\n"));
        assert!(replicated.contains("${role}\nEOF\n"), "{replicated}");
        let single = start_script(&spec, 0);
        assert!(!single.contains("replicaof"), "{single}");
    }

    #[test]
    fn an_external_redis_means_no_redis_objects() {
        let mut app = validated_example("shop");
        app.spec.cache.redis = None;
        app.spec.cache.external_redis = Some(ExternalRedisSpec {
            url: "redis://cache.example:6379".into(),
            password_secret_ref: None,
        });
        assert!(objects(&app).is_none());
    }

    #[test]
    fn clients_reach_redis_through_a_cluster_ip_so_a_missing_pod_is_never_a_dns_failure() {
        let app = validated_example("shop");
        let objects = objects(&app).expect("in-cluster redis");
        let primary = objects.primary_service.spec.expect("spec");
        assert_eq!(primary.cluster_ip, None, "a virtual IP, not headless");
        assert_eq!(
            objects.primary_service.metadata.name.as_deref(),
            Some("shop-redis-primary")
        );
        // The StatefulSet keeps its headless governing Service (serviceName cannot change).
        let peers = objects.peers.spec.expect("spec");
        assert_eq!(peers.cluster_ip.as_deref(), Some("None"));
        assert_eq!(
            objects
                .statefulset
                .spec
                .expect("spec")
                .service_name
                .as_deref(),
            Some("shop-redis")
        );
        let mut primary_selector = peers.selector.clone().expect("selector");
        primary_selector.insert(ROLE_LABEL.into(), PRIMARY_ROLE.into());
        assert_eq!(primary.selector, Some(primary_selector));
        // The app's configuration names the ClusterIP Service.
        let config = crate::render::runtime_config(&app);
        assert_eq!(
            config.redis.url,
            "redis://shop-redis-primary.default.svc:6379"
        );
    }

    #[test]
    fn the_container_memory_leaves_headroom_over_maxmemory() {
        let app = validated_example("shop");
        let objects = objects(&app).expect("in-cluster redis");
        let pod = objects
            .statefulset
            .spec
            .expect("spec")
            .template
            .spec
            .expect("pod");
        let limits = pod.containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .expect("limits");
        let max = app
            .spec
            .cache
            .redis
            .clone()
            .unwrap_or_default()
            .max_memory_mib;
        assert_eq!(limits["memory"], Quantity(format!("{}Mi", max + max / 4)));
    }
}
