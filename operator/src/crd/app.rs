//! The `app` section: the stateless application Deployment, and its defaults.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::EnvVar;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::common::{ReplicaRange, ResourceAmounts, ResourceSpec};

/// The stateless application Deployment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppSpec {
    /// Container image of the app. The same image runs the workers (`worker` mode) and the
    /// schema migrations (`migrate` mode). When omitted, the operator's default app image: the
    /// `scaled-app` image of the operator's own release, from the registry its Helm chart names
    /// (`image.registry`). No public images exist yet: build and push them first (`make push`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Port the app serves HTTP on; the Service exposes it as port 80.
    #[serde(default = "app_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: u16,

    /// Port the app serves Prometheus metrics on (`/metrics`), kept apart from user traffic.
    #[serde(default = "metrics_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub metrics_port: u16,

    /// Replica bounds. With autoscaling enabled the HPA moves between them; otherwise the
    /// Deployment runs `min` replicas.
    #[serde(default = "app_replicas")]
    pub replicas: ReplicaRange,

    /// CPU and memory for each app container. Requests are required because the CPU target of
    /// the HPA is a percentage of the CPU request.
    #[serde(default = "app_resources")]
    pub resources: ResourceSpec,

    /// Extra environment variables for app and worker containers (same format as a Pod's `env`).
    /// Names starting with `SCALED_` are reserved for the operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(e, !e.name.startsWith('SCALED_'))").message("env names starting with SCALED_ are reserved for the operator; rename the variable"))]
    pub env: Vec<EnvVar>,

    /// Extra labels for app and worker pods (the operator's own `app.kubernetes.io/*` labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,

    /// Extra annotations for app and worker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
}

impl Default for AppSpec {
    fn default() -> Self {
        AppSpec {
            image: None,
            port: app_port(),
            metrics_port: metrics_port(),
            replicas: app_replicas(),
            resources: app_resources(),
            env: Vec::new(),
            pod_labels: BTreeMap::new(),
            pod_annotations: BTreeMap::new(),
        }
    }
}

fn app_port() -> u16 {
    8080
}
fn metrics_port() -> u16 {
    9090
}
fn app_replicas() -> ReplicaRange {
    ReplicaRange { min: 3, max: 50 }
}
fn app_resources() -> ResourceSpec {
    ResourceSpec {
        requests: ResourceAmounts {
            cpu: "250m".into(),
            memory: "256Mi".into(),
        },
        limits: Some(ResourceAmounts {
            cpu: "1".into(),
            memory: "512Mi".into(),
        }),
    }
}
