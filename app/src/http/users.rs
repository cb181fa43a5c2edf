//! `/api/users`: sign up, read (cached, CDN-cacheable), update, batch read and pages, set a
//! password; `/api/me`: the signed-in user's own account.
//!
//! Sign-up answers 202 with the same body keys whether or not the address was free, and asks
//! whether it is taken before hashing the password, so a registered address costs no hash. A
//! new account's answer carries its private representation; for a registered address the same
//! keys are `null`, and the address's owner is told through the email queue (at most once per
//! [`crate::ratelimit::NOTICE_INTERVAL`]). Each client's sign-ups are rate-limited
//! ([`super::limits`]).
//!
//! Two representations: the public one (id, name, created_at), which anyone may read and a CDN
//! may cache, and the private one (with the email), which only the signed-in owner gets, always
//! `private, no-store`. Changing a user (name, email, password) needs that user's session: 401
//! without one, 403 with someone else's.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, put},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    AppState,
    auth::SignedIn,
    caching::{self, Audience},
    error::AppError,
    extract::{Consistency, JsonBody, parse_id},
    limits::{self, Allowance, Client},
};
use crate::{
    db::users::{self, Created, Updated, User},
    passwords::Password,
    queue::EMAIL_STREAM,
    ratelimit::{ClientKey, LimitedRoute},
};

/// Most ids one batch read accepts.
const MAX_BATCH: usize = 100;
/// Largest page.
const MAX_PAGE: i64 = 100;
/// Default page.
const DEFAULT_PAGE: i64 = 20;
/// Deepest offset page (each shard must read offset + limit rows).
const MAX_OFFSET: i64 = 1000;
const MAX_NAME_CHARS: usize = 100;
const MAX_EMAIL_CHARS: usize = 254;
/// The message of every sign-up answer: true for a free address and for a registered one.
const SIGN_UP_MESSAGE: &str = "sign-up received: a new address gets its account now, and the \
     owner of an address that is already registered gets a notice instead";

/// User routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/users", get(list).post(create))
        .route("/api/users/{id}", get(read).put(update))
        .route("/api/users/{id}/password", put(set_password))
        .route("/api/me", get(me))
}

/// The body of every sign-up answer: the new account's private representation, or the same keys
/// all `null` when the address was already registered.
#[derive(Serialize)]
struct SignUpAnswer<'a> {
    id: Option<i64>,
    name: Option<&'a str>,
    email: Option<&'a str>,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
    message: &'static str,
}

impl<'a> SignUpAnswer<'a> {
    fn of(user: Option<&'a User>) -> Self {
        SignUpAnswer {
            id: user.map(|user| user.id),
            name: user.map(|user| user.name.as_str()),
            email: user.map(|user| user.email.as_str()),
            created_at: user.map(|user| user.created_at),
            updated_at: user.map(|user| user.updated_at),
            message: SIGN_UP_MESSAGE,
        }
    }
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
    email: String,
    password: Password,
}

/// A new password, proved either by the owner's session plus the current password (when one is
/// set), or by a one-time password-set token.
#[derive(Deserialize)]
struct PasswordChange {
    password: Password,
    current_password: Option<Password>,
    token: Option<String>,
}

#[derive(Deserialize)]
struct UserPatch {
    name: Option<String>,
    email: Option<String>,
}

#[derive(Deserialize)]
struct ListQuery {
    ids: Option<String>,
    after: Option<String>,
    limit: Option<String>,
    page: Option<String>,
    page_size: Option<String>,
}

fn validate_name(name: &str) -> Result<&str, AppError> {
    let name = name.trim();
    let length = name.chars().count();
    if length == 0 || length > MAX_NAME_CHARS {
        return Err(AppError::invalid(
            "name",
            format!("must be 1 to {MAX_NAME_CHARS} characters, got {length}"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(AppError::invalid(
            "name",
            "must not contain control characters",
        ));
    }
    Ok(name)
}

fn validate_email(email: &str) -> Result<&str, AppError> {
    let email = email.trim();
    let shaped = email.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
    });
    if email.chars().count() > MAX_EMAIL_CHARS {
        return Err(AppError::invalid(
            "email",
            format!("must be at most {MAX_EMAIL_CHARS} characters"),
        ));
    }
    if !shaped
        || email
            .chars()
            .any(|character| character.is_whitespace() || character.is_control())
    {
        return Err(AppError::invalid(
            "email",
            "must look like name@example.com",
        ));
    }
    Ok(email)
}

/// The private representation, for its owner only.
fn user_response(status: StatusCode, user: &User) -> Response {
    (
        status,
        [
            (header::CACHE_CONTROL, "private, no-store"),
            (header::VARY, "cookie"),
        ],
        Json(user),
    )
        .into_response()
}

fn validate_password(password: &Password) -> Result<(), AppError> {
    match password.problem() {
        Some(reason) => Err(AppError::invalid("password", reason)),
        None => Ok(()),
    }
}

async fn create(
    State(state): State<AppState>,
    Client(client): Client,
    consistency: Consistency,
    JsonBody(body): JsonBody<NewUser>,
) -> Result<Response, AppError> {
    let allowance = limits::check(&state, LimitedRoute::SignUp, &client).await?;
    let name = validate_name(&body.name)?;
    let email = validate_email(&body.email)?;
    validate_password(&body.password)?;
    // Before the hash: a registered address must cost no argon2 work.
    if let Some(owner) = users::email_owner(&state.cluster, email).await? {
        tell_owner(&state, owner).await?;
        return Ok(sign_up_answer(None, allowance));
    }
    let password_hash = state.passwords.hash(&body.password).await?;
    match users::create(&state.cluster, name, email, Some(&password_hash)).await? {
        Created::User(user, token) => {
            let mut response = sign_up_answer(Some(&user), allowance);
            if let Ok(location) = HeaderValue::from_str(&format!("/api/users/{}", user.id)) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            consistency.record(token, window_seconds(&state), &mut response);
            Ok(response)
        }
        // Registered a moment ago by a concurrent sign-up.
        Created::EmailTaken => {
            if let Some(owner) = users::email_owner(&state.cluster, email).await? {
                tell_owner(&state, owner).await?;
            }
            Ok(sign_up_answer(None, allowance))
        }
    }
}

/// 202 with a [`SignUpAnswer`], never cacheable.
fn sign_up_answer(user: Option<&User>, allowance: Allowance) -> Response {
    let mut response = (
        StatusCode::ACCEPTED,
        [
            (header::CACHE_CONTROL, "private, no-store"),
            (header::VARY, "cookie"),
        ],
        Json(SignUpAnswer::of(user)),
    )
        .into_response();
    allowance.stamp(&mut response);
    response
}

/// Queues the notice that someone tried to sign up with `owner`'s address, unless one went out
/// within the notice interval.
async fn tell_owner(state: &AppState, owner: i64) -> Result<(), AppError> {
    if state.limiter.notice_due(owner).await {
        users::queue_sign_up_notice(&state.cluster, owner, EMAIL_STREAM).await?;
        state.relay_wake.notify_one();
    }
    Ok(())
}

async fn read(
    State(state): State<AppState>,
    Path(id): Path<String>,
    consistency: Consistency,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let id = parse_id("id", &id)?;
    let shard = state.cluster.shard_for_user(id).index;
    let read_after = consistency.read_after(shard);
    let entry = state
        .cache
        .get(id, read_after)
        .await?
        .ok_or(AppError::NotFound("user"))?;
    let audience = match read_after {
        Some(_) => Audience::Private,
        None => Audience::Public {
            max_age: state.config.cdn.max_age_seconds,
        },
    };
    Ok(caching::json(
        &headers,
        StatusCode::OK,
        entry.json.clone(),
        &entry.etag,
        audience,
    ))
}

async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    signed_in: SignedIn,
    consistency: Consistency,
    JsonBody(body): JsonBody<UserPatch>,
) -> Result<Response, AppError> {
    let id = parse_id("id", &id)?;
    signed_in.must_be(id)?;
    let name = body.name.as_deref().map(validate_name).transpose()?;
    let email = body.email.as_deref().map(validate_email).transpose()?;
    if name.is_none() && email.is_none() {
        return Err(AppError::invalid(
            "body",
            "must contain name, email or both",
        ));
    }
    match users::update(&state.cluster, id, name, email).await? {
        Updated::User(user, token) => {
            state.cache.invalidate_after_write(id, token.lsn).await;
            let mut response = user_response(StatusCode::OK, &user);
            consistency.record(token, window_seconds(&state), &mut response);
            Ok(response)
        }
        Updated::NotFound => Err(AppError::NotFound("user")),
        Updated::EmailTaken => Err(AppError::Conflict("email is already registered".into())),
        Updated::ChangeInProgress => Err(AppError::Conflict(
            "an earlier email change of this user is still being applied; retry shortly".into(),
        )),
    }
}

async fn list(
    State(state): State<AppState>,
    consistency: Consistency,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Response, AppError> {
    let body = if let Some(ids) = &query.ids {
        let ids = parse_ids(ids)?;
        let found = users::find_many(&state.cluster, &ids, &consistency.tokens).await?;
        let missing: Vec<i64> = ids
            .iter()
            .filter(|id| !found.iter().any(|user| user.id == **id))
            .copied()
            .collect();
        json!({ "users": public(&found), "missing": missing })
    } else if query.page.is_some() || query.page_size.is_some() {
        let page = parse_number("page", query.page.as_deref(), 1, 1, i64::MAX)?;
        let page_size = parse_number(
            "page_size",
            query.page_size.as_deref(),
            DEFAULT_PAGE,
            1,
            i64::MAX,
        )?
        .min(MAX_PAGE);
        let offset = (page - 1).saturating_mul(page_size);
        if offset > MAX_OFFSET {
            return Err(AppError::invalid(
                "page",
                format!("offset paging stops at {MAX_OFFSET} rows; use after=<last id> instead"),
            ));
        }
        let found =
            users::page_offset(&state.cluster, offset, page_size, &consistency.tokens).await?;
        json!({ "users": public(&found), "page": page, "page_size": page_size })
    } else {
        let after = parse_number("after", query.after.as_deref(), 0, 0, i64::MAX)?;
        let limit =
            parse_number("limit", query.limit.as_deref(), DEFAULT_PAGE, 1, i64::MAX)?.min(MAX_PAGE);
        let found = users::page_after(&state.cluster, after, limit, &consistency.tokens).await?;
        let next = (found.len() as i64 == limit)
            .then(|| found.last().map(|user| user.id))
            .flatten();
        json!({ "users": public(&found), "next_after": next })
    };
    let body = Bytes::from(body.to_string());
    let etag = caching::etag_of(&body);
    let audience = if consistency.tokens.is_empty() {
        Audience::Public {
            max_age: state.config.cdn.max_age_seconds,
        }
    } else {
        Audience::Private
    };
    Ok(caching::json(
        &headers,
        StatusCode::OK,
        body,
        &etag,
        audience,
    ))
}

fn public(users: &[User]) -> Vec<users::PublicUser<'_>> {
    users.iter().map(User::public).collect()
}

/// The signed-in user's own account, with its email.
async fn me(
    State(state): State<AppState>,
    signed_in: SignedIn,
    consistency: Consistency,
) -> Result<Response, AppError> {
    let shard = state.cluster.shard_for_user(signed_in.user_id).index;
    let entry = state
        .cache
        .get(signed_in.user_id, consistency.read_after(shard))
        .await?
        .ok_or(AppError::NotFound("user"))?;
    Ok(user_response(StatusCode::OK, &entry.user))
}

/// Sets a user's password: 204 on success.
async fn set_password(
    State(state): State<AppState>,
    Path(id): Path<String>,
    signed_in: Option<SignedIn>,
    JsonBody(body): JsonBody<PasswordChange>,
) -> Result<Response, AppError> {
    let id = parse_id("id", &id)?;
    let mut rotate = None;
    match (&body.token, signed_in) {
        (Some(token), _) => {
            validate_password(&body.password)?;
            if !state.password_tokens.redeem(token, id).await? {
                return Err(AppError::Unauthorized(
                    "token is not a valid, unused password-set token for this user",
                ));
            }
        }
        (None, None) => {
            return Err(AppError::Unauthorized(
                "sign in first, or send a password-set token as \"token\"",
            ));
        }
        (None, Some(signed_in)) => {
            signed_in.must_be(id)?;
            validate_password(&body.password)?;
            let account = users::credentials_by_id(&state.cluster, id)
                .await?
                .ok_or(AppError::NotFound("user"))?;
            if let Some(stored) = account.password_hash.as_deref() {
                let current = body.current_password.as_ref().ok_or_else(|| {
                    AppError::invalid("current_password", "is required to change a password")
                })?;
                // The owner's own session is the client: failures elsewhere do not block this.
                let client = ClientKey::User(id);
                let attempt = match state.sign_in.begin(&account.email, &client).await? {
                    Ok(attempt) => attempt,
                    Err(retry_after_seconds) => {
                        return Err(AppError::TooManyAttempts {
                            retry_after_seconds,
                        });
                    }
                };
                if !state.passwords.verify(current, Some(stored)).await? {
                    return Err(AppError::Forbidden("current_password is incorrect"));
                }
                state.sign_in.succeeded(attempt).await;
            }
            rotate = Some((signed_in.session_id, signed_in.signed_in_at));
        }
    }
    let hash = state.passwords.hash(&body.password).await?;
    // Every session of the user ends first: should the update then fail, the old password
    // still works and nothing opened with it survives.
    let generation = state.sessions.end_all(id).await?;
    if !users::set_password(&state.cluster, id, &hash).await? {
        return Err(AppError::NotFound("user"));
    }
    let mut response = (
        StatusCode::NO_CONTENT,
        [(header::CACHE_CONTROL, "private, no-store")],
    )
        .into_response();
    // The caller who changed it by session keeps working, under a new session id.
    // It keeps the old session's sign-in time: a new id does not extend its absolute lifetime.
    if let Some((old, signed_in_at)) = rotate {
        let data = crate::sessions::new_data(id, generation, signed_in_at);
        let new = state.sessions.create(&data, Some(&old)).await?;
        if let Some(cookie) =
            super::sessions::session_cookie(&state, &new, state.sessions.expires_in(&data))
        {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
    }
    Ok(response)
}

fn parse_ids(text: &str) -> Result<Vec<i64>, AppError> {
    let ids = text
        .split(',')
        .map(|part| parse_id("ids", part.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if ids.len() > MAX_BATCH {
        return Err(AppError::invalid(
            "ids",
            format!("at most {MAX_BATCH} ids per request, got {}", ids.len()),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    Ok(ids.into_iter().filter(|id| seen.insert(*id)).collect())
}

fn parse_number(
    field: &str,
    text: Option<&str>,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, AppError> {
    match text {
        None => Ok(default),
        Some(text) => match text.parse::<i64>() {
            Ok(value) if (min..=max).contains(&value) => Ok(value),
            _ => Err(AppError::invalid(
                field,
                format!("must be an integer of at least {min}, got {text:?}"),
            )),
        },
    }
}

fn window_seconds(state: &AppState) -> u64 {
    state
        .config
        .database
        .read_your_writes_window_ms
        .div_ceil(1000)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_need_a_local_part_and_a_dotted_domain() {
        assert!(validate_email("a@example.org").is_ok());
        for bad in [
            "",
            "a",
            "@example.org",
            "a@example",
            "a@.org",
            "a b@example.org",
        ] {
            assert!(validate_email(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn batch_ids_keep_order_drop_repeats_and_are_capped() {
        assert_eq!(parse_ids("3,1,3").ok(), Some(vec![3, 1]));
        assert!(parse_ids("1,x").is_err());
        let many = (1..=101)
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(parse_ids(&many).is_err());
    }
}
