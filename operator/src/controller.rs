//! Controller wiring: watch ScaledApps and every kind they own, and run reconcile on changes.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::Controller;
use kube::runtime::watcher;
use kube::{Api, Client};
use tracing::debug;

use crate::context::Context;
use crate::crd::ScaledApp;
use crate::reconcile::{error_policy, reconcile};
use crate::render::{MANAGED_BY_LABEL, MANAGER};

/// Runs the controller until `shutdown` completes.
pub async fn run(
    client: Client,
    context: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    // Only our children: keeps watch traffic and memory independent of the rest of the cluster.
    let children = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    Controller::new(
        Api::<ScaledApp>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Deployment>::all(client.clone()), children.clone())
    .owns(Api::<StatefulSet>::all(client.clone()), children.clone())
    .owns(Api::<Service>::all(client.clone()), children.clone())
    .owns(Api::<ConfigMap>::all(client.clone()), children.clone())
    .owns(
        Api::<PodDisruptionBudget>::all(client.clone()),
        children.clone(),
    )
    .owns(
        Api::<HorizontalPodAutoscaler>::all(client.clone()),
        children.clone(),
    )
    .owns(Api::<NetworkPolicy>::all(client), children)
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, context)
    .for_each(|result| async move {
        match result {
            Ok((object, _)) => debug!(scaledapp = %object.name, "reconciled"),
            // error_policy has already logged reconcile failures with their retry delay.
            Err(error) => debug!(%error, "reconcile did not complete"),
        }
    })
    .await;
}
