//! Who is asking, and may they read this? Delegated to the API server, as an aggregated API
//! server does:
//!
//! - **Front proxy** (the aggregator, which has already authenticated the real caller): a TLS
//!   client certificate signed by the request-header CA (`requestheader-client-ca-file` of the
//!   `kube-system/extension-apiserver-authentication` ConfigMap), whose common name is one of
//!   `requestheader-allowed-names` (any, when that list is empty); the user, groups and extras
//!   are then taken from the headers that ConfigMap names (`X-Remote-User`, `X-Remote-Group`,
//!   `X-Remote-Extra-*`). Those headers are ignored on every other connection.
//! - **Bearer token** (a direct client): a TokenReview.
//! - Anything else: 401.
//!
//! Authorization is a SubjectAccessReview with the request's attributes, computed as the API
//! server computes them for a resource path (`get` of `pods/<metric>` named `*` in the
//! namespace; `list` of an external metric). Discovery paths only need an authenticated caller
//! (every authenticated user may discover APIs, `system:discovery`). Both reviews are cached for
//! [`REVIEW_TTL`], allowed and denied alike, keyed by a hash of the token or the whole review.
//!
//! Unknown tokens cannot crowd known callers out: valid and refused tokens live in separate
//! caches, a full cache evicts its least recently used answer (never all of them), and tokens
//! reviewed for the first time are bounded to [`NEW_TOKEN_REVIEWS`] per second (429 beyond it),
//! so a flood of bogus tokens costs the API server a bounded number of TokenReviews and the
//! HPA controller's cached identity survives it.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use tracing::warn;

use super::error::ApiError;

/// How long a review's answer is reused.
pub const REVIEW_TTL: Duration = Duration::from_secs(10);
/// Most answers kept per cache; a full cache drops expired answers, then the least recently
/// used one.
const CACHE_CAPACITY: usize = 4096;
/// TokenReviews per second for tokens not in either cache (bursts up to twice that).
pub const NEW_TOKEN_REVIEWS: u32 = 20;

/// Namespace and name of the ConfigMap holding the front proxy's settings.
pub const AUTHENTICATION_CONFIG_MAP: (&str, &str) =
    ("kube-system", "extension-apiserver-authentication");

/// How to recognise the front proxy and read the caller it vouches for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestHeaderConfig {
    /// CA certificates that sign the front proxy's client certificate; none: no front proxy
    /// is trusted (bearer tokens only).
    pub client_ca: Vec<CertificateDer<'static>>,
    /// Common names the front proxy's certificate may have; empty: any signed by the CA.
    pub allowed_names: Vec<String>,
    /// Headers carrying the user name, first non-empty wins.
    pub username_headers: Vec<String>,
    /// Headers carrying groups, every value counts.
    pub group_headers: Vec<String>,
    /// Prefixes of headers carrying extra attributes.
    pub extra_headers_prefixes: Vec<String>,
}

/// Why the ConfigMap could not be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "the {key} entry of ConfigMap kube-system/extension-apiserver-authentication is not usable: {problem}"
)]
pub struct RequestHeaderConfigError {
    key: &'static str,
    problem: String,
}

impl RequestHeaderConfig {
    /// Reads the `requestheader-*` entries of the `extension-apiserver-authentication`
    /// ConfigMap. Missing header lists take the API server's defaults.
    pub fn from_config_map(
        data: &BTreeMap<String, String>,
    ) -> Result<RequestHeaderConfig, RequestHeaderConfigError> {
        let list =
            |key: &'static str, default: &str| -> Result<Vec<String>, RequestHeaderConfigError> {
                let values: Vec<String> = match data.get(key) {
                    Some(text) if !text.trim().is_empty() => {
                        serde_json::from_str(text).map_err(|error| RequestHeaderConfigError {
                            key,
                            problem: error.to_string(),
                        })?
                    }
                    _ => Vec::new(),
                };
                Ok(if values.is_empty() && !default.is_empty() {
                    vec![default.to_string()]
                } else {
                    values
                })
            };
        let client_ca = match data.get("requestheader-client-ca-file") {
            Some(pem) => CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| RequestHeaderConfigError {
                    key: "requestheader-client-ca-file",
                    problem: error.to_string(),
                })?,
            None => Vec::new(),
        };
        Ok(RequestHeaderConfig {
            client_ca,
            allowed_names: list("requestheader-allowed-names", "")?,
            username_headers: list("requestheader-username-headers", "X-Remote-User")?,
            group_headers: list("requestheader-group-headers", "X-Remote-Group")?,
            extra_headers_prefixes: list("requestheader-extra-headers-prefix", "X-Remote-Extra-")?,
        })
    }
}

/// What the TLS layer learnt about a connection, attached to each of its requests.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Common name of the client certificate, present only when one was presented and
    /// verified against [`RequestHeaderConfig::client_ca`].
    pub client_certificate_name: Option<String>,
    /// The front-proxy settings the certificate was verified with.
    pub request_header: Arc<RequestHeaderConfig>,
}

/// The caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// User name.
    pub user: String,
    /// User UID, when the token review gives one.
    pub uid: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a request touches, for authorization.
#[derive(Clone, Debug, PartialEq)]
pub enum Access {
    /// Discovery (or any path that is not a resource): any authenticated caller.
    Discovery,
    /// A resource path: a SubjectAccessReview with these attributes.
    Resource(Box<ResourceAttributes>),
}

/// The attributes of `path` for a GET, as the API server's request-info parser computes them
/// (`/apis/<group>/<version>[/namespaces/<ns>]/<resource>[/<name>[/<subresource>]]`).
pub fn access(path: &str) -> Access {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ["apis", group, version, rest @ ..] = segments.as_slice() else {
        return Access::Discovery;
    };
    let (namespace, parts) = match rest {
        ["namespaces", namespace, parts @ ..] if !parts.is_empty() => (Some(*namespace), parts),
        parts => (None, parts),
    };
    let (resource, name, subresource) = match parts {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, subresource] => (*resource, Some(*name), Some(*subresource)),
        _ => return Access::Discovery,
    };
    Access::Resource(Box::new(ResourceAttributes {
        namespace: namespace.map(String::from),
        verb: Some(if name.is_some() { "get" } else { "list" }.into()),
        group: Some(group.to_string()),
        version: Some(version.to_string()),
        resource: Some(resource.to_string()),
        subresource: subresource.map(String::from),
        name: name.map(String::from),
        ..ResourceAttributes::default()
    }))
}

/// Authenticates and authorizes requests through the API server, with caches.
pub struct Authenticator {
    client: kube::Client,
    tokens: TtlCache<[u8; 32], Identity>,
    refused_tokens: TtlCache<[u8; 32], ()>,
    new_token_reviews: Mutex<TokenBucket>,
    decisions: TtlCache<String, bool>,
}

impl Authenticator {
    /// Reviews go to the API server `client` talks to.
    pub fn new(client: kube::Client) -> Self {
        Authenticator {
            client,
            tokens: TtlCache::default(),
            refused_tokens: TtlCache::default(),
            new_token_reviews: Mutex::new(TokenBucket::new(NEW_TOKEN_REVIEWS)),
            decisions: TtlCache::default(),
        }
    }

    /// The caller of a request on a connection from `peer`.
    pub async fn authenticate(
        &self,
        peer: Option<&Peer>,
        headers: &HeaderMap,
    ) -> Result<Identity, ApiError> {
        if let Some(peer) = peer
            && let Some(name) = &peer.client_certificate_name
        {
            return front_proxy_identity(name, &peer.request_header, headers);
        }
        let Some(token) = bearer_token(headers) else {
            return Err(ApiError::Unauthorized(
                "no credentials: present the front proxy's client certificate or a bearer token"
                    .into(),
            ));
        };
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let refused = || ApiError::Unauthorized("the bearer token is not valid".into());
        if let Some(known) = self.tokens.get(&hash) {
            return Ok(known);
        }
        if self.refused_tokens.get(&hash).is_some() {
            return Err(refused());
        }
        let allowed = self
            .new_token_reviews
            .lock()
            .expect("the bucket lock is never poisoned")
            .take();
        if !allowed {
            return Err(ApiError::TooManyRequests(
                "too many new bearer tokens to review; try again in a second".into(),
            ));
        }
        match self.review_token(token).await? {
            Some(identity) => {
                self.tokens.insert(hash, identity.clone());
                Ok(identity)
            }
            None => {
                self.refused_tokens.insert(hash, ());
                Err(refused())
            }
        }
    }

    async fn review_token(&self, token: &str) -> Result<Option<Identity>, ApiError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|error| {
                warn!(%error, "failed to create a TokenReview");
                ApiError::Internal("failed to authenticate the request".into())
            })?;
        let Some(status) = reviewed.status.filter(|s| s.authenticated == Some(true)) else {
            return Ok(None);
        };
        let Some(user) = status
            .user
            .filter(|u| u.username.as_deref().is_some_and(|n| !n.is_empty()))
        else {
            return Ok(None);
        };
        Ok(Some(Identity {
            user: user.username.unwrap_or_default(),
            uid: user.uid,
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        }))
    }

    /// Whether `identity` may make a request with `access`; 403 when not.
    pub async fn authorize(&self, identity: &Identity, access: &Access) -> Result<(), ApiError> {
        let Access::Resource(attributes) = access else {
            return Ok(());
        };
        let spec = SubjectAccessReviewSpec {
            user: Some(identity.user.clone()),
            uid: identity.uid.clone(),
            groups: Some(identity.groups.clone()),
            extra: (!identity.extra.is_empty()).then(|| identity.extra.clone()),
            resource_attributes: Some(attributes.as_ref().clone()),
            non_resource_attributes: None,
        };
        let key = serde_json::to_string(&spec).expect("a review spec serialises");
        let allowed = match self.decisions.get(&key) {
            Some(allowed) => allowed,
            None => {
                let review = SubjectAccessReview {
                    spec,
                    ..SubjectAccessReview::default()
                };
                let reviewed = Api::<SubjectAccessReview>::all(self.client.clone())
                    .create(&PostParams::default(), &review)
                    .await
                    .map_err(|error| {
                        warn!(%error, "failed to create a SubjectAccessReview");
                        ApiError::Internal("failed to authorize the request".into())
                    })?;
                let allowed = reviewed
                    .status
                    .is_some_and(|s| s.allowed && s.denied != Some(true));
                self.decisions.insert(key, allowed);
                allowed
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(ApiError::Forbidden(forbidden_message(identity, attributes)))
        }
    }
}

/// The API server's wording: `<resource>.<group> "<name>" is forbidden: User "u" cannot get
/// resource "pods/x" in API group "g" in the namespace "n"`.
fn forbidden_message(identity: &Identity, attributes: &ResourceAttributes) -> String {
    let group = attributes.group.as_deref().unwrap_or_default();
    let resource = attributes.resource.as_deref().unwrap_or_default();
    let full_resource = match &attributes.subresource {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_string(),
    };
    let subject = match &attributes.name {
        Some(name) => format!("{resource}.{group} {name:?}"),
        None => format!("{resource}.{group}"),
    };
    let place = match &attributes.namespace {
        Some(namespace) => format!(" in the namespace {namespace:?}"),
        None => " at the cluster scope".into(),
    };
    format!(
        "{subject} is forbidden: User {:?} cannot {} resource {full_resource:?} in API group {group:?}{place}",
        identity.user,
        attributes.verb.as_deref().unwrap_or("get"),
    )
}

fn front_proxy_identity(
    certificate_name: &str,
    config: &RequestHeaderConfig,
    headers: &HeaderMap,
) -> Result<Identity, ApiError> {
    if !config.allowed_names.is_empty()
        && !config.allowed_names.iter().any(|n| n == certificate_name)
    {
        return Err(ApiError::Unauthorized(format!(
            "the client certificate {certificate_name:?} is not an allowed front proxy"
        )));
    }
    let user = config
        .username_headers
        .iter()
        .flat_map(|header| headers.get_all(header.as_str()))
        .filter_map(|value| value.to_str().ok())
        .find(|value| !value.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("the front proxy sent no user".into()))?
        .to_string();
    let groups = config
        .group_headers
        .iter()
        .flat_map(|header| headers.get_all(header.as_str()))
        .filter_map(|value| value.to_str().ok())
        .map(String::from)
        .collect();
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        let name = name.as_str();
        let Some(key) = config.extra_headers_prefixes.iter().find_map(|prefix| {
            let prefix = prefix.to_ascii_lowercase();
            name.strip_prefix(prefix.as_str())
        }) else {
            continue;
        };
        if let Ok(value) = value.to_str() {
            extra
                .entry(unescape(key))
                .or_default()
                .push(value.to_string());
        }
    }
    Ok(Identity {
        user,
        uid: None,
        groups,
        extra,
    })
}

/// Extra keys are percent-encoded by the proxy (and lower-cased by HTTP).
fn unescape(key: &str) -> String {
    fn hex(byte: u8) -> Option<u8> {
        char::from(byte).to_digit(16).map(|digit| digit as u8)
    }
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && index + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[index + 1]), hex(bytes[index + 2]))
        {
            out.push(high << 4 | low);
            index += 3;
            continue;
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).to_lowercase()
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A bounded map whose entries expire after [`REVIEW_TTL`]; when full it drops what expired,
/// then the least recently used entry.
struct TtlCache<K, V> {
    capacity: usize,
    entries: Mutex<HashMap<K, Entry<V>>>,
}

struct Entry<V> {
    stored: Instant,
    used: Instant,
    value: V,
}

impl<K, V> Default for TtlCache<K, V> {
    fn default() -> Self {
        TtlCache::with_capacity(CACHE_CAPACITY)
    }
}

impl<K, V> TtlCache<K, V> {
    fn with_capacity(capacity: usize) -> Self {
        TtlCache {
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    fn get(&self, key: &K) -> Option<V> {
        let mut entries = self
            .entries
            .lock()
            .expect("the cache lock is never poisoned");
        let entry = entries
            .get_mut(key)
            .filter(|entry| entry.stored.elapsed() < REVIEW_TTL)?;
        entry.used = Instant::now();
        Some(entry.value.clone())
    }

    fn insert(&self, key: K, value: V) {
        let mut entries = self
            .entries
            .lock()
            .expect("the cache lock is never poisoned");
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, entry| entry.stored.elapsed() < REVIEW_TTL);
            if entries.len() >= self.capacity {
                let least_recent = entries
                    .iter()
                    .min_by_key(|(_, entry)| entry.used)
                    .map(|(key, _)| key.clone());
                if let Some(least_recent) = least_recent {
                    entries.remove(&least_recent);
                }
            }
        }
        let now = Instant::now();
        entries.insert(
            key,
            Entry {
                stored: now,
                used: now,
                value,
            },
        );
    }
}

/// A token bucket: `rate` takes per second, up to `2 * rate` at once.
struct TokenBucket {
    rate: f64,
    available: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn new(rate: u32) -> Self {
        TokenBucket {
            rate: f64::from(rate),
            available: 2.0 * f64::from(rate),
            refilled: Instant::now(),
        }
    }

    /// Takes one if there is one.
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let burst = 2.0 * self.rate;
        self.available = (self.available
            + now.duration_since(self.refilled).as_secs_f64() * self.rate)
            .min(burst);
        self.refilled = now;
        if self.available >= 1.0 {
            self.available -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_cache_evicts_the_least_recently_used_answer_not_everything() {
        let cache = TtlCache::with_capacity(3);
        cache.insert("hpa", 1);
        cache.insert("a", 2);
        cache.insert("b", 3);
        // The HPA controller asks again: now the others are older uses.
        assert_eq!(cache.get(&"hpa"), Some(1));
        for (index, bogus) in ["c", "d", "e", "f"].into_iter().enumerate() {
            cache.insert(bogus, 10 + index);
            assert_eq!(cache.get(&"hpa"), Some(1), "after {bogus}");
        }
        assert_eq!(cache.get(&"a"), None, "the least recently used went");
        let entries = cache.entries.lock().expect("lock").len();
        assert_eq!(entries, 3, "bounded");
    }

    #[test]
    fn the_new_token_budget_allows_a_burst_then_refills_at_its_rate() {
        let mut bucket = TokenBucket::new(20);
        let taken = (0..100).filter(|_| bucket.take()).count();
        assert_eq!(taken, 40, "a burst of twice the rate");
        bucket.refilled -= Duration::from_millis(500);
        let refilled = (0..100).filter(|_| bucket.take()).count();
        assert!(
            (9..=11).contains(&refilled),
            "{refilled} after half a second"
        );
    }
}
