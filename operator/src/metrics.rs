//! Operator metrics, served on the probe port at `/metrics`. Labels are fixed categories, never
//! error text, so their number stays bounded.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// The operator's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Registry the handlers encode.
    pub registry: Registry,
    reconciles: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
    writes: IntCounterVec,
    primary_changes: IntCounterVec,
    primary_change_seconds: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "scaledapp_operator_reconciles_total",
                "Reconciles by outcome",
            ),
            &["outcome"],
        )
        .expect("metric definition is valid");
        let failures = IntCounterVec::new(
            Opts::new(
                "scaledapp_operator_reconcile_errors_total",
                "Failed reconciles by category",
            ),
            &["category"],
        )
        .expect("metric definition is valid");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "scaledapp_operator_reconcile_duration_seconds",
                "Reconcile duration",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["outcome"],
        )
        .expect("metric definition is valid");
        let writes = IntCounterVec::new(
            Opts::new(
                "scaledapp_operator_api_writes_total",
                "Write requests (apply, create, delete, status patch) sent to the API server, by kind",
            ),
            &["kind"],
        )
        .expect("metric definition is valid");
        let primary_changes = IntCounterVec::new(
            Opts::new(
                "scaledapp_operator_primary_changes_total",
                "Failovers and switchovers started, by kind",
            ),
            &["kind"],
        )
        .expect("metric definition is valid");
        let primary_change_seconds = HistogramVec::new(
            HistogramOpts::new(
                "scaledapp_operator_primary_change_seconds",
                "From the decision to promote until the new primary accepted writes, by kind",
            )
            .buckets(vec![1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0]),
            &["kind"],
        )
        .expect("metric definition is valid");
        for collector in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(writes.clone()),
            Box::new(primary_changes.clone()),
            Box::new(primary_change_seconds.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics {
            registry,
            reconciles,
            failures,
            duration,
            writes,
            primary_changes,
            primary_change_seconds,
        }
    }

    /// Counts a failover or switchover started (`kind` is `Failover` or `Switchover`).
    pub fn record_primary_change(&self, kind: &'static str) {
        self.primary_changes.with_label_values(&[kind]).inc();
    }

    /// Records how long a completed failover or switchover took. Unknown kinds are not recorded,
    /// so the label set stays fixed.
    pub fn record_primary_change_seconds(&self, kind: &str, seconds: f64) {
        for known in [crate::crd::FAILOVER, crate::crd::SWITCHOVER] {
            if kind == known {
                self.primary_change_seconds
                    .with_label_values(&[known])
                    .observe(seconds);
            }
        }
    }

    /// Counts one finished reconcile.
    pub fn record_reconcile(&self, outcome: &'static str, seconds: f64) {
        self.reconciles.with_label_values(&[outcome]).inc();
        self.duration.with_label_values(&[outcome]).observe(seconds);
    }

    /// Counts one failed reconcile by category.
    pub fn record_failure(&self, category: &'static str) {
        self.failures.with_label_values(&[category]).inc();
    }

    /// Counts one write request.
    pub fn record_write(&self, kind: &'static str) {
        self.writes.with_label_values(&[kind]).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("text encoding of gathered metrics cannot fail")
    }
}
