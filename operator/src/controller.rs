//! Controller wiring: watch ScaledApps and every kind they own, and run reconcile on changes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::fmt::Debug;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config, Controller};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tracing::debug;

use crate::context::Context;
use crate::crd::ScaledApp;
use crate::reconcile::{error_policy, reconcile};
use crate::render::{MANAGED_BY_LABEL, MANAGER};

/// Seconds of quiet before a burst of child events becomes one reconcile: a rollout of a
/// StatefulSet emits an event per pod, and reconciling each would re-read and re-write status.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// Reconciles in flight at once; bounds memory and the burst of requests on start-up.
const CONCURRENCY: u16 = 8;

/// Changes to children of kind `K`: only ours (by label), and only their metadata, since owner
/// references are all a trigger needs; watch traffic and memory stay independent of the rest of
/// the cluster and of pod specs.
fn child_events<K>(
    client: &Client,
) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let config = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    watcher(Api::<PartialObjectMeta<K>>::all(client.clone()), config).touched_objects()
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    client: Client,
    context: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    Controller::new(
        Api::<ScaledApp>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(
        Config::default()
            .debounce(DEBOUNCE)
            .concurrency(CONCURRENCY),
    )
    .owns_stream(child_events::<Deployment>(&client))
    .owns_stream(child_events::<StatefulSet>(&client))
    .owns_stream(child_events::<Service>(&client))
    .owns_stream(child_events::<ConfigMap>(&client))
    .owns_stream(child_events::<PodDisruptionBudget>(&client))
    .owns_stream(child_events::<HorizontalPodAutoscaler>(&client))
    .owns_stream(child_events::<NetworkPolicy>(&client))
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
