//! The `sessions` section: server-side sessions in Redis, and their defaults.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::common::enabled;

/// Server-side sessions.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxLifetimeSeconds >= self.ttlSeconds").message("sessions.maxLifetimeSeconds must be at least sessions.ttlSeconds: a session cannot end for good before its idle timeout"))]
pub struct SessionSpec {
    /// Session lifetime in seconds, renewed on use.
    #[serde(default = "session_ttl")]
    #[schemars(range(min = 60, max = 2592000))]
    pub ttl_seconds: i32,
    /// Most seconds a session lives after its sign-in, however active it is; then the user signs
    /// in again. A stolen session cookie stops working after this long at the latest.
    #[serde(default = "session_max_lifetime")]
    #[schemars(range(min = 60, max = 31536000))]
    pub max_lifetime_seconds: i32,
    /// Mark the session cookie `Secure` (send over HTTPS only). Turn off only for plain-HTTP
    /// development.
    #[serde(default = "enabled")]
    pub cookie_secure: bool,
}

impl Default for SessionSpec {
    fn default() -> Self {
        SessionSpec {
            ttl_seconds: session_ttl(),
            max_lifetime_seconds: session_max_lifetime(),
            cookie_secure: true,
        }
    }
}

fn session_ttl() -> i32 {
    3600
}
fn session_max_lifetime() -> i32 {
    scaled_contract::DEFAULT_SESSION_MAX_LIFETIME_SECONDS as i32
}
