//! Worker pools: the app image in `worker` mode, one Deployment and one HPA per pool.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, ContainerPort, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::app::{env, pod_template, volume_mounts};
use super::{
    autoscaling, child_name, object_meta, resources, restricted_container, selector_labels,
};
use crate::children::{Rendered, WorkerObjects};
use crate::crd::WorkerPoolSpec;
use crate::names::POOL_LABEL;
use crate::validate::ValidatedApp;

/// Component label of worker pods.
pub const COMPONENT: &str = "worker";

/// A pool's objects.
pub fn objects(app: &ValidatedApp, pool: &WorkerPoolSpec) -> WorkerObjects<Rendered> {
    let name = child_name(app, &format!("worker-{}", pool.name));
    WorkerObjects {
        pool: pool.name.clone(),
        deployment: deployment(app, pool, name.clone()),
        autoscaler: autoscaling::worker(app, pool, name),
    }
}

fn deployment(app: &ValidatedApp, pool: &WorkerPoolSpec, name: String) -> Deployment {
    let mut selector = selector_labels(app, COMPONENT);
    selector.insert(POOL_LABEL.into(), pool.name.clone());
    let container = Container {
        name: "worker".into(),
        image: Some(app.app_image.clone()),
        args: Some(vec![
            "worker".into(),
            "--queues".into(),
            pool.queues.join(","),
            "--concurrency".into(),
            pool.concurrency.to_string(),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: i32::from(app.spec.app.metrics_port),
            ..ContainerPort::default()
        }]),
        env: Some(env(app)),
        resources: Some(resources(&pool.resources)),
        // A worker has no user-facing HTTP API; its metrics port answers /health while the
        // process runs.
        liveness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/health".into()),
                port: IntOrString::String("metrics".into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(15),
            failure_threshold: Some(4),
            timeout_seconds: Some(5),
            ..Probe::default()
        }),
        security_context: Some(restricted_container()),
        volume_mounts: Some(volume_mounts()),
        ..Container::default()
    };
    let mut meta = object_meta(app, name, COMPONENT);
    if let Some(labels) = meta.labels.as_mut() {
        labels.insert(POOL_LABEL.into(), pool.name.clone());
    }
    Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            replicas: None,
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                match_expressions: None,
            },
            template: pod_template(app, selector, Vec::new(), container),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::validated_example;

    #[test]
    fn a_pool_runs_the_app_image_in_worker_mode_on_its_queues() {
        let app = validated_example("shop");
        let pool = &app.spec.workers[0];
        let objects = objects(&app, pool);
        let spec = objects.deployment.spec.expect("spec");
        let container = &spec.template.spec.expect("pod").containers[0];
        assert_eq!(container.image.as_deref(), Some(app.app_image.as_str()));
        let args = container.args.clone().expect("args");
        assert_eq!(args[0], "worker");
        assert_eq!(args[2], pool.queues.join(","));
        assert_eq!(
            spec.selector.match_labels.expect("labels")[POOL_LABEL],
            pool.name
        );
    }
}
