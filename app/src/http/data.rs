//! `GET /api/data`, guarded by the per-client rate limiter: keyed by the signed-in user when the
//! request has a live session, else by the client address (see [`super::client`]). Nothing else
//! the client sends (`X-Client-ID`, an untrusted `X-Forwarded-For`) changes the key.

use std::net::SocketAddr;

use axum::{
    Json, Router,
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use super::{AppState, auth, client::client_address, error::AppError};
use crate::ratelimit::{ClientKey, Decision};

/// Data routes.
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/api/data", get(data))
        .route_layer(middleware::from_fn_with_state(state, limit))
}

async fn data() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "private, no-store"),
            (header::VARY, "cookie"),
        ],
        Json(json!({ "data": "response" })),
    )
}

async fn limit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Result<Response, AppError> {
    let (parts, body) = request.into_parts();
    let client = match auth::signed_in(&state, &parts).await {
        Ok(Some(user)) => ClientKey::User(user.user_id),
        // No session, or no session store to ask: count the address (if Redis is down the
        // limiter cannot count either, and its failure mode decides).
        Ok(None) | Err(_) => {
            let hops = state.limiter.settings().trusted_proxy_hops;
            ClientKey::address(client_address(peer.ip(), &parts.headers, hops))
        }
    };
    let request = Request::from_parts(parts, body);
    match state.limiter.check(&client).await {
        Decision::Allowed {
            limit,
            remaining,
            reset_seconds,
        } => {
            let mut response = next.run(request).await;
            let headers = response.headers_mut();
            headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
            headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
            headers.insert("x-ratelimit-reset", HeaderValue::from(reset_seconds));
            Ok(response)
        }
        Decision::Rejected {
            limit,
            retry_after_seconds,
        } => Err(AppError::RateLimited {
            limit,
            retry_after_seconds,
        }),
        Decision::Degraded { allowed: true } => Ok(next.run(request).await),
        Decision::Degraded { allowed: false } => Err(AppError::Unavailable {
            what: "rate limiter",
            retry_after_seconds: 1,
        }),
    }
}
