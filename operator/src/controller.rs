//! Controller wiring: watch ScaledApps and every kind they own, and run reconcile on changes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kube::runtime::controller::{Config, Controller};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource};
use tracing::debug;

use crate::context::Context;
use crate::crd::ScaledApp;
use crate::kinds::watch_every_kind;
use crate::reconcile::{error_policy, reconcile};

/// Seconds of quiet before a burst of child events becomes one reconcile: a rollout of a
/// StatefulSet emits an event per pod, and reconciling each would re-read and re-write status.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// Reconciles in flight at once; bounds memory and the burst of requests on start-up. A pass
/// mostly waits on API round trips, so 16 at once keep the first pass of 100 new ScaledApps
/// within 35 s (8 took 77 s: first passes queued behind other ScaledApps' later ones; `make
/// bench-scale`, docs/BENCHMARKS.md) for 5 MiB more memory.
const CONCURRENCY: u16 = 16;

/// What of a ScaledApp a reconcile acts on: its spec (the generation), its annotations (a
/// switchover request) and its deletion. A change of anything else, its status above all, wakes
/// no reconcile: only the operator writes status, so reconciling after each of its own status
/// writes would re-read every child for nothing (half the passes when 100 ScaledApps come up at
/// once). The reflector still stores every change, so the next pass reads the latest status.
fn what_reconcile_reads(app: &ScaledApp) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = app.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    meta.deletion_timestamp
        .as_ref()
        .map(|time| time.0.as_second())
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// Which ScaledApps the operator reconciles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (the chart's ClusterRole).
    Cluster,
    /// Only these namespaces (the chart's `watchNamespaces`, with a Role in each).
    Namespaces(Vec<String>),
}

/// Runs the controller (one per namespace in a namespaced scope) until `shutdown` completes.
pub async fn run(
    client: Client,
    context: Arc<Context>,
    scope: Scope,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let shutdown = shutdown.shared();
    let namespaces: Vec<Option<String>> = match scope {
        Scope::Cluster => vec![None],
        Scope::Namespaces(namespaces) => namespaces.into_iter().map(Some).collect(),
    };
    let controllers = namespaces.into_iter().map(|namespace| {
        let apps = match &namespace {
            Some(namespace) => Api::<ScaledApp>::namespaced(client.clone(), namespace),
            None => Api::<ScaledApp>::all(client.clone()),
        };
        let (reader, writer) = reflector::store();
        let changes = watcher(apps, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .applied_objects()
            .predicate_filter(what_reconcile_reads, Default::default());
        let controller = Controller::for_stream(changes, reader).with_config(
            Config::default()
                .debounce(DEBOUNCE)
                .concurrency(CONCURRENCY),
        );
        watch_every_kind(controller, &client, namespace.as_deref())
            .graceful_shutdown_on(shutdown.clone())
            .run(reconcile, error_policy, context.clone())
            .for_each(|result| async move {
                match result {
                    Ok((object, _)) => debug!(scaledapp = %object.name, "reconciled"),
                    // error_policy has already logged reconcile failures with their retry delay.
                    Err(error) => debug!(%error, "reconcile did not complete"),
                }
            })
    });
    futures::future::join_all(controllers).await;
}
