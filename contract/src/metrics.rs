//! Metric names shared by the app (which exports them), the operator's metrics API server (which
//! reads them and serves derived metrics) and the HorizontalPodAutoscalers the operator renders
//! (which ask for the derived metrics by name). One definition each, so a rename on one side
//! fails to compile instead of leaving an HPA at `<unknown>`.
//!
//! Two kinds of names live here:
//! - **exported** by every app pod on its metrics port, in the Prometheus text format:
//!   [`HTTP_REQUESTS_TOTAL`], [`HTTP_REQUEST_DURATION_SECONDS`], [`QUEUE_DEPTH`];
//! - **served** by the operator through the aggregated metrics APIs and named by the HPAs:
//!   [`REQUESTS_PER_SECOND`] and [`RESPONSE_TIME_P95`] (`custom.metrics.k8s.io`, per pod),
//!   [`QUEUE_BACKLOG`] and its parts (`external.metrics.k8s.io`, per ScaledApp and queue).

/// Exported counter: HTTP requests served, labelled `method`, `route` (the matched route
/// template) and `status`. The operator sums it over every label set of a pod.
pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";

/// Exported histogram: HTTP request duration in seconds, labelled `route`. The operator sums
/// its `_bucket` series over routes, per `le`.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";

/// Exported gauge: stream length and pending entries per queue (labels `stream`, `kind`). For
/// dashboards only; autoscaling reads the backlog from Redis itself ([`QUEUE_BACKLOG`]), so it
/// does not depend on a pod being scraped.
pub const QUEUE_DEPTH: &str = "queue_depth";

/// Served Pods metric (`custom.metrics.k8s.io/v1beta2`): requests per second of one app pod,
/// the rate of [`HTTP_REQUESTS_TOTAL`] between the operator's last two scrapes of that pod.
pub const REQUESTS_PER_SECOND: &str = "http_requests_per_second";

/// Served Pods metric (`custom.metrics.k8s.io/v1beta2`): the 95th percentile of one app pod's
/// request duration in seconds, over the same window, from the [`HTTP_REQUEST_DURATION_SECONDS`]
/// buckets (linear interpolation inside a bucket, as PromQL's `histogram_quantile`).
pub const RESPONSE_TIME_P95: &str = "http_request_duration_seconds_p95";

/// Served External metric (`external.metrics.k8s.io/v1beta1`): a queue's backlog, the messages
/// not yet acknowledged by the worker group: entries never delivered to the group (its lag)
/// plus entries delivered and not yet acknowledged (pending). Worker-pool HPAs scale on it.
pub const QUEUE_BACKLOG: &str = "scaledapp_queue_depth";

/// Served External metric: entries in the queue's stream (`XLEN`). The app deletes an entry
/// when it acknowledges it, so this equals the backlog unless something else writes there.
pub const QUEUE_LENGTH: &str = "scaledapp_queue_length";

/// Served External metric: entries the worker group has not been handed yet (its lag).
pub const QUEUE_LAG: &str = "scaledapp_queue_lag";

/// Served External metric: entries handed to a worker and not acknowledged yet (`XPENDING`).
pub const QUEUE_PENDING: &str = "scaledapp_queue_pending";

/// Every External metric the operator serves, backlog first.
pub const QUEUE_METRICS: [&str; 4] = [QUEUE_BACKLOG, QUEUE_LENGTH, QUEUE_LAG, QUEUE_PENDING];

/// Label of every External metric: the ScaledApp's name.
pub const SCALEDAPP_LABEL: &str = "scaledapp";

/// Label of every External metric: the queue, written by [`queue_label_value`].
pub const QUEUE_LABEL: &str = "queue";

/// The Redis Streams consumer group every worker joins; its lag and pending entries are the
/// backlog.
pub const WORKER_GROUP: &str = "scaled-workers";

/// A queue name as a label value: label values cannot contain ':', queue names do
/// (`email:send` -> `email.send`).
pub fn queue_label_value(queue: &str) -> String {
    queue.replace(':', ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_queue_becomes_a_legal_label_value() {
        for queue in crate::KNOWN_QUEUES {
            let value = queue_label_value(queue);
            assert!(value.len() <= 63, "{value}");
            assert!(
                value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
                "{value} is not a label value"
            );
        }
        assert_eq!(queue_label_value("email:send"), "email.send");
    }

    #[test]
    fn served_names_are_distinct_from_exported_ones() {
        let served = [REQUESTS_PER_SECOND, RESPONSE_TIME_P95]
            .into_iter()
            .chain(QUEUE_METRICS);
        for name in served {
            assert!(
                ![
                    HTTP_REQUESTS_TOTAL,
                    HTTP_REQUEST_DURATION_SECONDS,
                    QUEUE_DEPTH
                ]
                .contains(&name),
                "{name}"
            );
        }
    }
}
