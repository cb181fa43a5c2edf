//! Where served values come from: the ScaledApps (a watch cache of its own, since every replica
//! serves, leader or not), their app pods' figures ([`PodScraper`]) and their queues' backlogs
//! ([`QueueReader`]). The routes see only [`MetricsSource`], so their tests use a fake.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use tracing::warn;

use super::error::ApiError;
use super::pods::{PodReadings, PodScraper, ScrapeSettings};
use super::queues::{QueueReader, QueueReadings, QueueSettings};
use crate::controller::Scope;
use crate::crd::ScaledApp;

pub use super::app_key::AppKey;

/// How often state of ScaledApps that are gone is dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// What the routes read.
pub trait MetricsSource: Send + Sync {
    /// The ScaledApps of `namespace` (503 while the cache is still loading).
    fn apps(&self, namespace: &str) -> Result<Vec<Arc<ScaledApp>>, ApiError>;
    /// The figures of `app`'s app pods.
    fn pods<'a>(&'a self, app: &'a ScaledApp) -> BoxFuture<'a, Result<Arc<PodReadings>, ApiError>>;
    /// The backlog of `app`'s queues.
    fn queues<'a>(
        &'a self,
        app: &'a ScaledApp,
    ) -> BoxFuture<'a, Result<Arc<QueueReadings>, ApiError>>;
}

/// The real source.
pub struct LiveSource {
    /// One watch cache per namespace of the operator's scope (one for all in a cluster scope):
    /// a namespaced install may not list ScaledApps anywhere else.
    stores: Vec<(Option<String>, Store<ScaledApp>)>,
    ready: AtomicBool,
    /// App pod scraping.
    pub pods: PodScraper,
    /// Redis reads.
    pub queues: QueueReader,
}

impl LiveSource {
    /// The source, and the work that keeps it current (the ScaledApp watch and the sweep of
    /// state of deleted ScaledApps); run that future for as long as the source is used.
    pub fn new(
        client: kube::Client,
        scope: &Scope,
        scrape: ScrapeSettings,
        queues: QueueSettings,
    ) -> (Arc<LiveSource>, impl Future<Output = ()> + Send + 'static) {
        let namespaces: Vec<Option<String>> = match scope {
            Scope::Cluster => vec![None],
            Scope::Namespaces(namespaces) => namespaces.iter().cloned().map(Some).collect(),
        };
        let mut stores = Vec::new();
        let mut watches = Vec::new();
        for namespace in namespaces {
            let (store, writer) = reflector::store();
            let apps = match &namespace {
                Some(namespace) => Api::<ScaledApp>::namespaced(client.clone(), namespace),
                None => Api::<ScaledApp>::all(client.clone()),
            };
            let watch = watcher(apps, watcher::Config::default())
                .default_backoff()
                .modify(|app| {
                    // Only the spec is read; managed fields are most of a stored object.
                    app.managed_fields_mut().clear();
                    app.annotations_mut()
                        .remove("kubectl.kubernetes.io/last-applied-configuration");
                })
                .reflect(writer)
                .for_each(|event| async move {
                    if let Err(error) = event {
                        warn!(%error, "the metrics API's ScaledApp watch failed; retrying");
                    }
                });
            stores.push((namespace, store));
            watches.push(watch);
        }
        let source = Arc::new(LiveSource {
            stores: stores.clone(),
            ready: AtomicBool::new(false),
            pods: PodScraper::new(client.clone(), scrape),
            queues: QueueReader::new(client.clone(), queues),
        });
        let background = {
            let source = source.clone();
            async move {
                let mark_ready = async {
                    let loaded = futures::future::join_all(
                        stores.iter().map(|(_, store)| store.wait_until_ready()),
                    )
                    .await;
                    if loaded.iter().all(Result::is_ok) {
                        source.ready.store(true, Ordering::Relaxed);
                    }
                };
                let sweep = async {
                    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
                    loop {
                        ticks.tick().await;
                        source.sweep();
                    }
                };
                tokio::join!(futures::future::join_all(watches), mark_ready, sweep);
            }
        };
        (source, background)
    }

    /// Drops pod and queue state of ScaledApps that no longer exist.
    pub fn sweep(&self) {
        let live: HashSet<AppKey> = self
            .stores
            .iter()
            .flat_map(|(_, store)| store.state())
            .map(|app| AppKey::of(&app))
            .collect();
        self.pods.retain(&live);
        self.queues.retain(&live);
    }
}

impl MetricsSource for LiveSource {
    fn apps(&self, namespace: &str) -> Result<Vec<Arc<ScaledApp>>, ApiError> {
        if !self.ready.load(Ordering::Relaxed) {
            return Err(ApiError::Unavailable(
                "the metrics server is still loading the ScaledApps".into(),
            ));
        }
        let mut apps: Vec<Arc<ScaledApp>> = self
            .stores
            .iter()
            .filter(|(watched, _)| {
                watched
                    .as_deref()
                    .is_none_or(|watched| watched == namespace)
            })
            .flat_map(|(_, store)| {
                store.state_filter(|app| app.namespace().as_deref() == Some(namespace))
            })
            .collect();
        apps.sort_by_key(|app| app.name_any());
        Ok(apps)
    }

    fn pods<'a>(&'a self, app: &'a ScaledApp) -> BoxFuture<'a, Result<Arc<PodReadings>, ApiError>> {
        Box::pin(self.pods.readings(app))
    }

    fn queues<'a>(
        &'a self,
        app: &'a ScaledApp,
    ) -> BoxFuture<'a, Result<Arc<QueueReadings>, ApiError>> {
        Box::pin(self.queues.readings(app))
    }
}
