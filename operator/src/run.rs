//! The `run` subcommand: probe server, leader election on a Lease, the controller while this
//! process leads, and a clean stop on SIGTERM/SIGINT.
//!
//! Only the leader reconciles, so two replicas never write at once. A leader that loses its
//! lease stops with an error; Kubernetes restarts it as a standby.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::context::Context;
use crate::controller::{self, Scope};
use crate::metrics::Metrics;
use crate::metrics_api::{MetricsApi, MetricsApiError, MetricsApiSettings};
use crate::server::{self, ProbeState};
use crate::validate::Defaults;

/// Settings of `run`.
#[derive(Clone, Debug)]
pub struct RunSettings {
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    pub probe_address: SocketAddr,
    /// Take a Lease before reconciling (off only for single-process development).
    pub leader_election: bool,
    /// Namespace of the Lease.
    pub lease_namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This process's identity in the Lease and in Events.
    pub identity: String,
    /// What the operator fills in that a ScaledApp does not say.
    pub defaults: Defaults,
    /// Which ScaledApps to reconcile.
    pub scope: Scope,
    /// The aggregated metrics APIs, served on every replica; `None`: not served.
    pub metrics_api: Option<MetricsApiSettings>,
}

/// Why `run` stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No usable kubeconfig or in-cluster configuration.
    #[error(
        "failed to build a Kubernetes client (check KUBECONFIG or the in-cluster service account): {0}"
    )]
    Client(#[source] kube::Error),
    /// The probe port could not be bound.
    #[error("failed to serve probes on {address}: {source}")]
    Probes {
        /// Address.
        address: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The Lease could not be used.
    #[error("failed to take part in leader election on Lease {namespace}/{name}: {source}")]
    Lease {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        #[source]
        source: LeaseManagerError,
    },
    /// The metrics APIs could not start.
    #[error(transparent)]
    MetricsApi(MetricsApiError),
    /// Another process took the lease while this one led.
    #[error("lost the leader lease; stopping so that only one operator writes")]
    LostLeadership,
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// How long in-flight reconciles may take to finish after a stop signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Waits until the API server answers; retries every 2 s, logging each failure.
async fn wait_for_api(client: &Client) -> bool {
    loop {
        match client.apiserver_version().await {
            Ok(_) => return true,
            Err(error) => {
                warn!(%error, "the API server does not answer yet; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Runs the controller until `stopped` completes, then gives in-flight reconciles
/// [`SHUTDOWN_GRACE`] to finish: a controller whose watches are stuck retrying an unreachable
/// API server must not keep the process alive after SIGTERM.
async fn run_controller(
    client: Client,
    context: Arc<Context>,
    scope: Scope,
    stop: watch::Receiver<bool>,
) {
    let deadline = {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    let stopped = async move {
        let mut stop = stop;
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    tokio::select! {
        _ = controller::run(client, context, scope, stopped) => {}
        _ = deadline => warn!(grace = ?SHUTDOWN_GRACE, "reconciles did not finish in time; stopping anyway"),
    }
}

/// Runs the operator until a signal (Ok) or a fatal error.
pub async fn run(settings: RunSettings) -> Result<(), RunError> {
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_sender, stop) = watch::channel(false);
    let stopped = {
        let stop = stop.clone();
        move || {
            let mut stop = stop.clone();
            async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            }
        }
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown requested");
        let _ = stop_sender.send(true);
    });

    let probes = ProbeState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let listener_address = settings.probe_address;
    let probe_task = tokio::spawn(server::serve(listener_address, probes, stopped()));
    // Every replica serves the metrics APIs, leader or not: the APIService's Service balances
    // over all of them.
    let metrics_api_task = match settings.metrics_api.clone() {
        Some(api) => {
            let server = MetricsApi::start(client.clone(), api, &settings.scope)
                .await
                .map_err(RunError::MetricsApi)?;
            Some(tokio::spawn(server.run(stopped())))
        }
        None => None,
    };

    let context = Arc::new(Context::new(
        client.clone(),
        metrics,
        Some(settings.identity.clone()),
        settings.defaults.clone(),
    ));
    let lease_error = |source| RunError::Lease {
        namespace: settings.lease_namespace.clone(),
        name: settings.lease_name.clone(),
        source,
    };

    let result = if settings.leader_election {
        let manager = LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
            .with_namespace(&settings.lease_namespace)
            .with_identity(&settings.identity)
            .with_duration(15)
            .with_grace(5)
            .build()
            .await
            .map_err(lease_error)?;
        let (mut leading, lease_task) = manager.watch().await;
        ready.store(true, Ordering::Relaxed);
        info!(lease = %settings.lease_name, identity = %settings.identity, "waiting to lead");
        let mut stop_wait = stop.clone();
        let became_leader = tokio::select! {
            result = leading.wait_for(|leader| *leader) => result.is_ok(),
            _ = stop_wait.wait_for(|stopped| *stopped) => false,
        };
        let outcome = if became_leader {
            info!("leading: starting the controller");
            let mut lost = leading.clone();
            tokio::select! {
                _ = run_controller(client, context, settings.scope.clone(), stop.clone()) => Ok(()),
                _ = lost.wait_for(|leader| !*leader) => Err(RunError::LostLeadership),
            }
        } else {
            Ok(())
        };
        // Closing the channel makes the lease task release the lease for a fast hand-over.
        drop(leading);
        match lease_task.await {
            Ok(Ok(manager)) => {
                if let Err(error) = manager.release().await {
                    warn!(%error, "failed to release the lease; it expires by itself");
                }
            }
            Ok(Err(error)) => warn!(%error, "lease manager stopped with an error"),
            Err(error) => warn!(%error, "lease manager task failed"),
        }
        outcome
    } else {
        // Without a lease to take, readiness means the API server has answered once.
        let mut stop_wait = stop.clone();
        let connected = tokio::select! {
            connected = wait_for_api(&client) => connected,
            _ = stop_wait.wait_for(|stopped| *stopped) => false,
        };
        if connected {
            ready.store(true, Ordering::Relaxed);
            run_controller(client, context, settings.scope.clone(), stop.clone()).await;
        }
        Ok(())
    };
    if let Some(task) = metrics_api_task {
        task.abort();
    }
    match probe_task.await {
        Ok(Ok(())) => {}
        Ok(Err(source)) => {
            return Err(RunError::Probes {
                address: listener_address,
                source,
            });
        }
        Err(error) => warn!(%error, "probe server task failed"),
    }
    result
}
