//! Requests per second and p95 latency of each ScaledApp's app pods, scraped from the pods'
//! metrics port (`http://<pod IP>:<spec.app.metricsPort>/metrics`).
//!
//! Cost is bounded per ScaledApp, however many requests arrive: one refresh (list the app pods,
//! scrape each once) at most every [`ScrapeSettings::interval`], and concurrent requests wait for
//! the refresh in flight instead of starting their own (single flight). Memory is bounded too:
//! two samples per live pod (sums only, see `exposition`), pods that are gone are forgotten, and
//! a ScaledApp's entry is dropped when the ScaledApp is ([`PodScraper::retain`]).
//!
//! A pod is reported only when two scrapes of it exist and the newer is from the latest refresh:
//! a new pod has no rate yet, and a pod that did not answer has no current one. The HPA treats
//! missing pods conservatively (as using nothing when scaling up, the target when scaling down),
//! which is safer than a made-up zero.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use tracing::debug;

use super::app_key::AppKey;
use super::error::ApiError;
use super::exposition::{ExpositionError, ExpositionParser, Sample};
use super::rates::{Rates, rates};
use crate::crd::ScaledApp;
use crate::names::{COMPONENT_LABEL, SCALEDAPP_NAME_LABEL};

/// The app Deployment's component label value (`render::app`).
const APP_COMPONENT: &str = "app";

/// How often and how carefully pods are scraped.
#[derive(Clone, Debug)]
pub struct ScrapeSettings {
    /// Least time between two refreshes of one ScaledApp (and so between two scrapes of a pod).
    pub interval: Duration,
    /// How long a failed refresh (the pod list could not be read) is answered from memory.
    pub error_interval: Duration,
    /// Whole-request timeout of one scrape.
    pub timeout: Duration,
    /// Scrapes in flight at once per ScaledApp.
    pub concurrency: usize,
    /// Largest `/metrics` answer read.
    pub max_body: usize,
}

impl Default for ScrapeSettings {
    fn default() -> Self {
        ScrapeSettings {
            interval: Duration::from_secs(15),
            error_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            concurrency: 8,
            max_body: 4 * 1024 * 1024,
        }
    }
}

/// One app pod's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct PodReading {
    /// Pod name.
    pub name: String,
    /// Pod labels (what a request's label selector is matched against).
    pub labels: BTreeMap<String, String>,
    /// When the newer sample was taken.
    pub timestamp: DateTime<Utc>,
    /// Time between the two samples.
    pub window: Duration,
    /// The figures over that window.
    pub rates: Rates,
}

/// The figures of one ScaledApp's app pods, by pod name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodReadings {
    /// Pods with a current rate, ordered by name.
    pub pods: Vec<PodReading>,
}

/// Scrapes app pods, with a cache and a single flight per ScaledApp.
pub struct PodScraper {
    client: kube::Client,
    http: reqwest::Client,
    settings: ScrapeSettings,
    apps: std::sync::Mutex<HashMap<AppKey, Arc<tokio::sync::Mutex<AppPods>>>>,
    scrapes: AtomicU64,
}

#[derive(Default)]
struct AppPods {
    refreshed: Option<(Instant, Result<Arc<PodReadings>, ApiError>)>,
    history: HashMap<String, PodHistory>,
}

struct PodHistory {
    previous: Option<Stamped>,
    latest: Stamped,
}

struct Stamped {
    at: Instant,
    wall: DateTime<Utc>,
    sample: Sample,
}

/// Why one pod's scrape failed (logged at debug; the pod is left out).
#[derive(Debug, thiserror::Error)]
enum ScrapeError {
    #[error("failed to reach the pod: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the answer is not a Prometheus exposition: {0}")]
    Exposition(#[from] ExpositionError),
}

impl PodScraper {
    /// A scraper listing pods through `client`.
    pub fn new(client: kube::Client, settings: ScrapeSettings) -> Self {
        let http = reqwest::Client::builder()
            // Pod IPs only: no proxy from the environment, no redirect to anywhere else.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            // A connection per scrape: idle keep-alives to thousands of pods would cost more
            // memory than a TCP handshake every 15 s costs time.
            .pool_max_idle_per_host(0)
            .build()
            .expect("a plain HTTP client builds");
        PodScraper {
            client,
            http,
            settings,
            apps: std::sync::Mutex::new(HashMap::new()),
            scrapes: AtomicU64::new(0),
        }
    }

    /// Scrapes made so far (every pod request counts, answered or not).
    pub fn scrapes(&self) -> u64 {
        self.scrapes.load(Ordering::Relaxed)
    }

    /// Forgets every ScaledApp not in `live`.
    pub fn retain(&self, live: &HashSet<AppKey>) {
        self.lock().retain(|key, _| live.contains(key));
    }

    /// ScaledApps with state held (for tests of eviction).
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AppKey, Arc<tokio::sync::Mutex<AppPods>>>> {
        self.apps
            .lock()
            .expect("the app map lock is never poisoned")
    }

    /// The app pods' figures, refreshed when the last refresh is older than the interval.
    pub async fn readings(&self, app: &ScaledApp) -> Result<Arc<PodReadings>, ApiError> {
        let key = AppKey::of(app);
        let entry = self.lock().entry(key.clone()).or_default().clone();
        let mut state = entry.lock().await;
        if let Some((at, result)) = &state.refreshed {
            let fresh_for = if result.is_ok() {
                self.settings.interval
            } else {
                self.settings.error_interval
            };
            if at.elapsed() < fresh_for {
                return result.clone();
            }
        }
        let result = self.refresh(app, &key, &mut state).await.map(Arc::new);
        state.refreshed = Some((Instant::now(), result.clone()));
        result
    }

    async fn refresh(
        &self,
        app: &ScaledApp,
        key: &AppKey,
        state: &mut AppPods,
    ) -> Result<PodReadings, ApiError> {
        let selector = format!(
            "{SCALEDAPP_NAME_LABEL}={},{COMPONENT_LABEL}={APP_COMPONENT}",
            key.name
        );
        let pods = Api::<Pod>::namespaced(self.client.clone(), &key.namespace)
            .list(&ListParams::default().labels(&selector).match_any())
            .await
            .map_err(|error| {
                ApiError::Unavailable(format!(
                    "failed to list the app pods of ScaledApp {}/{}: {error}",
                    key.namespace, key.name
                ))
            })?;
        let port = app.spec.app.metrics_port;
        let targets: Vec<(String, String, BTreeMap<String, String>, IpAddr)> = pods
            .items
            .iter()
            .filter(|pod| pod.metadata.deletion_timestamp.is_none())
            .filter(|pod| pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|pod| {
                let ip = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
                Some((pod.uid()?, pod.name_any(), pod.labels().clone(), ip))
            })
            .collect();
        let scraped: Vec<_> = futures::stream::iter(targets)
            .map(|(uid, name, labels, ip)| async move {
                let result = self.scrape(ip, port).await;
                (uid, name, labels, result, Instant::now(), Utc::now())
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;

        let live: HashSet<&str> = scraped.iter().map(|(uid, ..)| uid.as_str()).collect();
        state.history.retain(|uid, _| live.contains(uid.as_str()));
        let mut readings = PodReadings::default();
        for (uid, name, labels, result, at, wall) in scraped {
            let sample = match result {
                Ok(sample) => sample,
                Err(error) => {
                    debug!(namespace = %key.namespace, pod = %name, %error, "scrape failed; pod left out");
                    continue;
                }
            };
            let latest = Stamped { at, wall, sample };
            let history = match state.history.remove(&uid) {
                Some(history) => PodHistory {
                    previous: Some(history.latest),
                    latest,
                },
                None => PodHistory {
                    previous: None,
                    latest,
                },
            };
            if let Some(previous) = &history.previous {
                let window = history.latest.at.duration_since(previous.at);
                if let Some(rates) = rates(&previous.sample, &history.latest.sample, window) {
                    readings.pods.push(PodReading {
                        name,
                        labels,
                        timestamp: history.latest.wall,
                        window,
                        rates,
                    });
                }
            }
            state.history.insert(uid, history);
        }
        readings.pods.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(readings)
    }

    async fn scrape(&self, ip: IpAddr, port: u16) -> Result<Sample, ScrapeError> {
        self.scrapes.fetch_add(1, Ordering::Relaxed);
        let address = std::net::SocketAddr::new(ip, port);
        let mut response = self
            .http
            .get(format!("http://{address}/metrics"))
            .send()
            .await?
            .error_for_status()?;
        let mut parser = ExpositionParser::new();
        let mut read = 0usize;
        while let Some(chunk) = response.chunk().await? {
            read += chunk.len();
            if read > self.settings.max_body {
                return Err(ScrapeError::TooLarge(self.settings.max_body));
            }
            parser.feed(&chunk)?;
        }
        Ok(parser.finish()?)
    }
}
