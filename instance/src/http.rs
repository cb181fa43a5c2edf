//! The instance manager's own port: `/healthz`, `/readyz`, `/status` and `/metrics`, all
//! read-only views of what the control loop last published ([`Report`]). No secret is ever part
//! of a status document, so none can appear here.

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use scaled_contract::instance::{InstanceRole, InstanceStatus};
use serde::Serialize;

use crate::metrics::Metrics;

/// What the control loop publishes.
#[derive(Debug)]
pub struct Report {
    status: RwLock<InstanceStatus>,
    state: RwLock<Health>,
    metrics: Metrics,
}

#[derive(Clone, Copy, Debug)]
struct Health {
    healthy: bool,
    postgres_up: bool,
}

impl Report {
    /// A report for `pod` of `shard`, Pending until the loop says more.
    pub fn new(pod: &str, shard: u32) -> Arc<Self> {
        let status = InstanceStatus {
            pod: pod.to_string(),
            shard,
            role: InstanceRole::Pending,
            ready: false,
            server_major_version: None,
            data_major_version: None,
            system_identifier: None,
            timeline: None,
            current_lsn: None,
            received_lsn: None,
            replayed_lsn: None,
            lag_bytes: None,
            lag_seconds: None,
            primary_pod: None,
            streaming_replicas: Vec::new(),
            problem: None,
            reclones: 0,
            last_reclone_reason: None,
        };
        let metrics = Metrics::new();
        metrics.observe(&status, false);
        Arc::new(Report {
            status: RwLock::new(status),
            state: RwLock::new(Health {
                healthy: true,
                postgres_up: false,
            }),
            metrics,
        })
    }

    /// Replaces the status document.
    pub fn publish(&self, status: InstanceStatus, postgres_up: bool) {
        self.metrics.observe(&status, postgres_up);
        *self
            .status
            .write()
            .expect("the status lock is never poisoned") = status;
        self.state
            .write()
            .expect("the health lock is never poisoned")
            .postgres_up = postgres_up;
    }

    /// Marks the manager as no longer working as intended (Postgres died under it).
    pub fn set_unhealthy(&self) {
        self.state
            .write()
            .expect("the health lock is never poisoned")
            .healthy = false;
    }

    /// The current status document.
    pub fn status(&self) -> InstanceStatus {
        self.status
            .read()
            .expect("the status lock is never poisoned")
            .clone()
    }

    fn health(&self) -> Health {
        *self
            .state
            .read()
            .expect("the health lock is never poisoned")
    }
}

/// The router.
pub fn router(report: Arc<Report>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(report)
}

/// Binds `address` and serves until the process ends.
pub async fn serve(
    address: SocketAddr,
    report: Arc<Report>,
) -> Result<tokio::task::JoinHandle<()>, std::io::Error> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    tracing::info!(%address, "serving /healthz /readyz /status /metrics");
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router(report)).await {
            tracing::error!(%error, "the HTTP server stopped");
        }
    }))
}

#[derive(Serialize)]
struct Probe {
    ok: bool,
    role: InstanceRole,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

async fn healthz(State(report): State<Arc<Report>>) -> impl IntoResponse {
    let health = report.health();
    let status = report.status();
    let code = if health.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Probe {
            ok: health.healthy,
            role: status.role,
            reason: (!health.healthy).then(|| "postgres exited unexpectedly".to_string()),
        }),
    )
}

async fn readyz(State(report): State<Arc<Report>>) -> impl IntoResponse {
    let status = report.status();
    let code = if status.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let reason = if status.ready {
        None
    } else {
        Some(match (&status.problem, status.role) {
            (Some(problem), _) => problem.reason.clone(),
            (None, InstanceRole::Primary | InstanceRole::Replica) => {
                "postgres does not accept connections in its role yet".to_string()
            }
            (None, role) => format!("{role:?}"),
        })
    };
    (
        code,
        Json(Probe {
            ok: status.ready,
            role: status.role,
            reason,
        }),
    )
}

async fn status(State(report): State<Arc<Report>>) -> impl IntoResponse {
    Json(report.status())
}

async fn metrics(State(report): State<Arc<Report>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        report.metrics.render(),
    )
}
