//! The `cdn` section: HTTP caching headers for a CDN, and its default.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// CDN and browser caching of public responses.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CdnSpec {
    /// `Cache-Control: public, max-age` of public GET responses, in seconds. Per-user responses
    /// are always `private, no-store`.
    #[serde(default = "cdn_max_age")]
    #[schemars(range(min = 0, max = 31536000))]
    pub max_age_seconds: i32,
}

impl Default for CdnSpec {
    fn default() -> Self {
        CdnSpec {
            max_age_seconds: cdn_max_age(),
        }
    }
}

fn cdn_max_age() -> i32 {
    3600
}
