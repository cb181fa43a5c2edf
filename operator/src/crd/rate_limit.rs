//! The `rateLimit` section: per-client rate limiting, and its defaults.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Rate limiting per client: per signed-in user, else per client address.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Requests allowed per client and window.
    #[serde(default = "rate_limit")]
    #[schemars(range(min = 1, max = 1000000))]
    pub requests: i32,
    /// Window length in seconds (sliding).
    #[serde(default = "rate_window")]
    #[schemars(range(min = 1, max = 86400))]
    pub window_seconds: i32,
    /// What to do when Redis is unreachable: `FailOpen` lets requests through, `FailClosed`
    /// answers 503.
    #[serde(default)]
    pub failure_mode: RateLimitFailureMode,
    /// How many proxies in front of the app (load balancers, CDN) append to `X-Forwarded-For`.
    /// The client address is the entry that many places from the right; with 0 (the default)
    /// the header is ignored and the connection's peer address is the client, so a client can
    /// never choose its own rate-limit identity by sending the header.
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    pub trusted_proxy_hops: i32,
}

impl Default for RateLimitSpec {
    fn default() -> Self {
        RateLimitSpec {
            requests: rate_limit(),
            window_seconds: rate_window(),
            failure_mode: RateLimitFailureMode::default(),
            trusted_proxy_hops: 0,
        }
    }
}

fn rate_limit() -> i32 {
    100
}
fn rate_window() -> i32 {
    60
}

/// Rate limiter behaviour without Redis.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RateLimitFailureMode {
    /// Allow requests.
    #[default]
    FailOpen,
    /// Reject requests with 503.
    FailClosed,
}
