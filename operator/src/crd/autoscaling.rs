//! The `autoscaling` section: the app's HPA, and its defaults.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::common::enabled;

/// How the app's HPA scales. The article's rules map onto autoscaling/v2 like this: "scale up
/// when CPU is above 70%" is a Resource metric with averageUtilization 70; "request rate above
/// 1000/s per instance" is a Pods metric `http_requests_per_second` with averageValue 1000
/// (needs a custom-metrics adapter such as prometheus-adapter); "response time above 500 ms" is
/// a Pods metric `http_request_duration_seconds_p95` with averageValue 500m. "Scale down when
/// CPU is below 30% for 5 minutes, request rate below 300/s for 10 minutes" becomes a
/// scale-down stabilization window: the HPA only scales down to the highest recommendation of
/// the window.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// Whether to create the app HPA. When false the app runs `app.replicas.min` replicas.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Target average CPU utilisation, percent of the CPU request.
    #[serde(default = "cpu_target")]
    #[schemars(range(min = 10, max = 100))]
    pub target_cpu_utilization_percent: i32,
    /// Target requests per second per app pod (Pods metric `http_requests_per_second`).
    /// Set to 0 to scale on CPU only.
    #[serde(default = "rps_target")]
    #[schemars(range(min = 0, max = 1000000))]
    pub target_requests_per_second: i32,
    /// Target p95 response time in milliseconds per pod (Pods metric
    /// `http_request_duration_seconds_p95`). Omit to not scale on latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60000))]
    pub target_response_time_ms: Option<i32>,
    /// How fast to add pods.
    #[serde(default = "scale_up")]
    pub scale_up: ScalingRules,
    /// How fast to remove pods. The default window of 300 s is the article's "CPU below 30% for
    /// 5 minutes"; use 600 for its "request rate below 300/s for 10 minutes".
    #[serde(default = "scale_down")]
    pub scale_down: ScalingRules,
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        AutoscalingSpec {
            enabled: true,
            target_cpu_utilization_percent: cpu_target(),
            target_requests_per_second: rps_target(),
            target_response_time_ms: Some(500),
            scale_up: scale_up(),
            scale_down: scale_down(),
        }
    }
}

fn cpu_target() -> i32 {
    70
}
fn rps_target() -> i32 {
    1000
}

/// One direction of HPA `behavior`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// The HPA acts on the most conservative recommendation of this many past seconds
    /// (`behavior.*.stabilizationWindowSeconds`).
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: i32,
    /// At most this percent of the current pods may be added/removed per minute (a `Percent`
    /// policy with periodSeconds 60).
    #[schemars(range(min = 1, max = 1000))]
    pub max_percent_per_minute: i32,
    /// At most this many pods may be added/removed per minute (a `Pods` policy with periodSeconds
    /// 60). The HPA uses whichever policy allows the bigger change.
    #[schemars(range(min = 1, max = 1000))]
    pub max_pods_per_minute: i32,
}

fn scale_up() -> ScalingRules {
    ScalingRules {
        stabilization_window_seconds: 0,
        max_percent_per_minute: 100,
        max_pods_per_minute: 4,
    }
}
fn scale_down() -> ScalingRules {
    ScalingRules {
        stabilization_window_seconds: 300,
        max_percent_per_minute: 10,
        max_pods_per_minute: 1,
    }
}
