//! Request metrics and the metrics endpoint (served on its own port).
//!
//! Routes are labelled by their matched template (`/api/users/{id}`), never the raw path, so an
//! attacker cannot create series; unmatched requests share one label.

use std::time::{Duration, Instant};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};

use std::sync::Arc;

use super::error::FailedDependency;
use crate::{db::Cluster, metrics::Metrics, queue, redis_client::RedisClient};

/// Requests slower than this are logged as warnings.
const SLOW_REQUEST: Duration = Duration::from_secs(1);

/// Copies the matched route into the response so the outer layer can label by it.
pub async fn remember_route(request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(matched) = matched {
        response.extensions_mut().insert(matched);
    }
    response
}

/// Counts and times every request.
pub async fn track(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let route = response
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |matched| matched.as_str());
    let status = response.status();
    metrics
        .http_requests
        .with_label_values(&[method.as_str(), route, status.as_str()])
        .inc();
    metrics
        .http_duration
        .with_label_values(&[route])
        .observe(elapsed.as_secs_f64());
    if let Some(FailedDependency(what)) = response.extensions().get::<FailedDependency>() {
        metrics.db_errors.with_label_values(&[what]).inc();
    }
    if elapsed >= SLOW_REQUEST {
        tracing::warn!(%method, route, status = status.as_u16(), elapsed_ms = elapsed.as_millis() as u64, "slow request");
    }
    response
}

/// What the metrics endpoint reads at scrape time.
#[derive(Clone)]
pub struct MetricsSources {
    /// The registry.
    pub metrics: Metrics,
    /// Pools to report.
    pub cluster: Arc<Cluster>,
    /// Streams to measure.
    pub redis: RedisClient,
}

/// `/metrics` (and a liveness `/health`) for the metrics port, used by servers and workers.
pub fn metrics_router(sources: MetricsSources) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/health", get(|| async { "ok" }))
        .with_state(sources)
}

async fn render(State(sources): State<MetricsSources>) -> impl IntoResponse {
    sources.cluster.record_pool_metrics();
    for (stream, length, pending) in queue::depths(&sources.redis).await {
        sources
            .metrics
            .queue_depth
            .with_label_values(&[stream, "length"])
            .set(length as i64);
        sources
            .metrics
            .queue_depth
            .with_label_values(&[stream, "pending"])
            .set(pending as i64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        sources.metrics.render(),
    )
}
