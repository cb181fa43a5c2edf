//! Rendering: `&ValidatedApp` -> every child object, typed. Pure and infallible (validation has
//! already refused what cannot be built), so it is unit-tested without a cluster and printed by
//! `scaledapp-operator render`.
//!
//! One file per component (plus `storage`, the volume and StatefulSet pieces Redis and Postgres
//! share); this file holds the labelling and security rules they all share. Names and label
//! keys come from [`crate::names`], which the other stages read too.

mod app;
mod autoscaling;
mod config;
mod network;
mod postgres;
mod redis;
mod secrets;
mod storage;
mod workers;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, EnvVar, EnvVarSource, LocalObjectReference, ObjectFieldSelector,
    PodSecurityContext, ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::children::{Children, Rendered};
use crate::crd::{DataPolicy, ResourceSpec};
use crate::validate::ValidatedApp;

pub use config::runtime_config;
pub use postgres::{instance_config, shard_set_name};

use crate::names::{COMPONENT_LABEL, MANAGED_BY_LABEL, MANAGER, SCALEDAPP_NAME_LABEL};

/// User the app image runs as (distroless "nonroot").
pub const APP_UID: i64 = 65532;

/// Renders every child of a validated ScaledApp.
pub fn render(app: &ValidatedApp) -> Children<Rendered> {
    Children {
        secrets: secrets::templates(app),
        config: config::config_map(app),
        postgres_config: postgres::config_map(app),
        network_policies: network::policies(app),
        postgres_access: postgres::access(app),
        shards: (0..app.shards)
            .map(|index| postgres::shard(app, index))
            .collect(),
        redis: redis::objects(app),
        app: app::objects(app),
        workers: app
            .spec
            .workers
            .iter()
            .map(|pool| workers::objects(app, pool))
            .collect(),
    }
}

/// Child names: `<app>-<component>`.
pub fn child_name(app: &ValidatedApp, component: &str) -> String {
    crate::names::child_name(&app.name, component)
}

/// In-cluster DNS name of a Service.
pub fn service_host(app: &ValidatedApp, service: &str) -> String {
    crate::names::service_host(&app.namespace, service)
}

/// Labels that select a component's pods; stable for the object's lifetime.
pub fn selector_labels(app: &ValidatedApp, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "scaledapp".to_string(),
        ),
        (SCALEDAPP_NAME_LABEL.to_string(), app.name.clone()),
        (COMPONENT_LABEL.to_string(), component.to_string()),
    ])
}

/// Labels on every child object (selector labels plus bookkeeping).
pub fn object_labels(app: &ValidatedApp, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(app, component);
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGER.to_string());
    labels.insert("app.kubernetes.io/part-of".to_string(), app.name.clone());
    labels
}

/// The ScaledApp as controller owner: deleting it garbage-collects the child.
pub fn owner_reference(app: &ValidatedApp) -> OwnerReference {
    OwnerReference {
        api_version: "scaled.dev/v1alpha1".into(),
        kind: "ScaledApp".into(),
        name: app.name.clone(),
        uid: app.uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Metadata of an owned child.
pub fn object_meta(app: &ValidatedApp, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(app.namespace.clone()),
        labels: Some(object_labels(app, component)),
        owner_references: Some(vec![owner_reference(app)]),
        ..ObjectMeta::default()
    }
}

/// Metadata of data-bearing children (Secrets): owned only under `dataPolicy: Delete`, so that
/// under `Retain` they outlive the ScaledApp.
pub fn data_meta(app: &ValidatedApp, name: String, component: &str) -> ObjectMeta {
    let mut meta = object_meta(app, name, component);
    if app.spec.data_policy == DataPolicy::Retain {
        meta.owner_references = None;
    }
    meta
}

/// The ScaledApp's image pull Secrets, for every pod it runs.
pub fn image_pull_secrets(app: &ValidatedApp) -> Option<Vec<LocalObjectReference>> {
    let secrets = &app.spec.image_pull_secrets;
    (!secrets.is_empty()).then(|| {
        secrets
            .iter()
            .map(|secret| LocalObjectReference {
                name: secret.name.clone(),
            })
            .collect()
    })
}

/// A container security context that passes the `restricted` Pod Security Standard.
pub fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

/// A pod security context for the `restricted` standard, running as `uid`.
pub fn restricted_pod(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..PodSecurityContext::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

/// An environment variable with a literal value.
pub fn plain_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// An environment variable from a key of a Secret that must exist (a wrong key name keeps the
/// pod from starting, loudly, instead of running it without the value).
pub fn secret_env(name: &str, secret: String, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret,
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// An environment variable from a key of a Secret that may lack it (or not exist): then the
/// variable is unset and the pod starts all the same.
pub fn optional_secret_env(name: &str, secret: String, key: &str) -> EnvVar {
    let mut var = secret_env(name, secret, key);
    if let Some(reference) = var
        .value_from
        .as_mut()
        .and_then(|from| from.secret_key_ref.as_mut())
    {
        reference.optional = Some(true);
    }
    var
}

/// An environment variable from a field of the pod itself (downward API).
pub fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// Container resources from the spec.
pub fn resources(spec: &ResourceSpec) -> ResourceRequirements {
    let amounts = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("memory".to_string(), Quantity(memory.to_string())),
        ])
    };
    ResourceRequirements {
        requests: Some(amounts(&spec.requests.cpu, &spec.requests.memory)),
        limits: spec
            .limits
            .as_ref()
            .map(|limits| amounts(&limits.cpu, &limits.memory)),
        ..ResourceRequirements::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::validated_example;

    #[test]
    fn every_child_is_owned_labelled_and_in_the_scaledapps_namespace() {
        let app = validated_example("shop");
        for manifest in render(&app).manifests() {
            let kind = manifest["kind"].as_str().expect("kind");
            let meta = &manifest["metadata"];
            let name = meta["name"].as_str().expect("name");
            assert!(
                name.starts_with("shop-"),
                "{kind} {name} is not named <app>-<component>"
            );
            assert!(name.len() <= 63, "{kind} {name} is too long");
            assert_eq!(meta["namespace"], "default", "{kind} {name}");
            assert_eq!(meta["labels"][MANAGED_BY_LABEL], MANAGER, "{kind} {name}");
            assert_eq!(
                meta["labels"][SCALEDAPP_NAME_LABEL], "shop",
                "{kind} {name}"
            );
            if kind != "Secret" {
                assert_eq!(meta["ownerReferences"][0]["uid"], app.uid, "{kind} {name}");
                assert_eq!(
                    meta["ownerReferences"][0]["controller"], true,
                    "{kind} {name}"
                );
            }
        }
    }

    #[test]
    fn the_longest_allowed_name_with_64_shards_fits_every_limit() {
        let mut scaled_app = crate::test_support::example("shop");
        scaled_app.metadata.name = Some("a".repeat(crate::crd::MAX_NAME_LENGTH));
        scaled_app.spec.database.shards = 64;
        let app = crate::validate::validate(&scaled_app, &Default::default())
            .expect("the longest name with 64 shards is valid");
        let desired = render(&app);
        for shard in &desired.shards {
            let name = shard.statefulset.metadata.name.clone().expect("named");
            assert!(
                name.len() <= 52,
                "{name} leaves no room for the StatefulSet revision label"
            );
        }
        for manifest in desired.manifests() {
            let name = manifest["metadata"]["name"].as_str().expect("name");
            assert!(name.len() <= 63, "{name}");
        }
    }

    #[test]
    fn secrets_are_not_owned_under_the_retain_policy_and_owned_under_delete() {
        let mut app = validated_example("shop");
        app.spec.data_policy = DataPolicy::Retain;
        assert!(
            render(&app)
                .secrets
                .iter()
                .all(|s| s.meta.owner_references.is_none())
        );
        app.spec.data_policy = DataPolicy::Delete;
        assert!(
            render(&app)
                .secrets
                .iter()
                .all(|s| s.meta.owner_references.is_some())
        );
    }

    #[test]
    fn rendering_is_deterministic() {
        let app = validated_example("shop");
        assert_eq!(render(&app), render(&app));
    }

    #[test]
    fn image_pull_secrets_reach_every_pod_the_scaledapp_runs() {
        let mut app = validated_example("shop");
        app.spec.image_pull_secrets = vec![crate::crd::ImagePullSecret {
            name: "registry-login".into(),
        }];
        let pods: Vec<serde_json::Value> = render(&app)
            .manifests()
            .into_iter()
            .filter(|m| matches!(m["kind"].as_str(), Some("Deployment" | "StatefulSet")))
            .map(|m| m["spec"]["template"]["spec"].clone())
            .collect();
        assert_eq!(
            pods.len(),
            1 + 2 + 1 + 2,
            "app, two pools, Redis, two shards"
        );
        for pod in pods {
            assert_eq!(
                pod["imagePullSecrets"][0]["name"], "registry-login",
                "{pod}"
            );
        }
    }
}
