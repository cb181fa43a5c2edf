//! Per-client request limits in the HTTP layer: who the client of a request is, and how the
//! limiter's decision becomes a response.
//!
//! The client is the signed-in user when the request has a live session, else the client address
//! (see [`super::client`]); nothing else the client sends (`X-Client-ID`, an untrusted
//! `X-Forwarded-For`) changes it. `/api/data` is limited by the configured `rateLimit`; sign-in,
//! sign-up and orders by limits of their own ([`crate::config::RequestLimits`]). On every route an
//! allowed request's response carries `X-RateLimit-*`, a refused one is 429 with `Retry-After`,
//! and without Redis `rateLimit.failureMode` decides (local, the default: each pod limits each
//! client itself, with the same headers; fail open: let it through; fail closed: 503).

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderValue, request::Parts},
    response::Response,
};

use super::{AppState, auth, client::client_address, error::AppError};
use crate::ratelimit::{ClientKey, Decision, LimitedRoute};

/// Who a request is counted against: the signed-in user, else the client address. A session
/// that cannot be looked up (Redis down) counts as none: the address is counted then (and if
/// Redis is down the limiter cannot count either, so its failure mode decides).
pub(super) async fn client_key(state: &AppState, peer: IpAddr, parts: &Parts) -> ClientKey {
    match auth::signed_in(state, parts).await {
        Ok(Some(user)) => ClientKey::User(user.user_id),
        Ok(None) | Err(_) => {
            let hops = state.limiter.settings().trusted_proxy_hops;
            ClientKey::address(client_address(peer, &parts.headers, hops))
        }
    }
}

/// The request's client (see [`client_key`]), as an extractor.
pub(super) struct Client(pub ClientKey);

impl FromRequestParts<AppState> for Client {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Always there: the server is started with connect info; a router served without it is
        // a wiring bug, not a client's.
        let ConnectInfo(peer) = ConnectInfo::<SocketAddr>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| AppError::Internal(Box::new(rejection)))?;
        Ok(Client(client_key(state, peer.ip(), parts).await))
    }
}

/// What an allowed request's response tells the client about its window.
#[derive(Clone, Copy, Debug)]
pub(super) struct Allowance(Option<(u32, u32, u64)>);

impl Allowance {
    /// Adds `X-RateLimit-Limit`, `-Remaining` and `-Reset` (nothing when nobody counted: Redis
    /// could not, and the failure mode is not `Local`).
    pub(super) fn stamp(self, response: &mut Response) {
        let Some((limit, remaining, reset_seconds)) = self.0 else {
            return;
        };
        let headers = response.headers_mut();
        headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(reset_seconds));
    }
}

/// The limiter's decision as the handler acts on it: go on (with what to tell the client), 429,
/// or 503 when Redis could not decide and the limiter fails closed.
pub(super) fn enforce(decision: Decision) -> Result<Allowance, AppError> {
    match decision {
        Decision::Allowed {
            limit,
            remaining,
            reset_seconds,
        } => Ok(Allowance(Some((limit, remaining, reset_seconds)))),
        Decision::Rejected {
            limit,
            retry_after_seconds,
        } => Err(AppError::RateLimited {
            limit,
            retry_after_seconds,
        }),
        Decision::Degraded { allowed: true } => Ok(Allowance(None)),
        Decision::Degraded { allowed: false } => Err(AppError::Unavailable {
            what: "rate limiter",
            retry_after_seconds: 1,
        }),
    }
}

/// Counts one request of `client` to `route`: go on, or the error to answer with.
pub(super) async fn check(
    state: &AppState,
    route: LimitedRoute,
    client: &ClientKey,
) -> Result<Allowance, AppError> {
    enforce(state.limiter.check_route(route, client).await)
}
