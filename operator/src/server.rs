//! The probe and metrics server, on its own port: `/healthz` (the process runs), `/readyz`
//! (the process can serve: leader running the controller, or standby waiting for the lease),
//! `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::Metrics;

/// State the probe handlers read.
#[derive(Clone)]
pub struct ProbeState {
    /// Metrics to encode.
    pub metrics: Metrics,
    /// Set once the process has connected to the API server.
    pub ready: Arc<AtomicBool>,
}

/// The probe router.
pub fn router(state: ProbeState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<ProbeState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn metrics(
    State(state): State<ProbeState>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.encode(),
    )
}

/// Serves the router until `shutdown` completes.
pub async fn serve(
    address: SocketAddr,
    state: ProbeState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn get_status(state: ProbeState, path: &str) -> StatusCode {
        let request = http::Request::get(path)
            .body(axum::body::Body::empty())
            .expect("valid request");
        router(state)
            .oneshot(request)
            .await
            .expect("infallible")
            .status()
    }

    #[tokio::test]
    async fn readyz_fails_until_the_operator_is_connected() {
        let state = ProbeState {
            metrics: Metrics::new(),
            ready: Arc::new(AtomicBool::new(false)),
        };
        assert_eq!(
            get_status(state.clone(), "/readyz").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get_status(state.clone(), "/healthz").await, StatusCode::OK);
        state.ready.store(true, Ordering::Relaxed);
        assert_eq!(get_status(state.clone(), "/readyz").await, StatusCode::OK);
        assert_eq!(get_status(state, "/metrics").await, StatusCode::OK);
    }
}
