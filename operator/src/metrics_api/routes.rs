//! The HTTP surface: discovery, the Pods metrics (`custom.metrics.k8s.io/v1beta2`) and the
//! External metrics (`external.metrics.k8s.io/v1beta1`), every request authenticated and
//! authorized first ([`guard`]), every failure a `metav1.Status`.
//!
//! | path | answer |
//! | --- | --- |
//! | `/apis`, `/apis/<group>`, `/apis/<group>/<version>` | discovery documents |
//! | `/apis/custom.metrics.k8s.io/v1beta2/namespaces/<ns>/pods/<pod or *>/<metric>?labelSelector=` | `MetricValueList`, one item per app pod with a current value |
//! | `/apis/external.metrics.k8s.io/v1beta1/namespaces/<ns>/<metric>?labelSelector=` | `ExternalMetricValueList`, one item per ScaledApp and queue (labels `scaledapp`, `queue`) |
//!
//! A namespace without ScaledApps, a ScaledApp a selector names that does not exist, an unknown
//! metric: 404. A selector that cannot be evaluated: 400. A source that is down: 503.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kube::ResourceExt;
use scaled_contract::metrics::{QUEUE_LABEL, QUEUE_METRICS, SCALEDAPP_LABEL, queue_label_value};
use serde::Deserialize;

use super::auth::{Authenticator, Peer, access};
use super::documents::{
    self, ExternalMetricValue, ExternalMetricValueList, MetricIdentifier, MetricValue,
    MetricValueList, ObjectReference, POD_METRICS, quantity, timestamp,
};
use super::error::ApiError;
use super::queues::app_queues;
use super::selector::Selector;
use super::source::MetricsSource;
use crate::crd::ScaledApp;
use crate::names::SCALEDAPP_NAME_LABEL;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// ScaledApps and their figures.
    pub source: Arc<dyn MetricsSource>,
    /// Authentication and authorization.
    pub auth: Arc<Authenticator>,
}

/// The router; every route, the fallback included, is behind [`guard`].
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/apis", get(|| async { Json(documents::group_list()) }))
        .route("/apis/{group}", get(api_group))
        .route(
            "/apis/custom.metrics.k8s.io/v1beta2",
            get(|| async { Json(documents::custom_resources()) }),
        )
        .route(
            "/apis/external.metrics.k8s.io/v1beta1",
            get(|| async { Json(documents::external_resources()) }),
        )
        .route(
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/pods/{pod}/{metric}",
            get(pod_metric),
        )
        .route(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}",
            get(external_metric),
        )
        .fallback(|| async {
            ApiError::NotFound("the server could not find the requested resource".into())
        })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Authenticates, refuses what is not a GET, authorizes; only then runs the handler.
async fn guard(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<Peer>().cloned();
    let identity = match state
        .auth
        .authenticate(peer.as_ref(), request.headers())
        .await
    {
        Ok(identity) => identity,
        Err(error) => return error.into_response(),
    };
    if request.method() != Method::GET {
        return ApiError::MethodNotAllowed(format!(
            "{} is not supported: the metrics APIs are read-only",
            request.method()
        ))
        .into_response();
    }
    if let Err(error) = state
        .auth
        .authorize(&identity, &access(request.uri().path()))
        .await
    {
        return error.into_response();
    }
    next.run(request).await
}

async fn api_group(Path(group): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    documents::api_group(&group)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("the API group {group:?} is not served here")))
}

/// The query of a list request.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    label_selector: Option<String>,
    metric_label_selector: Option<String>,
}

fn parse_selector(text: &Option<String>) -> Result<Selector, ApiError> {
    Selector::parse(text.as_deref().unwrap_or_default())
        .map_err(|error| ApiError::BadRequest(error.to_string()))
}

/// The ScaledApps of `namespace` a request may concern: all of them, or those whose name the
/// selector pins through `key`. 404 when there are none.
fn candidates(
    source: &dyn MetricsSource,
    namespace: &str,
    selector: &Selector,
    key: &str,
) -> Result<Vec<Arc<ScaledApp>>, ApiError> {
    let apps = source.apps(namespace)?;
    if apps.is_empty() {
        return Err(ApiError::NotFound(format!(
            "there is no ScaledApp in namespace {namespace:?}"
        )));
    }
    let Some(names) = selector.allowed_values(key) else {
        return Ok(apps);
    };
    let chosen: Vec<_> = apps
        .into_iter()
        .filter(|app| names.contains(app.name_any().as_str()))
        .collect();
    if chosen.is_empty() {
        let names: BTreeSet<&str> = names;
        return Err(ApiError::NotFound(format!(
            "no ScaledApp named {} in namespace {namespace:?}",
            names.into_iter().collect::<Vec<_>>().join(" or ")
        )));
    }
    Ok(chosen)
}

async fn pod_metric(
    State(state): State<ApiState>,
    Path((namespace, pod, metric)): Path<(String, String, String)>,
    Query(query): Query<ListQuery>,
) -> Result<Json<MetricValueList>, ApiError> {
    if !POD_METRICS.contains(&metric.as_str()) {
        return Err(ApiError::NotFound(format!(
            "the metric {metric:?} is not served for pods (served: {})",
            POD_METRICS.join(", ")
        )));
    }
    let selector = parse_selector(&query.label_selector)?;
    let metric_selector = parse_selector(&query.metric_label_selector)?;
    let apps = candidates(
        state.source.as_ref(),
        &namespace,
        &selector,
        SCALEDAPP_NAME_LABEL,
    )?;
    let readings = futures::future::join_all(apps.iter().map(|app| state.source.pods(app))).await;
    let mut items = Vec::new();
    // These metrics carry no labels of their own: a metric selector either selects them all or
    // none.
    if metric_selector.matches(&BTreeMap::new()) {
        for readings in readings {
            for reading in &readings?.pods {
                if (pod == "*" || reading.name == pod) && selector.matches(&reading.labels) {
                    let value = if metric == scaled_contract::metrics::REQUESTS_PER_SECOND {
                        reading.rates.requests_per_second
                    } else {
                        reading.rates.response_time_p95
                    };
                    items.push(MetricValue {
                        described_object: ObjectReference::pod(&namespace, &reading.name),
                        metric: MetricIdentifier {
                            name: metric.clone(),
                            selector: None,
                        },
                        timestamp: timestamp(reading.timestamp),
                        window_seconds: reading.window.as_secs_f64().round().max(1.0) as i64,
                        value: quantity(value),
                    });
                }
            }
        }
    }
    if pod != "*" && items.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no {metric} for pod {namespace}/{pod}: not an app pod of a ScaledApp, or not scraped twice yet"
        )));
    }
    Ok(Json(MetricValueList::new(items)))
}

async fn external_metric(
    State(state): State<ApiState>,
    Path((namespace, metric)): Path<(String, String)>,
    Query(query): Query<ListQuery>,
) -> Result<Json<ExternalMetricValueList>, ApiError> {
    if !QUEUE_METRICS.contains(&metric.as_str()) {
        return Err(ApiError::NotFound(format!(
            "the external metric {metric:?} is not served (served: {})",
            QUEUE_METRICS.join(", ")
        )));
    }
    let selector = parse_selector(&query.label_selector)?;
    let apps = candidates(
        state.source.as_ref(),
        &namespace,
        &selector,
        SCALEDAPP_LABEL,
    )?;
    let mut items = Vec::new();
    for app in apps {
        let name = app.name_any();
        let series: Vec<(String, BTreeMap<String, String>)> = app_queues(&app)
            .into_iter()
            .map(|queue| {
                let labels = BTreeMap::from([
                    (SCALEDAPP_LABEL.to_string(), name.clone()),
                    (QUEUE_LABEL.to_string(), queue_label_value(&queue)),
                ]);
                (queue, labels)
            })
            .filter(|(_, labels)| selector.matches(labels))
            .collect();
        if series.is_empty() {
            // Nothing selected here: Redis is not read.
            continue;
        }
        let readings = state.source.queues(&app).await?;
        for (queue, labels) in series {
            let Some(value) = readings
                .queues
                .iter()
                .find(|reading| reading.queue == queue)
                .and_then(|reading| reading.value(&metric))
            else {
                continue;
            };
            items.push(ExternalMetricValue {
                metric_name: metric.clone(),
                metric_labels: labels,
                timestamp: timestamp(readings.timestamp),
                value: value.to_string(),
            });
        }
    }
    Ok(Json(ExternalMetricValueList::new(items)))
}
