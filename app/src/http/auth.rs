//! Who is asking: the signed-in user of the request's session cookie, and the owner checks that
//! handlers acting on one user's data make with it.

use axum::{extract::FromRequestParts, http::request::Parts};
use chrono::{DateTime, Utc};

use super::{AppState, error::AppError, extract::cookie};
use crate::sessions::{generation_of, is_well_formed, signed_in_at, user_of};

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

/// The session id of the request's cookie, if it has the shape of one (junk never reaches
/// Redis).
pub fn session_id(state: &AppState, parts: &Parts) -> Option<String> {
    cookie(&parts.headers, &state.config.sessions.cookie_name).filter(|id| is_well_formed(id))
}

/// The signed-in user of `parts`, if its session is live (used recently enough, and within its
/// absolute lifetime) and was opened under the user's current generation (no password change
/// since). A Redis failure is an error, not "no
/// session": a request must not act anonymously because the store was briefly unreachable.
pub async fn signed_in(state: &AppState, parts: &Parts) -> Result<Option<SignedIn>, AppError> {
    let Some(session_id) = session_id(state, parts) else {
        return Ok(None);
    };
    let Some(data) = state.sessions.load(&session_id).await? else {
        return Ok(None);
    };
    let (Some(user_id), Some(signed_in_at)) = (user_of(&data), signed_in_at(&data)) else {
        return Ok(None);
    };
    if state.sessions.generation(user_id).await? != generation_of(&data) {
        return Ok(None);
    }
    Ok(Some(SignedIn {
        user_id,
        session_id,
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
