//! `GET /api/data`, guarded by the per-client rate limiter (keyed by `X-Client-ID`, or the peer
//! address when the header is absent).

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

use super::{AppState, error::AppError};
use crate::ratelimit::Decision;

const MAX_CLIENT_ID: usize = 128;

/// Data routes.
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/api/data", get(data))
        .route_layer(middleware::from_fn_with_state(state, limit))
}

async fn data() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "private, no-store")],
        Json(json!({ "data": "response" })),
    )
}

async fn limit(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, AppError> {
    let client = client_id(&request)?;
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

fn client_id(request: &Request) -> Result<String, AppError> {
    if let Some(value) = request.headers().get("x-client-id") {
        let text = value
            .to_str()
            .ok()
            .filter(|text| {
                !text.is_empty()
                    && text.len() <= MAX_CLIENT_ID
                    && text.bytes().all(|byte| byte.is_ascii_graphic())
            })
            .ok_or_else(|| {
                AppError::BadRequest(format!(
                    "X-Client-ID must be 1 to {MAX_CLIENT_ID} visible ASCII characters"
                ))
            })?;
        return Ok(format!("id:{text}"));
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |info| info.0.ip().to_string());
    Ok(format!("ip:{peer}"))
}
