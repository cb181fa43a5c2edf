//! Extractors and small helpers shared by the feature routers: JSON bodies whose rejections are
//! [`AppError`]s, read-your-writes tokens, cookies, and path ids.

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{HeaderMap, HeaderValue, header, request::Parts},
    response::Response,
};
use serde::de::DeserializeOwned;

use super::error::AppError;
use crate::db::WriteToken;

/// Request/response header carrying read-your-writes tokens (`<shard>.<lsn>` joined by `-`).
pub const CONSISTENCY_HEADER: &str = "x-consistency-token";
/// Cookie carrying the same tokens for browsers.
pub const CONSISTENCY_COOKIE: &str = "ryw";

/// `axum::Json`, but rejected with an [`AppError`] (so 400/413/415/422 share the error body).
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(request, state).await?;
        Ok(JsonBody(value))
    }
}

/// The caller's recent writes, from the header or the cookie. Malformed tokens are ignored: they
/// can only make reads less fresh, never wrong for anyone else.
#[derive(Clone, Debug, Default)]
pub struct Consistency(pub Vec<WriteToken>);

impl<S: Send + Sync> FromRequestParts<S> for Consistency {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(CONSISTENCY_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let text = header.or_else(|| cookie(&parts.headers, CONSISTENCY_COOKIE));
        Ok(Consistency(
            text.map(|text| parse_tokens(&text)).unwrap_or_default(),
        ))
    }
}

impl Consistency {
    /// The caller's last write position on `shard`, if it wrote there.
    pub fn read_after(&self, shard: u32) -> Option<u64> {
        Some(crate::db::users::min_lsn(&self.0, shard)).filter(|lsn| *lsn > 0)
    }

    /// Adds a new write, keeping the highest position per shard, and sets header and cookie on
    /// `response` (the cookie lives as long as the read-your-writes window).
    pub fn record(mut self, token: WriteToken, window_seconds: u64, response: &mut Response) {
        self.0
            .retain(|existing| existing.shard != token.shard || existing.lsn > token.lsn);
        if !self.0.iter().any(|existing| existing.shard == token.shard) {
            self.0.push(token);
        }
        let text = self
            .0
            .iter()
            .map(|token| format!("{}.{}", token.shard, token.lsn))
            .collect::<Vec<_>>()
            .join("-");
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&text) {
            headers.insert(CONSISTENCY_HEADER, value);
        }
        let cookie = format!(
            "{CONSISTENCY_COOKIE}={text}; Path=/; Max-Age={window_seconds}; HttpOnly; SameSite=Lax"
        );
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
}

fn parse_tokens(text: &str) -> Vec<WriteToken> {
    text.split('-')
        .filter_map(|part| {
            let (shard, lsn) = part.split_once('.')?;
            Some(WriteToken {
                shard: shard.parse().ok()?,
                lsn: lsn.parse().ok()?,
            })
        })
        .take(64)
        .collect()
}

/// The value of cookie `name`, if sent.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

/// A positive id from a path segment.
pub fn parse_id(field: &str, text: &str) -> Result<i64, AppError> {
    match text.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(AppError::invalid(
            field,
            format!("must be a positive integer, got {text:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_junk_is_ignored() {
        assert_eq!(
            parse_tokens("0.100-1.7"),
            vec![
                WriteToken { shard: 0, lsn: 100 },
                WriteToken { shard: 1, lsn: 7 }
            ]
        );
        assert!(parse_tokens("garbage").is_empty());
    }

    #[test]
    fn a_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sid=abc; b=2"),
        );
        assert_eq!(cookie(&headers, "sid").as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
    }
}
