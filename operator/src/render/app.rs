//! The app: Deployment (with a `migrate` init container), Service, PodDisruptionBudget and HPA.
//! Also the pod pieces worker pools share (environment, config volume).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction,
    PodSpec, PodTemplateSpec, Probe, Service, ServicePort, ServiceSpec, TopologySpreadConstraint,
    Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use scaled_contract::{
    CONFIG_DIR, CONFIG_PATH, ENV_CONFIG_PATH, ENV_DATABASE_PASSWORD, ENV_POD_NAME,
    ENV_REDIS_PASSWORD, ENV_SESSION_SECRET, ENV_SESSION_SECRET_PREVIOUS,
};

use super::config::config_hash;
use super::secrets::{
    POSTGRES_APP_KEY, REDIS_PASSWORD_KEY, SESSION_SECRET_KEY, SESSION_SECRET_PREVIOUS_KEY,
    app_secret, postgres_secret, redis_secret,
};
use super::{
    APP_UID, autoscaling, child_name, field_env, image_pull_secrets, object_meta,
    optional_secret_env, plain_env, resources, restricted_container, restricted_pod, secret_env,
    selector_labels,
};
use crate::children::{AppObjects, Rendered};
use crate::names::{CONFIG_HASH_ANNOTATION, SESSION_SECRET_ROTATION_ANNOTATION};
use crate::validate::ValidatedApp;

/// Component label of app pods.
pub const COMPONENT: &str = crate::names::APP_COMPONENT;

/// The app's objects.
pub fn objects(app: &ValidatedApp) -> AppObjects<Rendered> {
    AppObjects {
        deployment: deployment(app),
        service: service(app),
        disruption_budget: disruption_budget(app),
        autoscaler: app.spec.autoscaling.enabled.then(|| autoscaling::app(app)),
    }
}

fn deployment(app: &ValidatedApp) -> Deployment {
    let spec = &app.spec.app;
    let selector = selector_labels(app, COMPONENT);
    let container = Container {
        name: "app".into(),
        image: Some(app.app_image.clone()),
        args: Some(vec!["serve".into()]),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: i32::from(spec.port),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("metrics".into()),
                container_port: i32::from(spec.metrics_port),
                ..ContainerPort::default()
            },
        ]),
        env: Some(app_env(app)),
        resources: Some(resources(&spec.resources)),
        readiness_probe: Some(http_probe("/ready", 5, 3)),
        liveness_probe: Some(http_probe("/health", 10, 6)),
        security_context: Some(restricted_container()),
        volume_mounts: Some(volume_mounts()),
        ..Container::default()
    };
    // Every pod migrates before serving; the app takes an advisory lock, so concurrent pods are
    // safe and all but the first find nothing to do.
    let migrate = Container {
        name: "migrate".into(),
        args: Some(vec!["migrate".into()]),
        ports: None,
        readiness_probe: None,
        liveness_probe: None,
        ..container.clone()
    };
    let mut template = pod_template(app, selector.clone(), vec![migrate], container);
    // A new rotation step rolls the app pods, so they read the Secret's new values.
    if let Some(marker) = &app.session_secret.template {
        template
            .metadata
            .get_or_insert_default()
            .annotations
            .get_or_insert_default()
            .insert(SESSION_SECRET_ROTATION_ANNOTATION.into(), marker.clone());
    }
    Deployment {
        metadata: object_meta(app, child_name(app, COMPONENT), COMPONENT),
        spec: Some(DeploymentSpec {
            // Left to the HPA when autoscaling, or every apply would reset its decision.
            replicas: (!app.spec.autoscaling.enabled).then_some(spec.replicas.min),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                match_expressions: None,
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::String("25%".into())),
                }),
            }),
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// A pod template for app-image pods (app and workers): labels, annotations, security,
/// spreading and the config volume. The template carries a hash of the runtime configuration,
/// so a change of any setting rolls the pods: the app reloads only the shard map live, and every
/// other setting takes effect through that rollout.
pub fn pod_template(
    app: &ValidatedApp,
    selector: BTreeMap<String, String>,
    init_containers: Vec<Container>,
    container: Container,
) -> PodTemplateSpec {
    let mut labels = app.spec.app.pod_labels.clone();
    labels.extend(selector.clone());
    let mut annotations = app.spec.app.pod_annotations.clone();
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash(app));
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            image_pull_secrets: image_pull_secrets(app),
            security_context: Some(restricted_pod(APP_UID)),
            termination_grace_period_seconds: Some(30),
            topology_spread_constraints: Some(spread(&selector)),
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            containers: vec![container],
            volumes: Some(vec![
                Volume {
                    name: "config".into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: child_name(app, "config"),
                        ..ConfigMapVolumeSource::default()
                    }),
                    ..Volume::default()
                },
                Volume {
                    name: "tmp".into(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Volume::default()
                },
            ]),
            ..PodSpec::default()
        }),
    }
}

/// Spread pods over nodes and zones, preferring but not requiring balance, so a small cluster
/// can still schedule them.
fn spread(selector: &BTreeMap<String, String>) -> Vec<TopologySpreadConstraint> {
    ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector.clone()),
                match_expressions: None,
            }),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

/// Mounts of app-image containers.
pub fn volume_mounts() -> Vec<VolumeMount> {
    vec![
        VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        },
    ]
}

/// Environment of app-image containers: where the config is, the credentials, and the user's
/// own variables last.
pub fn env(app: &ValidatedApp) -> Vec<EnvVar> {
    let mut env = vec![
        plain_env(ENV_CONFIG_PATH, CONFIG_PATH),
        field_env(ENV_POD_NAME, "metadata.name"),
        secret_env(
            ENV_DATABASE_PASSWORD,
            postgres_secret(app),
            POSTGRES_APP_KEY,
        ),
        secret_env(ENV_SESSION_SECRET, app_secret(app), SESSION_SECRET_KEY),
    ];
    match &app.spec.cache.external_redis {
        Some(external) => env.extend(external.password_secret_ref.as_ref().map(|reference| {
            secret_env(ENV_REDIS_PASSWORD, reference.name.clone(), &reference.key)
        })),
        None => env.push(secret_env(
            ENV_REDIS_PASSWORD,
            redis_secret(app),
            REDIS_PASSWORD_KEY,
        )),
    }
    env.extend(app.spec.app.env.iter().cloned());
    env
}

/// Environment of the app containers: [`env`], and, once a session-secret rotation has
/// started, the secret before the last rotation (optional: absent until phase 1 writes it).
/// Only from then on, so a ScaledApp never rotated keeps its pod template byte for byte: a new
/// variable for every ScaledApp would roll every app pod on an operator upgrade.
fn app_env(app: &ValidatedApp) -> Vec<EnvVar> {
    let mut env = env(app);
    if app.session_secret.template.is_some() {
        let after_secret = env
            .iter()
            .position(|variable| variable.name == ENV_SESSION_SECRET)
            .map_or(env.len(), |at| at + 1);
        env.insert(
            after_secret,
            optional_secret_env(
                ENV_SESSION_SECRET_PREVIOUS,
                app_secret(app),
                SESSION_SECRET_PREVIOUS_KEY,
            ),
        );
    }
    env
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn service(app: &ValidatedApp) -> Service {
    Service {
        metadata: object_meta(app, child_name(app, COMPONENT), COMPONENT),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(app, COMPONENT)),
            ports: Some(vec![
                ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(IntOrString::String("http".into())),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("metrics".into()),
                    port: i32::from(app.spec.app.metrics_port),
                    target_port: Some(IntOrString::String("metrics".into())),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn disruption_budget(app: &ValidatedApp) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: object_meta(app, child_name(app, COMPONENT), COMPONENT),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(app, COMPONENT)),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::validated_example;

    #[test]
    fn the_deployment_probes_ready_and_health_and_leaves_replicas_to_the_hpa() {
        let app = validated_example("shop");
        let deployment = deployment(&app);
        let spec = deployment.spec.expect("spec");
        assert_eq!(spec.replicas, None, "the HPA owns replicas");
        let pod = spec.template.spec.expect("pod");
        let container = &pod.containers[0];
        let path = |probe: &Option<Probe>| {
            probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|g| g.path.clone())
        };
        assert_eq!(path(&container.readiness_probe).as_deref(), Some("/ready"));
        assert_eq!(path(&container.liveness_probe).as_deref(), Some("/health"));
        assert_eq!(
            pod.init_containers.expect("init")[0].args,
            Some(vec!["migrate".to_string()])
        );
        assert_eq!(pod.topology_spread_constraints.expect("spread").len(), 2);
    }

    #[test]
    fn without_autoscaling_the_deployment_runs_the_minimum() {
        let mut app = validated_example("shop");
        app.spec.autoscaling.enabled = false;
        assert_eq!(
            deployment(&app).spec.expect("spec").replicas,
            Some(app.spec.app.replicas.min)
        );
        assert!(objects(&app).autoscaler.is_none());
    }

    fn template(deployment: &Deployment) -> serde_json::Value {
        serde_json::to_value(&deployment.spec.as_ref().expect("spec").template).expect("json")
    }

    #[test]
    fn a_scaledapp_never_rotated_renders_no_rotation_marker_and_no_previous_secret() {
        let app = validated_example("shop");
        assert_eq!(app.session_secret, Default::default());
        let pod = template(&deployment(&app));
        let annotations = pod["metadata"]["annotations"]
            .as_object()
            .expect("annotations");
        assert!(
            annotations.keys().all(|key| key == CONFIG_HASH_ANNOTATION
                || app.spec.app.pod_annotations.contains_key(key)),
            "{annotations:?}"
        );
        let names: Vec<&str> = pod["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|variable| variable["name"].as_str().expect("named"))
            .collect();
        assert_eq!(
            names[..5],
            [
                ENV_CONFIG_PATH,
                ENV_POD_NAME,
                ENV_DATABASE_PASSWORD,
                ENV_SESSION_SECRET,
                ENV_REDIS_PASSWORD
            ],
            "the environment of before rotations existed"
        );
        assert!(!names.contains(&ENV_SESSION_SECRET_PREVIOUS), "{names:?}");
    }

    #[test]
    fn a_rotation_step_changes_only_the_marker_and_the_optional_previous_secret() {
        use crate::session_rotation::{SecretStep, SessionSecretPlan};
        let never = validated_example("shop");
        let step = |marker: &str| {
            let mut app = never.clone();
            app.session_secret = SessionSecretPlan {
                template: Some(marker.into()),
                secret: SecretStep::Accept("r1".into()),
            };
            template(&deployment(&app))
        };
        let accepting = step("r1/accepting");
        let signing = step("r1/signing");
        let marker = |pod: &serde_json::Value| {
            pod["metadata"]["annotations"][SESSION_SECRET_ROTATION_ANNOTATION].clone()
        };
        assert_eq!(marker(&accepting), "r1/accepting");
        assert_eq!(marker(&signing), "r1/signing");
        assert_ne!(accepting, signing, "each step rolls the pods");
        for container in ["containers", "initContainers"] {
            let env = accepting["spec"][container][0]["env"]
                .as_array()
                .expect("env");
            let at = env
                .iter()
                .position(|variable| variable["name"] == ENV_SESSION_SECRET)
                .expect("the session secret");
            assert_eq!(
                env[at + 1],
                serde_json::json!({"name": ENV_SESSION_SECRET_PREVIOUS, "valueFrom": {"secretKeyRef": {
                    "name": "shop-app", "key": "session-secret-previous", "optional": true}}}),
                "{container}"
            );
        }
        // Take both away again and the template is the one of a ScaledApp never rotated.
        let mut stripped = accepting.clone();
        stripped["metadata"]["annotations"]
            .as_object_mut()
            .expect("annotations")
            .remove(SESSION_SECRET_ROTATION_ANNOTATION);
        for container in ["containers", "initContainers"] {
            stripped["spec"][container][0]["env"]
                .as_array_mut()
                .expect("env")
                .retain(|variable| variable["name"] != ENV_SESSION_SECRET_PREVIOUS);
        }
        assert_eq!(stripped, template(&deployment(&never)));
    }

    #[test]
    fn worker_pods_are_not_rolled_by_a_rotation() {
        use crate::session_rotation::{SecretStep, SessionSecretPlan};
        let never = validated_example("shop");
        let mut rotating = never.clone();
        rotating.session_secret = SessionSecretPlan {
            template: Some("r1/accepting".into()),
            secret: SecretStep::Accept("r1".into()),
        };
        let workers = |app: &ValidatedApp| crate::render::render(app).workers;
        assert_eq!(workers(&rotating), workers(&never));
    }

    #[test]
    fn user_env_comes_after_the_operators_own() {
        let mut app = validated_example("shop");
        app.spec.app.env = vec![EnvVar {
            name: "FEATURE_X".into(),
            value: Some("on".into()),
            value_from: None,
        }];
        let env = env(&app);
        assert_eq!(env.last().map(|e| e.name.as_str()), Some("FEATURE_X"));
        assert!(env.iter().any(|e| e.name == ENV_DATABASE_PASSWORD));
    }
}
