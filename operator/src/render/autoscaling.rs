//! HorizontalPodAutoscalers (autoscaling/v2) for the app and for each worker pool.
//!
//! The app scales on CPU (Resource metric), requests per second and p95 latency (Pods metrics);
//! worker pools scale on each queue's backlog (an External metric per queue). The operator
//! itself serves the Pods and External metrics (`crate::metrics_api`), under the names in
//! [`scaled_contract::metrics`], so no adapter is needed. The article's "scale down only after N
//! minutes of low load" is the scale-down stabilization window.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, ExternalMetricSource, HPAScalingPolicy, HPAScalingRules,
    HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec,
    MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use scaled_contract::metrics::{
    QUEUE_BACKLOG, QUEUE_LABEL, REQUESTS_PER_SECOND, RESPONSE_TIME_P95, SCALEDAPP_LABEL,
    queue_label_value,
};
use std::collections::BTreeMap;

use super::{child_name, object_meta};
use crate::crd::{ScalingRules, WorkerPoolSpec};
use crate::validate::ValidatedApp;

/// The app's HPA.
pub fn app(app: &ValidatedApp) -> HorizontalPodAutoscaler {
    let spec = &app.spec.autoscaling;
    let mut metrics = vec![MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: "cpu".into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(spec.target_cpu_utilization_percent),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    }];
    if spec.target_requests_per_second > 0 {
        metrics.push(pods_metric(
            REQUESTS_PER_SECOND,
            spec.target_requests_per_second.to_string(),
        ));
    }
    if let Some(milliseconds) = spec.target_response_time_ms {
        // Quantities in seconds: 500 ms is "500m".
        metrics.push(pods_metric(RESPONSE_TIME_P95, format!("{milliseconds}m")));
    }
    autoscaler(
        app,
        child_name(app, "app"),
        "app",
        app.spec.app.replicas.min,
        app.spec.app.replicas.max,
        metrics,
        behavior(&spec.scale_up, &spec.scale_down),
    )
}

/// A worker pool's HPA: one External metric per queue, the HPA follows the busiest. The selector
/// uses label keys the metrics server can match exactly: the ScaledApp's name and the queue.
pub fn worker(
    app: &ValidatedApp,
    pool: &WorkerPoolSpec,
    deployment: String,
) -> HorizontalPodAutoscaler {
    let metrics = pool
        .queues
        .iter()
        .map(|queue| MetricSpec {
            type_: "External".into(),
            external: Some(ExternalMetricSource {
                metric: MetricIdentifier {
                    name: QUEUE_BACKLOG.into(),
                    selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([
                            (SCALEDAPP_LABEL.to_string(), app.name.clone()),
                            (QUEUE_LABEL.to_string(), queue_label_value(queue)),
                        ])),
                        match_expressions: None,
                    }),
                },
                target: MetricTarget {
                    type_: "AverageValue".into(),
                    average_value: Some(Quantity(pool.target_queue_depth_per_replica.to_string())),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        })
        .collect();
    // Workers react to backlog quickly but shrink as cautiously as the app.
    let scale_up = ScalingRules {
        stabilization_window_seconds: 0,
        max_percent_per_minute: 100,
        max_pods_per_minute: 4,
    };
    autoscaler(
        app,
        deployment,
        "worker",
        pool.replicas.min,
        pool.replicas.max,
        metrics,
        behavior(&scale_up, &app.spec.autoscaling.scale_down),
    )
}

fn pods_metric(name: &str, average_value: String) -> MetricSpec {
    MetricSpec {
        type_: "Pods".into(),
        pods: Some(PodsMetricSource {
            metric: MetricIdentifier {
                name: name.into(),
                selector: None,
            },
            target: MetricTarget {
                type_: "AverageValue".into(),
                average_value: Some(Quantity(average_value)),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    }
}

fn rules(rules: &ScalingRules) -> HPAScalingRules {
    HPAScalingRules {
        stabilization_window_seconds: Some(rules.stabilization_window_seconds),
        select_policy: Some("Max".into()),
        policies: Some(vec![
            HPAScalingPolicy {
                type_: "Percent".into(),
                value: rules.max_percent_per_minute,
                period_seconds: 60,
            },
            HPAScalingPolicy {
                type_: "Pods".into(),
                value: rules.max_pods_per_minute,
                period_seconds: 60,
            },
        ]),
        ..HPAScalingRules::default()
    }
}

fn behavior(scale_up: &ScalingRules, scale_down: &ScalingRules) -> HorizontalPodAutoscalerBehavior {
    HorizontalPodAutoscalerBehavior {
        scale_up: Some(rules(scale_up)),
        scale_down: Some(rules(scale_down)),
    }
}

fn autoscaler(
    app: &ValidatedApp,
    name: String,
    component: &str,
    min: i32,
    max: i32,
    metrics: Vec<MetricSpec>,
    behavior: HorizontalPodAutoscalerBehavior,
) -> HorizontalPodAutoscaler {
    HorizontalPodAutoscaler {
        metadata: object_meta(app, name.clone(), component),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name,
            },
            min_replicas: Some(min),
            max_replicas: max,
            metrics: Some(metrics),
            behavior: Some(behavior),
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::validated_example;

    fn metric<'a>(hpa: &'a HorizontalPodAutoscaler, type_: &str) -> Vec<&'a MetricSpec> {
        hpa.spec
            .as_ref()
            .and_then(|s| s.metrics.as_ref())
            .map(|m| m.iter().filter(|m| m.type_ == type_).collect())
            .unwrap_or_default()
    }

    #[test]
    fn the_articles_thresholds_land_in_the_app_hpa() {
        let app = validated_example("shop");
        let hpa = super::app(&app);
        let spec = hpa.spec.as_ref().expect("spec");
        assert_eq!(spec.min_replicas, Some(3));
        assert_eq!(spec.max_replicas, 50);
        let cpu = metric(&hpa, "Resource")[0].resource.as_ref().expect("cpu");
        assert_eq!(cpu.target.average_utilization, Some(70));
        let pods = metric(&hpa, "Pods");
        let value = |name: &str| {
            pods.iter()
                .find(|m| m.pods.as_ref().map(|p| p.metric.name.as_str()) == Some(name))
                .and_then(|m| m.pods.as_ref())
                .and_then(|p| p.target.average_value.clone())
        };
        assert_eq!(value(REQUESTS_PER_SECOND), Some(Quantity("1000".into())));
        assert_eq!(value(RESPONSE_TIME_P95), Some(Quantity("500m".into())));
        let behavior = spec.behavior.as_ref().expect("behavior");
        let down = behavior.scale_down.as_ref().expect("down");
        assert_eq!(
            down.stabilization_window_seconds,
            Some(300),
            "5 minutes of low load before scaling down"
        );
        let up = behavior.scale_up.as_ref().expect("up");
        assert_eq!(up.stabilization_window_seconds, Some(0), "scale up at once");
    }

    #[test]
    fn a_worker_hpa_follows_each_queue_of_its_pool() {
        let app = validated_example("shop");
        let pool = &app.spec.workers[0];
        let hpa = worker(&app, pool, "shop-worker-default".into());
        let spec = hpa.spec.as_ref().expect("spec");
        assert_eq!(spec.scale_target_ref.name, "shop-worker-default");
        let external = metric(&hpa, "External");
        assert_eq!(external.len(), pool.queues.len());
        let first = external[0].external.as_ref().expect("external");
        assert_eq!(first.metric.name, QUEUE_BACKLOG);
        let labels = first
            .metric
            .selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .expect("labels");
        assert_eq!(labels[SCALEDAPP_LABEL], "shop");
        assert_eq!(labels[QUEUE_LABEL], queue_label_value(&pool.queues[0]));
        assert!(!labels[QUEUE_LABEL].contains(':'));
        assert_eq!(
            first.target.average_value,
            Some(Quantity(pool.target_queue_depth_per_replica.to_string()))
        );
    }
}
