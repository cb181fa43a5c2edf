//! Prometheus metrics of one process, in a registry of its own (not the global default) so that
//! several app instances in one test binary do not share counters.
//!
//! Every label value comes from a fixed set (a method list, a status list, the router's route
//! templates, `&'static str` categories), never from raw paths, client input or error texts, so
//! the number of series stays bounded. Series counted on every request are resolved once and
//! kept (see [`CacheLookups`] and `http::observe`): a `with_label_values` lookup hashes the
//! values and takes a lock, which the hot path should not pay.

use std::{ops::Deref, sync::Arc};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// All metrics the app exports; cheap to clone (one reference count), because it travels in
/// state that axum clones several times per request.
#[derive(Clone)]
pub struct Metrics(Arc<Families>);

impl Deref for Metrics {
    type Target = Families;

    fn deref(&self) -> &Families {
        &self.0
    }
}

/// The metric families of [`Metrics`].
pub struct Families {
    registry: Registry,
    /// Requests by method, matched route and status code.
    pub http_requests: IntCounterVec,
    /// Request latency by matched route.
    pub http_duration: HistogramVec,
    /// Cache lookups by layer (`l1`, `l2`) and result (`hit`, `miss`, `error`).
    pub cache_lookups: IntCounterVec,
    /// Database statements by query name and role (`primary`, `replica`).
    pub db_queries: IntCounterVec,
    /// Database failures by kind (`unavailable`, `replica_fallback`).
    pub db_errors: IntCounterVec,
    /// Redis failures by operation.
    pub redis_errors: IntCounterVec,
    /// Shared Redis connections replaced outright, by reason (`not_primary`: a demoted primary
    /// refused a write).
    pub redis_reconnects: IntCounterVec,
    /// Waits for Redis replicas (`WAIT`) by operation (`outbox_relay`, `session_create`,
    /// `session_revoke`) and result (`confirmed`; `unconfirmed`: too few replicas answered in
    /// time; `skipped`: not asked, as the last wait moments ago was unconfirmed).
    pub replication_waits: IntCounterVec,
    /// Requests answered 503 because a dependency was down, by dependency (`database`,
    /// `redis`): a Redis outage is not counted as a database error.
    pub dependency_failures: IntCounterVec,
    /// Pool connections by shard, role and state (`open`, `idle`, `max`).
    pub pool_connections: IntGaugeVec,
    /// Stream length and pending (delivered, unacknowledged) entries per queue.
    pub queue_depth: IntGaugeVec,
    /// Queue messages by stream and outcome (`processed`, `duplicate`, `retry`, `dead`).
    pub queue_messages: IntCounterVec,
    /// Outbox rows relayed to Redis.
    pub outbox_relayed: IntCounter,
    /// Requests refused by the rate limiter.
    pub rate_limit_rejections: IntCounter,
    /// Rate-limit decisions taken without Redis, by failure mode.
    pub rate_limit_degraded: IntCounterVec,
    /// Requests whose session was accepted on its signature alone because Redis was away.
    pub sessions_verified_offline: IntCounter,
    /// `cache_lookups` series, resolved once.
    pub cache: CacheLookups,
}

/// The series of `cache_lookups_total`.
pub struct CacheLookups {
    /// L1 served the entry.
    pub l1_hit: IntCounter,
    /// L1 had no (valid) entry.
    pub l1_miss: IntCounter,
    /// L2 served the value.
    pub l2_hit: IntCounter,
    /// L2 had no (current) value.
    pub l2_miss: IntCounter,
    /// L2 failed or was too slow.
    pub l2_error: IntCounter,
}

impl CacheLookups {
    fn new(lookups: &IntCounterVec) -> Self {
        let series = |layer: &str, result: &str| lookups.with_label_values(&[layer, result]);
        CacheLookups {
            l1_hit: series("l1", "hit"),
            l1_miss: series("l1", "miss"),
            l2_hit: series("l2", "hit"),
            l2_miss: series("l2", "miss"),
            l2_error: series("l2", "error"),
        }
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let cache_lookups = IntCounterVec::new(
            Opts::new("cache_lookups_total", "Cache lookups by layer and result"),
            &["layer", "result"],
        )
        .expect("valid metric definition");
        let families = Families {
            http_requests: IntCounterVec::new(
                Opts::new(
                    scaled_contract::metrics::HTTP_REQUESTS_TOTAL,
                    "HTTP requests by method, matched route and status",
                ),
                &["method", "route", "status"],
            )
            .expect("valid metric definition"),
            http_duration: HistogramVec::new(
                HistogramOpts::new(
                    scaled_contract::metrics::HTTP_REQUEST_DURATION_SECONDS,
                    "HTTP request latency by matched route",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
                &["route"],
            )
            .expect("valid metric definition"),
            cache: CacheLookups::new(&cache_lookups),
            cache_lookups,
            db_queries: IntCounterVec::new(
                Opts::new("db_queries_total", "Database statements by query and role"),
                &["query", "role"],
            )
            .expect("valid metric definition"),
            db_errors: IntCounterVec::new(
                Opts::new("db_errors_total", "Database failures by kind"),
                &["kind"],
            )
            .expect("valid metric definition"),
            redis_errors: IntCounterVec::new(
                Opts::new("redis_errors_total", "Redis failures by operation"),
                &["operation"],
            )
            .expect("valid metric definition"),
            redis_reconnects: IntCounterVec::new(
                Opts::new(
                    "redis_reconnects_total",
                    "Shared Redis connections replaced outright, by reason",
                ),
                &["reason"],
            )
            .expect("valid metric definition"),
            replication_waits: IntCounterVec::new(
                Opts::new(
                    "redis_replication_waits_total",
                    "Waits for Redis replicas to hold a write, by operation and result",
                ),
                &["operation", "result"],
            )
            .expect("valid metric definition"),
            dependency_failures: IntCounterVec::new(
                Opts::new(
                    "http_dependency_failures_total",
                    "Requests answered 503 because a dependency was down, by dependency",
                ),
                &["dependency"],
            )
            .expect("valid metric definition"),
            pool_connections: IntGaugeVec::new(
                Opts::new(
                    "db_pool_connections",
                    "Pool connections by shard, role and state",
                ),
                &["shard", "role", "state"],
            )
            .expect("valid metric definition"),
            queue_depth: IntGaugeVec::new(
                Opts::new(
                    scaled_contract::metrics::QUEUE_DEPTH,
                    "Stream length and pending entries per queue",
                ),
                &["stream", "kind"],
            )
            .expect("valid metric definition"),
            queue_messages: IntCounterVec::new(
                Opts::new(
                    "queue_messages_total",
                    "Queue messages by stream and outcome",
                ),
                &["stream", "outcome"],
            )
            .expect("valid metric definition"),
            outbox_relayed: IntCounter::new("outbox_relayed_total", "Outbox rows relayed to Redis")
                .expect("valid metric definition"),
            rate_limit_rejections: IntCounter::new(
                "rate_limit_rejections_total",
                "Requests refused by the rate limiter",
            )
            .expect("valid metric definition"),
            rate_limit_degraded: IntCounterVec::new(
                Opts::new(
                    "rate_limit_degraded_total",
                    "Rate-limit decisions taken without Redis",
                ),
                &["mode"],
            )
            .expect("valid metric definition"),
            sessions_verified_offline: IntCounter::new(
                "sessions_verified_offline_total",
                "Requests whose signed session was accepted without Redis (revocations unseen)",
            )
            .expect("valid metric definition"),
            registry,
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 16] = [
            Box::new(families.http_requests.clone()),
            Box::new(families.redis_reconnects.clone()),
            Box::new(families.replication_waits.clone()),
            Box::new(families.http_duration.clone()),
            Box::new(families.cache_lookups.clone()),
            Box::new(families.db_queries.clone()),
            Box::new(families.db_errors.clone()),
            Box::new(families.redis_errors.clone()),
            Box::new(families.dependency_failures.clone()),
            Box::new(families.pool_connections.clone()),
            Box::new(families.queue_depth.clone()),
            Box::new(families.queue_messages.clone()),
            Box::new(families.outbox_relayed.clone()),
            Box::new(families.rate_limit_rejections.clone()),
            Box::new(families.rate_limit_degraded.clone()),
            Box::new(families.sessions_verified_offline.clone()),
        ];
        for collector in collectors {
            families
                .registry
                .register(collector)
                .expect("metric names are unique within the registry");
        }
        Metrics(Arc::new(families))
    }

    /// The text exposition format of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("encoding into a Vec cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
