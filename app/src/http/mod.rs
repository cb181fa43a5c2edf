//! The HTTP API: one router per feature, merged here with the shared layers (metrics, body limit,
//! compression, panic guard) and JSON fallbacks for unknown paths and methods.

pub mod auth;
mod caching;
mod client;
mod data;
pub mod error;
pub mod extract;
mod health;
mod observe;
mod orders;
mod sessions;
mod users;

use std::sync::Arc;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    middleware,
    response::{IntoResponse, Response},
};
use scaled_contract::RuntimeConfig;
use tokio::sync::Notify;
use tower_http::{catch_panic::CatchPanicLayer, compression::CompressionLayer};

use crate::{
    cache::UserCache,
    db::Cluster,
    metrics::Metrics,
    password_tokens::PasswordTokens,
    passwords::Passwords,
    ratelimit::{AttemptLimiter, RateLimiter},
    redis_client::RedisClient,
    sessions::SessionStore,
};
use error::AppError;

pub use observe::{MetricsSources, metrics_router};

/// Largest accepted request body. Bigger ones get 413 before they are buffered.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything handlers share; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Shards.
    pub cluster: Arc<Cluster>,
    /// User cache.
    pub cache: Arc<UserCache>,
    /// Rate limiter of `/api/data`.
    pub limiter: RateLimiter,
    /// Session store.
    pub sessions: SessionStore,
    /// Password hashing.
    pub passwords: Passwords,
    /// One-time password-set tokens.
    pub password_tokens: PasswordTokens,
    /// Failed sign-ins per account.
    pub sign_in: AttemptLimiter,
    /// Metrics.
    pub metrics: Metrics,
    /// Rung after outbox rows are written.
    pub relay_wake: Arc<Notify>,
    /// The document the process started with (the shard map and rate-limit settings in force
    /// are the cluster's and the limiter's: those two reload).
    pub config: Arc<RuntimeConfig>,
    /// Redis.
    pub redis: RedisClient,
}

/// The public API router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(users::router())
        .merge(orders::router())
        .merge(data::router(state.clone()))
        .merge(sessions::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Inner: records the matched route for the outer metrics layer (fallbacks have none).
        .route_layer(middleware::from_fn(observe::remember_route))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CompressionLayer::new())
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            observe::track,
        ))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

async fn not_found() -> AppError {
    AppError::NotFound("route")
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}

fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    AppError::Internal("handler panicked".into()).into_response()
}
