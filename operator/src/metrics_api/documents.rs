//! The JSON documents served: discovery (`APIGroupList`, `APIGroup`, `APIResourceList`) and the
//! metric lists (`custom.metrics.k8s.io/v1beta2` `MetricValueList`, `external.metrics.k8s.io/v1beta1`
//! `ExternalMetricValueList`), with values as Kubernetes quantities.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use scaled_contract::metrics::{QUEUE_METRICS, REQUESTS_PER_SECOND, RESPONSE_TIME_P95};
use serde::Serialize;
use serde_json::{Value, json};

/// The custom metrics group.
pub const CUSTOM_GROUP: &str = "custom.metrics.k8s.io";
/// The version of it served.
pub const CUSTOM_VERSION: &str = "v1beta2";
/// The external metrics group.
pub const EXTERNAL_GROUP: &str = "external.metrics.k8s.io";
/// The version of it served.
pub const EXTERNAL_VERSION: &str = "v1beta1";

/// Pods metrics served: per app pod.
pub const POD_METRICS: [&str; 2] = [REQUESTS_PER_SECOND, RESPONSE_TIME_P95];

fn group(name: &str, version: &str) -> Value {
    let version = json!({"groupVersion": format!("{name}/{version}"), "version": version});
    json!({"name": name, "versions": [version.clone()], "preferredVersion": version})
}

/// `GET /apis`.
pub fn group_list() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [group(CUSTOM_GROUP, CUSTOM_VERSION), group(EXTERNAL_GROUP, EXTERNAL_VERSION)],
    })
}

/// `GET /apis/<group>` for one of the two groups.
pub fn api_group(name: &str) -> Option<Value> {
    let version = match name {
        CUSTOM_GROUP => CUSTOM_VERSION,
        EXTERNAL_GROUP => EXTERNAL_VERSION,
        _ => return None,
    };
    let mut document = group(name, version);
    document["kind"] = "APIGroup".into();
    document["apiVersion"] = "v1".into();
    Some(document)
}

/// `GET /apis/custom.metrics.k8s.io/v1beta2`: one resource per Pods metric, `pods/<metric>`.
pub fn custom_resources() -> Value {
    let resources: Vec<Value> = POD_METRICS
        .iter()
        .map(|metric| resource(&format!("pods/{metric}"), "MetricValueList"))
        .collect();
    resource_list(CUSTOM_GROUP, CUSTOM_VERSION, resources)
}

/// `GET /apis/external.metrics.k8s.io/v1beta1`: one resource per External metric.
pub fn external_resources() -> Value {
    let resources: Vec<Value> = QUEUE_METRICS
        .iter()
        .map(|metric| resource(metric, "ExternalMetricValueList"))
        .collect();
    resource_list(EXTERNAL_GROUP, EXTERNAL_VERSION, resources)
}

fn resource(name: &str, kind: &str) -> Value {
    json!({"name": name, "singularName": "", "namespaced": true, "kind": kind, "verbs": ["get"]})
}

fn resource_list(group: &str, version: &str, resources: Vec<Value>) -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{group}/{version}"),
        "resources": resources,
    })
}

/// `custom.metrics.k8s.io/v1beta2` `MetricValueList`.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricValueList {
    kind: &'static str,
    api_version: &'static str,
    metadata: BTreeMap<String, String>,
    /// One value per pod.
    pub items: Vec<MetricValue>,
}

impl MetricValueList {
    /// A list of `items`.
    pub fn new(items: Vec<MetricValue>) -> Self {
        MetricValueList {
            kind: "MetricValueList",
            api_version: "custom.metrics.k8s.io/v1beta2",
            metadata: BTreeMap::new(),
            items,
        }
    }
}

/// One pod's value of a Pods metric.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricValue {
    /// The pod.
    pub described_object: ObjectReference,
    /// The metric's name (and no selector: these metrics have no labels of their own).
    pub metric: MetricIdentifier,
    /// When the newer of the two samples was taken.
    pub timestamp: String,
    /// Seconds between the two samples.
    pub window_seconds: i64,
    /// The value, as a quantity.
    pub value: String,
}

/// A reference to the pod a value describes.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    /// `Pod`.
    pub kind: &'static str,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// `/v1`, as the core group is written here.
    pub api_version: &'static str,
}

impl ObjectReference {
    /// A pod.
    pub fn pod(namespace: &str, name: &str) -> Self {
        ObjectReference {
            kind: "Pod",
            namespace: namespace.to_string(),
            name: name.to_string(),
            api_version: "/v1",
        }
    }
}

/// A metric's name and (always absent here) selector.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MetricIdentifier {
    /// Name.
    pub name: String,
    /// Serialised as `null`, as the API's own servers do for a metric without labels.
    pub selector: Option<Value>,
}

/// `external.metrics.k8s.io/v1beta1` `ExternalMetricValueList`.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalMetricValueList {
    kind: &'static str,
    api_version: &'static str,
    metadata: BTreeMap<String, String>,
    /// One value per ScaledApp and queue.
    pub items: Vec<ExternalMetricValue>,
}

impl ExternalMetricValueList {
    /// A list of `items`.
    pub fn new(items: Vec<ExternalMetricValue>) -> Self {
        ExternalMetricValueList {
            kind: "ExternalMetricValueList",
            api_version: "external.metrics.k8s.io/v1beta1",
            metadata: BTreeMap::new(),
            items,
        }
    }
}

/// One series of an External metric.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalMetricValue {
    /// Name.
    pub metric_name: String,
    /// The labels a selector matched (`scaledapp`, `queue`).
    pub metric_labels: BTreeMap<String, String>,
    /// When Redis was read.
    pub timestamp: String,
    /// The value, as a quantity.
    pub value: String,
}

/// RFC 3339 in seconds, as `metav1.Time` is written.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A quantity with milli precision: `1500m`, or `2` for a whole number. Negative and non-finite
/// values do not occur (rates and durations); they are written as `0`.
pub fn quantity(value: f64) -> String {
    if !value.is_finite() || value <= 0.0 {
        return "0".into();
    }
    let milli = (value * 1000.0).round() as u64;
    if milli.is_multiple_of(1000) {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_keep_milli_precision() {
        assert_eq!(quantity(1000.0), "1000");
        assert_eq!(quantity(1.5), "1500m");
        assert_eq!(quantity(0.2504), "250m");
        assert_eq!(quantity(0.0), "0");
        assert_eq!(quantity(f64::NAN), "0");
        assert_eq!(quantity(12345678.0), "12345678");
    }

    #[test]
    fn discovery_names_both_groups_and_every_metric() {
        let groups = group_list();
        assert_eq!(groups["kind"], "APIGroupList");
        assert_eq!(groups["groups"][0]["name"], CUSTOM_GROUP);
        assert_eq!(
            groups["groups"][0]["preferredVersion"]["groupVersion"],
            "custom.metrics.k8s.io/v1beta2"
        );
        assert_eq!(groups["groups"][1]["name"], EXTERNAL_GROUP);
        assert_eq!(
            api_group(EXTERNAL_GROUP).expect("served")["kind"],
            "APIGroup"
        );
        assert_eq!(api_group("metrics.k8s.io"), None);

        let custom = custom_resources();
        assert_eq!(custom["groupVersion"], "custom.metrics.k8s.io/v1beta2");
        let names: Vec<&str> = custom["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|r| r["name"].as_str().expect("name"))
            .collect();
        assert_eq!(
            names,
            [
                "pods/http_requests_per_second",
                "pods/http_request_duration_seconds_p95"
            ]
        );
        assert_eq!(custom["resources"][0]["namespaced"], true);
        assert_eq!(custom["resources"][0]["kind"], "MetricValueList");

        let external = external_resources();
        assert_eq!(external["groupVersion"], "external.metrics.k8s.io/v1beta1");
        assert_eq!(external["resources"][0]["name"], "scaledapp_queue_depth");
        assert_eq!(external["resources"][0]["kind"], "ExternalMetricValueList");
        assert_eq!(external["resources"][0]["verbs"], json!(["get"]));
    }

    #[test]
    fn lists_serialise_with_the_fields_clients_decode() {
        let list = MetricValueList::new(vec![MetricValue {
            described_object: ObjectReference::pod("shop", "shop-app-1"),
            metric: MetricIdentifier {
                name: REQUESTS_PER_SECOND.into(),
                selector: None,
            },
            timestamp: "2026-01-01T00:00:00Z".into(),
            window_seconds: 15,
            value: "1500m".into(),
        }]);
        let json = serde_json::to_value(&list).expect("serialises");
        assert_eq!(json["kind"], "MetricValueList");
        assert_eq!(json["apiVersion"], "custom.metrics.k8s.io/v1beta2");
        let item = &json["items"][0];
        assert_eq!(item["describedObject"]["kind"], "Pod");
        assert_eq!(item["describedObject"]["name"], "shop-app-1");
        assert_eq!(item["metric"]["name"], "http_requests_per_second");
        assert_eq!(item["windowSeconds"], 15);
        assert_eq!(item["value"], "1500m");

        let list = ExternalMetricValueList::new(vec![ExternalMetricValue {
            metric_name: "scaledapp_queue_depth".into(),
            metric_labels: BTreeMap::from([("queue".into(), "email.send".into())]),
            timestamp: "2026-01-01T00:00:00Z".into(),
            value: "42".into(),
        }]);
        let json = serde_json::to_value(&list).expect("serialises");
        assert_eq!(json["kind"], "ExternalMetricValueList");
        assert_eq!(json["apiVersion"], "external.metrics.k8s.io/v1beta1");
        assert_eq!(json["items"][0]["metricName"], "scaledapp_queue_depth");
        assert_eq!(json["items"][0]["metricLabels"]["queue"], "email.send");
        assert_eq!(json["items"][0]["value"], "42");
    }
}
