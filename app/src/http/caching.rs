//! HTTP caching for CDNs and browsers: `Cache-Control`, `ETag` / `If-None-Match` -> 304, and
//! `Vary` naming every request header the response depends on: `Accept-Encoding` (responses are
//! compressed when the client asks), and `X-Consistency-Token` and `Cookie` (the `ryw` cookie),
//! which carry the caller's recent writes and turn a public response into a private one.
//!
//! Only public representations come through here. After an edit a shared cache may serve the
//! previous public representation for up to its `max-age` (`cdn.maxAgeSeconds`); the ETag changes
//! with every edit, so a revalidating cache gets the new one.

use axum::{
    body::Bytes,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

/// Who may store a response.
#[derive(Clone, Copy, Debug)]
pub enum Audience {
    /// Shared caches (CDN) may keep it for `max_age` seconds.
    Public {
        /// Seconds.
        max_age: u32,
    },
    /// Only the caller's own cache, and only after revalidation: the caller just wrote, and a
    /// shared copy could be older than what it wrote.
    Private,
}

/// A JSON body with caching headers, or 304 if the client already has it.
pub fn json(
    request_headers: &HeaderMap,
    status: StatusCode,
    body: Bytes,
    etag: &str,
    audience: Audience,
) -> Response {
    let cache_control = match audience {
        Audience::Public { max_age } => format!("public, max-age={max_age}"),
        Audience::Private => "private, no-cache".to_string(),
    };
    let etag_value =
        HeaderValue::from_str(etag).unwrap_or_else(|_| HeaderValue::from_static("\"\""));
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, etag_value);
    if let Ok(value) = HeaderValue::from_str(&cache_control) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    headers.insert(
        header::VARY,
        HeaderValue::from_static("accept-encoding, cookie, x-consistency-token"),
    );
    if matches(request_headers, etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (status, headers, body).into_response()
}

/// The weak ETag of a body.
pub fn etag_of(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("W/\"{}\"", hex::encode(&digest[..16]))
}

/// Weak comparison (RFC 9110 8.8.3.2), as `If-None-Match` requires.
fn matches(request_headers: &HeaderMap, etag: &str) -> bool {
    let ours = etag.trim_start_matches("W/");
    request_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists_and_star() {
        let etag = "W/\"abc\"";
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static(value));
            headers
        };
        assert!(matches(&with("\"abc\""), etag));
        assert!(matches(&with("\"x\", W/\"abc\""), etag));
        assert!(matches(&with("*"), etag));
        assert!(!matches(&with("\"abd\""), etag));
        assert!(!matches(&HeaderMap::new(), etag));
    }
}
