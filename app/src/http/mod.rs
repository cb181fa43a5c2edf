//! The HTTP API: one router per feature, merged here with the shared layers (metrics and panic
//! guard, compression, body limit) and JSON fallbacks for unknown paths and methods.

pub mod auth;
mod caching;
mod client;
mod data;
pub mod error;
pub mod extract;
mod health;
mod limits;
mod observe;
mod orders;
mod sessions;
mod users;

use std::{ops::Deref, sync::Arc};

use axum::{Router, extract::DefaultBodyLimit};
use scaled_contract::RuntimeConfig;
use tokio::sync::Notify;
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;

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

pub use health::Readiness;
pub use observe::{MetricsSources, metrics_router};

/// Largest accepted request body. Bigger ones get 413 before they are buffered.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything handlers share, behind one reference count: axum clones the state several times per
/// request (into each route's service, then for every `State` extractor).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    /// Shares `services` with every handler.
    pub fn new(services: Services) -> Self {
        AppState(Arc::new(services))
    }
}

impl Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The clients, caches and settings inside [`AppState`].
pub struct Services {
    /// Shards.
    pub cluster: Arc<Cluster>,
    /// User cache.
    pub cache: Arc<UserCache>,
    /// Per-client rate limiter of `/api/data`, sign-in, sign-up and orders.
    pub limiter: RateLimiter,
    /// Session store.
    pub sessions: SessionStore,
    /// Password hashing.
    pub passwords: Passwords,
    /// One-time password-set tokens.
    pub password_tokens: PasswordTokens,
    /// Failed sign-ins per account and client, and per account.
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
    /// Whether Redis and every shard primary have answered once (see `/ready`).
    pub readiness: Readiness,
    /// Signs the read-your-writes tokens handed to clients (the session secret).
    pub consistency_key: scaled_contract::Secret,
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
        // One `layer` call, so each route gets one service stack rather than a boxed service per
        // layer (axum clones a route's service for every request it serves). It runs after
        // routing, so the matched route template is known to the metrics.
        .layer(
            ServiceBuilder::new()
                .layer(observe::ObserveLayer::new(&state.metrics))
                .layer(CompressionLayer::new())
                .layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .with_state(state)
}

async fn not_found() -> AppError {
    AppError::NotFound("route")
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}
