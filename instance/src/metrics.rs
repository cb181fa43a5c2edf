//! Prometheus metrics, derived from the published status. Label values come only from the
//! fixed role set ([`InstanceRole::ALL`], labelled with [`InstanceRole::as_str`], the names
//! `/status` and the ScaledApp's status use), so the series count is bounded.

use prometheus::{Encoder, Gauge, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use scaled_contract::instance::{InstanceRole, InstanceStatus};

/// 1 while Postgres accepts connections, else 0.
pub const UP: &str = "scaled_instance_up";
/// One-hot role, label `role`.
pub const ROLE: &str = "scaled_instance_role";
/// Current timeline (0 when unknown).
pub const TIMELINE: &str = "scaled_instance_timeline";
/// Replica: bytes of WAL the primary has that this replica has not replayed.
pub const LAG_BYTES: &str = "scaled_instance_replication_lag_bytes";
/// Replica: seconds since the last replayed commit, 0 when caught up.
pub const LAG_SECONDS: &str = "scaled_instance_replication_lag_seconds";
/// Times this replica was cloned again because it could not follow.
pub const RECLONES_TOTAL: &str = "scaled_instance_reclones_total";

/// The instance's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    up: IntGauge,
    role: IntGaugeVec,
    timeline: IntGauge,
    lag_bytes: Gauge,
    lag_seconds: Gauge,
    reclones: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let up = IntGauge::new(UP, "1 while Postgres accepts connections").expect("valid metric");
        let role = IntGaugeVec::new(Opts::new(ROLE, "The instance's role (one-hot)"), &["role"])
            .expect("valid metric");
        let timeline = IntGauge::new(TIMELINE, "Current Postgres timeline (0 when unknown)")
            .expect("valid metric");
        let lag_bytes = Gauge::new(
            LAG_BYTES,
            "Replica: WAL bytes between the primary's position and this replica's replay (NaN when unknown)",
        )
        .expect("valid metric");
        let lag_seconds = Gauge::new(
            LAG_SECONDS,
            "Replica: seconds since the last replayed commit, 0 when caught up (NaN when unknown)",
        )
        .expect("valid metric");
        let reclones = IntCounter::new(
            RECLONES_TOTAL,
            "Times this replica discarded its data and cloned the primary again",
        )
        .expect("valid metric");
        for collector in [
            Box::new(up.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(role.clone()),
            Box::new(timeline.clone()),
            Box::new(lag_bytes.clone()),
            Box::new(lag_seconds.clone()),
            Box::new(reclones.clone()),
        ] {
            registry
                .register(collector)
                .expect("each metric is registered once");
        }
        let metrics = Metrics {
            registry,
            up,
            role,
            timeline,
            lag_bytes,
            lag_seconds,
            reclones,
        };
        for role in InstanceRole::ALL {
            metrics.role.with_label_values(&[role.as_str()]).set(0);
        }
        metrics
    }

    /// Sets every metric from a status document.
    pub fn observe(&self, status: &InstanceStatus, postgres_up: bool) {
        self.up.set(i64::from(postgres_up));
        for role in InstanceRole::ALL {
            self.role
                .with_label_values(&[role.as_str()])
                .set(i64::from(role == status.role));
        }
        self.timeline
            .set(status.timeline.map(i64::from).unwrap_or(0));
        let (bytes, seconds) = match status.role {
            InstanceRole::Primary => (Some(0.0), Some(0.0)),
            _ => (
                status.lag_bytes.map(|bytes| bytes as f64),
                status.lag_seconds,
            ),
        };
        self.lag_bytes.set(bytes.unwrap_or(f64::NAN));
        self.lag_seconds.set(seconds.unwrap_or(f64::NAN));
        let counted = self.reclones.get();
        let total = u64::from(status.reclones);
        if total > counted {
            self.reclones.inc_by(total - counted);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("encoding gathered metrics into memory cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(role: InstanceRole) -> InstanceStatus {
        serde_json::from_value(serde_json::json!({
            "pod": "db-1", "shard": 0, "role": role, "ready": true,
            "timeline": 3, "lagBytes": 1024, "lagSeconds": 0.5, "reclones": 2
        }))
        .expect("a status")
    }

    #[test]
    fn the_role_is_one_hot_over_a_fixed_label_set() {
        let metrics = Metrics::new();
        metrics.observe(&status(InstanceRole::Replica), true);
        let text = metrics.render();
        assert!(
            text.contains("scaled_instance_role{role=\"Replica\"} 1"),
            "{text}"
        );
        assert!(text.contains("scaled_instance_role{role=\"Primary\"} 0"));
        assert_eq!(
            text.matches("scaled_instance_role{").count(),
            InstanceRole::ALL.len()
        );
        assert!(text.contains("scaled_instance_up 1"));
        assert!(text.contains("scaled_instance_timeline 3"));
        assert!(text.contains("scaled_instance_replication_lag_bytes 1024"));
        assert!(text.contains("scaled_instance_replication_lag_seconds 0.5"));
        assert!(text.contains("scaled_instance_reclones_total 2"));
    }

    #[test]
    fn a_primary_has_no_lag_and_the_reclone_counter_never_goes_back() {
        let metrics = Metrics::new();
        metrics.observe(&status(InstanceRole::Replica), true);
        let mut primary = status(InstanceRole::Primary);
        primary.reclones = 0;
        metrics.observe(&primary, true);
        let text = metrics.render();
        assert!(text.contains("scaled_instance_replication_lag_bytes 0"));
        assert!(text.contains("scaled_instance_reclones_total 2"));
    }
}
