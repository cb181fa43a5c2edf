//! `/api/sessions`: create (log in), read and delete the caller's session. Session responses are
//! never cacheable (`private, no-store`), and the cookie is `HttpOnly`, `SameSite=Lax`, and
//! `Secure` unless configured off for plain-HTTP development.

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    AppState,
    error::AppError,
    extract::{JsonBody, cookie},
};
use crate::sessions::is_well_formed;

/// Session routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/sessions", post(create))
        .route("/api/sessions/current", get(read).delete(remove))
}

#[derive(Deserialize)]
struct NewSession {
    user_id: i64,
}

fn session_cookie(state: &AppState, value: &str, max_age: u64) -> Option<HeaderValue> {
    let settings = &state.config.sessions;
    let secure = if settings.cookie_secure {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}",
        settings.cookie_name
    ))
    .ok()
}

fn private(status: StatusCode, body: Value, cookie: Option<HeaderValue>) -> Response {
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    if let Some(cookie) = cookie {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

fn current_id(state: &AppState, headers: &HeaderMap) -> Option<String> {
    cookie(headers, &state.config.sessions.cookie_name).filter(|id| is_well_formed(id))
}

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<NewSession>,
) -> Result<Response, AppError> {
    if body.user_id <= 0 {
        return Err(AppError::invalid("user_id", "must be a positive integer"));
    }
    if state.cache.get(body.user_id, None).await?.is_none() {
        return Err(AppError::NotFound("user"));
    }
    let data = json!({ "user_id": body.user_id, "created_at": chrono::Utc::now() });
    // A new id on every login, and the old session (if any) ends: no session fixation.
    let previous = current_id(&state, &headers);
    let id = state.sessions.create(&data, previous.as_deref()).await?;
    let ttl = state.sessions.ttl().as_secs();
    let body = json!({ "session": data, "expires_in": ttl });
    Ok(private(
        StatusCode::CREATED,
        body,
        session_cookie(&state, &id, ttl),
    ))
}

async fn read(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, AppError> {
    let id = current_id(&state, &headers).ok_or(AppError::NotFound("session"))?;
    let data = state
        .sessions
        .load(&id)
        .await?
        .ok_or(AppError::NotFound("session"))?;
    let ttl = state.sessions.ttl().as_secs();
    Ok(private(
        StatusCode::OK,
        json!({ "session": data, "expires_in": ttl }),
        None,
    ))
}

async fn remove(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, AppError> {
    let id = current_id(&state, &headers).ok_or(AppError::NotFound("session"))?;
    if !state.sessions.delete(&id).await? {
        return Err(AppError::NotFound("session"));
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    if let Some(cookie) = session_cookie(&state, "", 0) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}
