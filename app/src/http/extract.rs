//! Extractors and small helpers shared by the feature routers: JSON bodies whose rejections are
//! [`AppError`]s, read-your-writes tokens, cookies, and path ids.

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{HeaderMap, HeaderValue, header, request::Parts},
    response::Response,
};
use serde::de::DeserializeOwned;

use super::{AppState, error::AppError};
use crate::db::WriteToken;
use scaled_contract::Secret;

/// Request/response header carrying read-your-writes tokens (`<shard>.<lsn>.<mac>` joined by
/// `-`).
pub const CONSISTENCY_HEADER: &str = "x-consistency-token";
/// Cookie carrying the same tokens for browsers.
pub const CONSISTENCY_COOKIE: &str = "ryw";
/// Bytes of the HMAC kept in each token part: forging one takes 2^64 guesses.
const TOKEN_MAC_BYTES: usize = 8;

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

/// The caller's recent writes, from the header or the cookie. Each token part is signed with the
/// app's key, so a client can only hand back positions the app gave it: a made-up, huge LSN
/// would otherwise send every read of that client to the primary and past the caches. Parts
/// that are malformed or whose signature does not match are ignored: they can only make reads
/// less fresh, never wrong for anyone else.
#[derive(Clone, Debug)]
pub struct Consistency {
    /// The positions, at most one per shard.
    pub tokens: Vec<WriteToken>,
    key: Secret,
}

impl FromRequestParts<AppState> for Consistency {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(CONSISTENCY_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let text = header.or_else(|| cookie(&parts.headers, CONSISTENCY_COOKIE));
        let key = state.consistency_key.clone();
        Ok(Consistency {
            tokens: text
                .map(|text| parse_tokens(&key, &text))
                .unwrap_or_default(),
            key,
        })
    }
}

impl Consistency {
    /// The caller's last write position on `shard`, if it wrote there.
    pub fn read_after(&self, shard: u32) -> Option<u64> {
        Some(crate::db::users::min_lsn(&self.tokens, shard)).filter(|lsn| *lsn > 0)
    }

    /// Adds a new write, keeping the highest position per shard, and sets header and cookie on
    /// `response` (the cookie lives as long as the read-your-writes window).
    pub fn record(mut self, token: WriteToken, window_seconds: u64, response: &mut Response) {
        self.tokens
            .retain(|existing| existing.shard != token.shard || existing.lsn > token.lsn);
        if !self
            .tokens
            .iter()
            .any(|existing| existing.shard == token.shard)
        {
            self.tokens.push(token);
        }
        let text = self
            .tokens
            .iter()
            .map(|token| signed_part(&self.key, token))
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

/// The signature of one position, as hex.
fn token_mac(key: &Secret, shard: u32, lsn: u64) -> String {
    let mac = key.mac(format!("ryw:{shard}.{lsn}").as_bytes());
    hex::encode(&mac[..TOKEN_MAC_BYTES])
}

/// `<shard>.<lsn>.<mac>`.
pub fn signed_part(key: &Secret, token: &WriteToken) -> String {
    format!(
        "{}.{}.{}",
        token.shard,
        token.lsn,
        token_mac(key, token.shard, token.lsn)
    )
}

fn parse_tokens(key: &Secret, text: &str) -> Vec<WriteToken> {
    text.split('-')
        .filter_map(|part| {
            let mut fields = part.splitn(3, '.');
            let shard = fields.next()?.parse().ok()?;
            let lsn = fields.next()?.parse().ok()?;
            let mac = fields.next()?;
            // Constant-time comparison is not needed: the MAC is not secret once issued, and a
            // mismatch only drops the part.
            (mac == token_mac(key, shard, lsn)).then_some(WriteToken { shard, lsn })
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
    fn signed_tokens_round_trip_and_forged_or_junk_parts_are_ignored() {
        let key = Secret::new("the app's key");
        let tokens = [
            WriteToken { shard: 0, lsn: 100 },
            WriteToken { shard: 1, lsn: 7 },
        ];
        let text = tokens
            .iter()
            .map(|token| signed_part(&key, token))
            .collect::<Vec<_>>()
            .join("-");
        assert_eq!(parse_tokens(&key, &text), tokens.to_vec());
        // Unsigned (the old format), a huge LSN with a made-up or copied signature, another
        // key's signature: all dropped.
        let genuine = signed_part(&key, &tokens[0]);
        let copied_mac = genuine.rsplit('.').next().expect("a mac");
        for forged in [
            "0.100".to_string(),
            format!("0.{}.0123456789abcdef", u64::MAX),
            format!("0.{}.{copied_mac}", u64::MAX),
            signed_part(&Secret::new("another key"), &tokens[0]),
            "garbage".to_string(),
        ] {
            assert!(parse_tokens(&key, &forged).is_empty(), "{forged}");
        }
        // A forged part does not spoil a genuine one beside it.
        let mixed = format!("{genuine}-1.{}.0123456789abcdef", u64::MAX);
        assert_eq!(parse_tokens(&key, &mixed), vec![tokens[0]]);
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
