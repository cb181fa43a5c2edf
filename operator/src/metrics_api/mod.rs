//! The aggregated metrics APIs for ScaledApps, served by every operator replica (leader or
//! standby) on a TLS port of its own, so HPAs scale on load and backlog with no adapter
//! installed:
//!
//! - `custom.metrics.k8s.io/v1beta2`, per app pod: requests per second and p95 response time
//!   ([`pods`] scrapes the pods' metrics port, [`exposition`] reads the text format, [`rates`]
//!   turns two scrapes into a rate and a quantile);
//! - `external.metrics.k8s.io/v1beta1`, per ScaledApp and queue: the backlog ([`queues`] reads
//!   the ScaledApp's Redis).
//!
//! A request goes: TLS ([`tls`]: the front proxy's client certificate is checked against the
//! request-header CA) -> [`auth`] (who: front-proxy headers or a TokenReview; may they: a
//! SubjectAccessReview) -> [`routes`] (path -> [`documents`]) -> [`source`] (cached readings).
//! Failures are `metav1.Status` documents ([`error`]). Metric names come from
//! [`scaled_contract::metrics`], as do the names the rendered HPAs ask for.

pub mod app_key;
pub mod auth;
pub mod documents;
pub mod error;
pub mod exposition;
pub mod pods;
pub mod queues;
pub mod rates;
pub mod routes;
pub mod selector;
pub mod source;
pub mod tls;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::Service;
use tracing::{debug, info, warn};

use crate::controller::Scope;

use self::auth::{AUTHENTICATION_CONFIG_MAP, Authenticator, Peer, RequestHeaderConfig};
use self::pods::ScrapeSettings;
use self::queues::QueueSettings;
use self::routes::ApiState;
use self::source::{LiveSource, MetricsSource};
use self::tls::{KeyPairFiles, TlsError, TlsHandle};

/// How often the certificate files and the front-proxy settings are checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(30);
/// Longest TLS handshake; a client that stalls it loses the connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 256;

/// Settings of the metrics APIs.
#[derive(Clone, Debug)]
pub struct MetricsApiSettings {
    /// Where the TLS port listens.
    pub address: SocketAddr,
    /// Directory holding `tls.crt` and `tls.key` (the mounted Secret).
    pub cert_dir: PathBuf,
}

/// Why the metrics APIs could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsApiError {
    /// The serving certificate could not be used.
    #[error("failed to load the metrics API's serving certificate from {dir}: {source}")]
    Certificate {
        /// The directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: TlsError,
    },
    /// The port could not be bound.
    #[error("failed to listen for the metrics APIs on {address}: {source}")]
    Bind {
        /// Address.
        address: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A bound, configured server, ready to [`run`](MetricsApi::run).
pub struct MetricsApi {
    listener: TcpListener,
    tls: Arc<TlsHandle>,
    router: Router,
    background: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl MetricsApi {
    /// Loads the certificate and the front-proxy settings and binds the port; errors here stop
    /// the operator at start-up rather than leaving an APIService unavailable.
    pub async fn start(
        client: kube::Client,
        settings: MetricsApiSettings,
        scope: &Scope,
    ) -> Result<MetricsApi, MetricsApiError> {
        let certificate_error = |source| MetricsApiError::Certificate {
            dir: settings.cert_dir.clone(),
            source,
        };
        let files = KeyPairFiles::read(&settings.cert_dir).map_err(certificate_error)?;
        let request_header = load_request_header(&client).await;
        let snapshot = tls::snapshot(
            files,
            request_header.unwrap_or_default(),
            &settings.cert_dir,
        )
        .map_err(certificate_error)?;
        let tls = Arc::new(TlsHandle::new(snapshot));
        let listener = TcpListener::bind(settings.address)
            .await
            .map_err(|source| MetricsApiError::Bind {
                address: settings.address,
                source,
            })?;
        let (source, keep_current) = LiveSource::new(
            client.clone(),
            scope,
            ScrapeSettings::default(),
            QueueSettings::default(),
        );
        let state = ApiState {
            source: source as Arc<dyn MetricsSource>,
            auth: Arc::new(Authenticator::new(client.clone())),
        };
        info!(address = %settings.address, "serving custom.metrics.k8s.io and external.metrics.k8s.io");
        Ok(MetricsApi {
            listener,
            tls: tls.clone(),
            router: routes::router(state),
            background: vec![
                Box::pin(keep_current),
                Box::pin(reload(client, settings.cert_dir, tls)),
            ],
        })
    }

    /// The bound address.
    pub fn local_address(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let background = futures::future::join_all(self.background);
        tokio::select! {
            () = serve(self.listener, self.tls, self.router, shutdown) => {}
            _ = background => {}
        }
    }
}

/// The request-header settings from `kube-system/extension-apiserver-authentication`; an error
/// says why they cannot be used (front proxies are then not trusted, tokens still work).
async fn fetch_request_header(client: &kube::Client) -> Result<RequestHeaderConfig, String> {
    let (namespace, name) = AUTHENTICATION_CONFIG_MAP;
    let config_map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|error| format!("cannot read ConfigMap {namespace}/{name}: {error}"))?;
    let config = RequestHeaderConfig::from_config_map(&config_map.data.unwrap_or_default())
        .map_err(|error| error.to_string())?;
    if config.client_ca.is_empty() {
        return Err(format!(
            "{namespace}/{name} has no requestheader-client-ca-file: API aggregation is not configured"
        ));
    }
    Ok(config)
}

/// [`fetch_request_header`] at start-up, saying what is missing.
async fn load_request_header(client: &kube::Client) -> Option<RequestHeaderConfig> {
    match fetch_request_header(client).await {
        Ok(config) => Some(config),
        Err(problem) => {
            warn!(%problem, "the aggregator's requests are refused until this is fixed (checked every 30 s); bearer tokens still work");
            None
        }
    }
}

/// Re-reads the certificate files and the front-proxy settings, and swaps the TLS snapshot
/// when either changed (a renewed certificate, a rotated front-proxy CA).
async fn reload(client: kube::Client, cert_dir: PathBuf, tls: Arc<TlsHandle>) {
    let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let current = tls.current();
        let files = match KeyPairFiles::read(&cert_dir) {
            Ok(files) => files,
            Err(error) => {
                warn!(%error, "keeping the current serving certificate");
                current.files.clone()
            }
        };
        let request_header = match fetch_request_header(&client).await {
            Ok(config) => config,
            Err(problem) => {
                debug!(%problem, "keeping the current front-proxy settings");
                current.request_header.as_ref().clone()
            }
        };
        if files == current.files && request_header == *current.request_header {
            continue;
        }
        match tls::snapshot(files, request_header, &cert_dir) {
            Ok(snapshot) => {
                info!("metrics API TLS settings changed; new connections use them");
                tls.replace(snapshot);
            }
            Err(error) => warn!(%error, "keeping the current TLS settings"),
        }
    }
}

/// Accepts TLS connections and serves `router` on each (HTTP/1.1 or HTTP/2), attaching the
/// connection's [`Peer`] to every request, until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<TlsHandle>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => return,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "failed to accept a metrics API connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let snapshot = tls.current();
        let router = router.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let acceptor = tokio_rustls::TlsAcceptor::from(snapshot.server.clone());
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        debug!(%remote, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
            let peer = Peer {
                client_certificate_name: stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|certificate| tls::subject_common_name(certificate)),
                request_header: snapshot.request_header.clone(),
            };
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(peer.clone());
                    router.clone().call(request.map(axum::body::Body::new))
                },
            );
            if let Err(error) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%remote, %error, "metrics API connection ended with an error");
            }
        });
    }
}
