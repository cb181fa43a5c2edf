//! Controller wiring: watch ScaledApps and every kind they own, and run reconcile on changes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::controller::{Config, Controller};
use kube::runtime::watcher;
use kube::{Api, Client};
use tracing::debug;

use crate::context::Context;
use crate::crd::ScaledApp;
use crate::kinds::watch_every_kind;
use crate::reconcile::{error_policy, reconcile};

/// Seconds of quiet before a burst of child events becomes one reconcile: a rollout of a
/// StatefulSet emits an event per pod, and reconciling each would re-read and re-write status.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// Reconciles in flight at once; bounds memory and the burst of requests on start-up.
const CONCURRENCY: u16 = 8;

/// Runs the controller until `shutdown` completes.
pub async fn run(
    client: Client,
    context: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let controller = Controller::new(
        Api::<ScaledApp>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(
        Config::default()
            .debounce(DEBOUNCE)
            .concurrency(CONCURRENCY),
    );
    watch_every_kind(controller, &client)
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
