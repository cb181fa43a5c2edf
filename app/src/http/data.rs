//! `GET /api/data`, guarded by the per-client rate limiter with the configured `rateLimit`: keyed
//! by the signed-in user when the request has a live session, else by the client address (see
//! [`super::limits`]). Nothing else the client sends (`X-Client-ID`, an untrusted
//! `X-Forwarded-For`) changes the key.

use std::net::SocketAddr;

use axum::{
    Json, Router,
    extract::{ConnectInfo, Request, State},
    http::header,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use super::{AppState, error::AppError, limits};

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
    let client = limits::client_key(&state, peer.ip(), &parts).await;
    let request = Request::from_parts(parts, body);
    let allowance = limits::enforce(state.limiter.check(&client).await)?;
    let mut response = next.run(request).await;
    allowance.stamp(&mut response);
    Ok(response)
}
