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
    /// What to do when Redis is unreachable: `Local` (the default) has each app pod limit each
    /// client itself with these same limits until Redis answers again, so with N app pods a
    /// client gets at most N times the limit; `FailOpen` lets requests through unlimited;
    /// `FailClosed` answers 503.
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

/// Rate limiter behaviour without Redis. The default is `Local`, so that no app is left
/// without any limit by leaving the field out.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RateLimitFailureMode {
    /// Allow requests, unlimited.
    FailOpen,
    /// Reject requests with 503.
    FailClosed,
    /// Each app pod limits each client itself (at most N times the limit with N pods).
    #[default]
    Local,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_without_a_failure_mode_limits_per_pod_rather_than_failing_open() {
        let spec: RateLimitSpec = serde_json::from_str("{}").expect("every field has a default");
        assert_eq!(spec.failure_mode, RateLimitFailureMode::Local);
        assert_eq!(spec, RateLimitSpec::default());
        let mut app = crate::test_support::validated_example("shop");
        app.spec.rate_limit = spec;
        assert_eq!(
            crate::render::runtime_config(&app).rate_limit.failure_mode,
            scaled_contract::FailureMode::Local,
            "the app is told to limit per pod"
        );
    }

    #[test]
    fn the_installed_crd_defaults_the_failure_mode_to_local_and_lists_every_mode() {
        let crd = serde_json::to_value(crate::crd::custom_resource_definition()).expect("json");
        let rate_limit = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["rateLimit"];
        let mode = &rate_limit["properties"]["failureMode"];
        assert_eq!(mode["default"], "Local", "{mode}");
        assert_eq!(
            mode["enum"],
            serde_json::json!(["FailOpen", "FailClosed", "Local"])
        );
        assert_eq!(
            rate_limit["default"]["failureMode"], "Local",
            "{rate_limit}"
        );
    }
}
