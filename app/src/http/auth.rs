//! Who is asking: the signed-in user of the request's session cookie, and the owner checks that
//! handlers acting on one user's data make with it.

use axum::{extract::FromRequestParts, http::request::Parts};
use chrono::{DateTime, Utc};

use super::{AppState, error::AppError, extract::cookie};
use crate::sessions::{
    SessionCookie, SessionError, generation_of, is_well_formed, signed_in_at, user_of,
};

/// The signed-in user. As an extractor it answers 401 when the request has no live session;
/// `Option<SignedIn>` makes the session optional.
#[derive(Clone, Debug)]
pub struct SignedIn {
    /// The user the session was opened for.
    pub user_id: i64,
    /// The session id (from the cookie).
    pub session_id: String,
    /// When the session was signed in (its absolute lifetime counts from here).
    pub signed_in_at: DateTime<Utc>,
}

impl SignedIn {
    /// 403 unless the signed-in user is `user_id`.
    pub fn must_be(&self, user_id: i64) -> Result<(), AppError> {
        if self.user_id == user_id {
            Ok(())
        } else {
            Err(AppError::Forbidden(
                "a user's account can only be changed with that user's session",
            ))
        }
    }
}

/// The session the request's cookie names, if the cookie has the shape of one and, when it is a
/// signed token, its signature holds (junk and forgeries never reach Redis).
pub fn session_cookie(state: &AppState, parts: &Parts) -> Option<SessionCookie> {
    cookie(&parts.headers, &state.config.sessions.cookie_name)
        .filter(|value| is_well_formed(value))
        .and_then(|value| state.sessions.identify(&value))
}

/// The signed-in user of `parts`, if its session is live (used recently enough, and within its
/// absolute lifetime) and was opened under the user's current generation (no password change
/// since).
///
/// With Redis away, a signed token within its absolute lifetime signs the request in on its
/// own (counted in `sessions_verified_offline_total`): signed-in users keep working through a
/// Redis outage, and a revocation made before or during it is honoured once Redis answers
/// again ([`crate::sessions`] says what that costs). A cookie of the previous form carries no
/// claims, so for it a Redis failure stays an error, not "no session": a request must not act
/// anonymously because the store was briefly unreachable.
pub async fn signed_in(state: &AppState, parts: &Parts) -> Result<Option<SignedIn>, AppError> {
    let Some(cookie) = session_cookie(state, parts) else {
        return Ok(None);
    };
    // Without Redis a token past its absolute lifetime is refused on its claims; with Redis,
    // `load` refuses it and deletes its record.
    let offline = |cookie: SessionCookie, error: SessionError| match cookie.claims {
        Some(claims) if !state.sessions.within_lifetime(claims.signed_in_at) => Ok(None),
        Some(claims) if matches!(error, SessionError::Unavailable(_)) => {
            state.metrics.sessions_verified_offline.inc();
            Ok(Some(SignedIn {
                user_id: claims.user_id,
                session_id: cookie.id,
                signed_in_at: claims.signed_in_at,
            }))
        }
        _ => Err(AppError::from(error)),
    };
    let data = match state.sessions.load(&cookie).await {
        Ok(Some(data)) => data,
        Ok(None) => return Ok(None),
        Err(error) => return offline(cookie, error),
    };
    let (Some(user_id), Some(signed_in_at)) = (user_of(&data), signed_in_at(&data)) else {
        return Ok(None);
    };
    if cookie
        .claims
        .as_ref()
        .is_some_and(|claims| claims.user_id != user_id)
    {
        // A valid signature over another user's session record cannot happen unless the
        // secret leaked; refuse rather than pick one.
        return Ok(None);
    }
    match state.sessions.generation(user_id).await {
        Ok(generation) if generation == generation_of(&data) => {}
        Ok(_) => return Ok(None),
        Err(error) => return offline(cookie, error),
    }
    Ok(Some(SignedIn {
        user_id,
        session_id: cookie.id,
        signed_in_at,
    }))
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        signed_in(state, parts).await?.ok_or(AppError::Unauthorized(
            "sign in first: this needs the session cookie from POST /api/sessions",
        ))
    }
}

impl axum::extract::OptionalFromRequestParts<AppState> for SignedIn {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        signed_in(state, parts).await
    }
}
