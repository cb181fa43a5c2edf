//! `/api/sessions`: sign in (email and password), read and sign out of the caller's session.
//! Session responses are never cacheable (`private, no-store`), and the cookie is `HttpOnly`,
//! `SameSite=Lax`, and `Secure` unless configured off for plain-HTTP development.
//!
//! A failed sign-in says only "email or password is incorrect", and costs the same whether the
//! account is unknown, has no password yet, or got a wrong one (see [`crate::passwords`]). Each
//! client's sign-ins are limited whatever the account ([`super::limits`]), and failures are
//! limited per account and client, with a much larger per-account backstop
//! ([`crate::ratelimit::AttemptLimiter`]): someone guessing at an account locks out their own
//! client, not the owner's. A session ends when unused for `sessions.ttlSeconds`, and in any case
//! once its absolute lifetime since sign-in has passed ([`crate::sessions`]).

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
    extract::JsonBody,
    limits::{self, Client},
};
use crate::{db::users, passwords::Password, ratelimit::LimitedRoute, sessions::SessionCookie};

/// Session routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/sessions", post(create))
        .route("/api/sessions/current", get(read).delete(remove))
}

/// Longest email accepted at sign-in (as at sign-up).
const MAX_EMAIL_CHARS: usize = 254;

#[derive(Deserialize)]
struct SignIn {
    email: String,
    password: Password,
}

/// The `Set-Cookie` value of session `value` (empty with `max_age` 0 to clear it).
pub(super) fn session_cookie(state: &AppState, value: &str, max_age: u64) -> Option<HeaderValue> {
    let settings = &state.config.sessions;
    let secure = if settings.cookie_secure {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}",
        crate::sessions::cookie_pair(&settings.cookie_name, value)
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
    headers.insert(header::VARY, HeaderValue::from_static("cookie"));
    if let Some(cookie) = cookie {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

/// The cookie value of the caller's session, if it has the shape of one.
fn current_value(state: &AppState, headers: &HeaderMap) -> Option<String> {
    super::extract::cookie(headers, &state.config.sessions.cookie_name)
        .filter(|value| crate::sessions::is_well_formed(value))
}

/// The session the caller's cookie names (a token must verify).
fn current_cookie(state: &AppState, headers: &HeaderMap) -> Option<SessionCookie> {
    current_value(state, headers).and_then(|value| state.sessions.identify(&value))
}

async fn create(
    State(state): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SignIn>,
) -> Result<Response, AppError> {
    let allowance = limits::check(&state, LimitedRoute::SignIn, &client).await?;
    let email = body.email.trim();
    if email.is_empty() || email.chars().count() > MAX_EMAIL_CHARS {
        return Err(AppError::invalid(
            "email",
            format!("must be 1 to {MAX_EMAIL_CHARS} characters"),
        ));
    }
    if body.password.is_too_long() {
        return Err(AppError::invalid(
            "password",
            format!("must be at most {} characters", crate::passwords::MAX_CHARS),
        ));
    }
    let attempt = match state.sign_in.begin(email, &client).await? {
        Ok(attempt) => attempt,
        Err(retry_after_seconds) => {
            return Err(AppError::TooManyAttempts {
                retry_after_seconds,
            });
        }
    };
    let account = users::credentials_by_email(&state.cluster, email).await?;
    let stored = account
        .as_ref()
        .and_then(|account| account.password_hash.as_deref());
    let matched = state.passwords.verify(&body.password, stored).await?;
    let Some(account) = account.filter(|_| matched) else {
        return Err(AppError::Unauthorized("email or password is incorrect"));
    };
    state.sign_in.succeeded(attempt).await;
    // A new id on every sign-in, and the old session (if any) ends: no session fixation.
    let previous = current_value(&state, &headers);
    let (token, data) = state
        .sessions
        .open(account.user_id, previous.as_deref())
        .await?;
    let expires_in = state.sessions.expires_in(&data);
    let body = json!({ "session": data, "expires_in": expires_in });
    let mut response = private(
        StatusCode::CREATED,
        body,
        session_cookie(&state, &token, expires_in),
    );
    allowance.stamp(&mut response);
    Ok(response)
}

async fn read(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, AppError> {
    let cookie = current_cookie(&state, &headers).ok_or(AppError::NotFound("session"))?;
    let data = state
        .sessions
        .load(&cookie)
        .await?
        .ok_or(AppError::NotFound("session"))?;
    // A session voided by a password change is no session.
    let user_id = crate::sessions::user_of(&data).ok_or(AppError::NotFound("session"))?;
    if state.sessions.generation(user_id).await? != crate::sessions::generation_of(&data) {
        return Err(AppError::NotFound("session"));
    }
    let expires_in = state.sessions.expires_in(&data);
    Ok(private(
        StatusCode::OK,
        json!({ "session": data, "expires_in": expires_in }),
        None,
    ))
}

async fn remove(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, AppError> {
    let cookie = current_cookie(&state, &headers).ok_or(AppError::NotFound("session"))?;
    if !state.sessions.delete(&cookie.id).await? {
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
