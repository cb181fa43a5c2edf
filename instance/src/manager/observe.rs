//! Observing the local server (or, while it is stopped, the data directory) and publishing the
//! status document.

use scaled_contract::instance::{InstanceRole, InstanceStatus, parse_lsn};

use crate::conf::ServerMode;

use super::{LocalView, Manager};

impl Manager {
    pub(super) fn publish_role(&self) {
        let mut status = self.report.status();
        status.role = self.role;
        status.ready = false;
        self.report.publish(status, self.observed.accepting);
    }

    /// Observes the server (or the data directory) and publishes the status document.
    pub async fn refresh(&mut self) {
        let mut status = InstanceStatus {
            pod: self.settings.pod.clone(),
            shard: self.settings.shard,
            role: self.role,
            ready: false,
            server_major_version: Some(self.binaries.major()),
            data_major_version: self.data.data_major(),
            system_identifier: None,
            timeline: None,
            current_lsn: None,
            received_lsn: None,
            replayed_lsn: None,
            lag_bytes: None,
            lag_seconds: None,
            primary_pod: None,
            streaming_replicas: Vec::new(),
            problem: None,
            reclones: self.reclones,
            last_reclone_reason: self.last_reclone_reason.clone(),
        };
        let mode = self.server.as_ref().map(|server| server.mode().clone());
        match &mode {
            Some(mode) => {
                self.observed = self.observe_local().await;
                let view = &self.observed;
                status.system_identifier = view.system_identifier.clone();
                status.timeline = view.timeline;
                match mode {
                    ServerMode::Primary => {
                        // Ready only once the app can log in: roles and database exist.
                        status.ready = view.accepting
                            && !view.in_recovery
                            && self.role == InstanceRole::Primary
                            && self.roles_ready;
                        status.current_lsn = view.current_lsn;
                        status.primary_pod = Some(self.settings.pod.clone());
                        status.streaming_replicas = view.streaming_replicas.clone();
                    }
                    ServerMode::Standby { primary } => {
                        status.ready = view.accepting
                            && view.in_recovery
                            && self.role == InstanceRole::Replica;
                        status.received_lsn = view.received_lsn;
                        status.replayed_lsn = view.replayed_lsn;
                        status.lag_seconds = view.lag_seconds;
                        status.primary_pod = primary.as_ref().map(|upstream| upstream.pod.clone());
                        if let Some(upstream) = primary.clone() {
                            self.primary_lsn = self.primary_position(&upstream.pod).await;
                            status.lag_bytes = match (self.primary_lsn, self.observed.replayed_lsn)
                            {
                                (Some(primary), Some(replayed)) => {
                                    Some(primary.saturating_sub(replayed))
                                }
                                _ => None,
                            };
                        }
                    }
                }
                if status.ready {
                    // Working in its role again: what went wrong before is history (a re-clone
                    // stays visible in lastRecloneReason).
                    self.problem = None;
                }
            }
            None => {
                self.observed = LocalView::default();
                // pg_controldata only reads pg_control, so it is safe on a refused directory
                // too, as long as the version matches (another version's layout differs).
                if status.data_major_version == Some(self.binaries.major())
                    && let Ok(control) = self.data.control_data(&self.binaries).await
                {
                    status.system_identifier = Some(control.system_identifier);
                    status.timeline = Some(control.timeline);
                    status.current_lsn = Some(control.checkpoint_lsn);
                }
            }
        }
        status.problem = self.problem.clone();
        let up = self.observed.accepting;
        self.report.publish(status, up);
    }

    async fn primary_position(&mut self, pod: &str) -> Option<u64> {
        let rows = self
            .peer(pod)
            .query(
                "read the primary's position",
                "SELECT CASE WHEN pg_is_in_recovery() THEN NULL \
                 ELSE pg_current_wal_lsn()::text END",
                &[],
            )
            .await
            .ok()?;
        rows.first()
            .and_then(|row| row.get::<_, Option<String>>(0))
            .and_then(|text| parse_lsn(&text))
    }

    async fn observe_local(&mut self) -> LocalView {
        let rows = self
            .local
            .query(
                "observe the server",
                "SELECT pg_is_in_recovery(), \
                   CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
                   pg_last_wal_receive_lsn()::text, \
                   pg_last_wal_replay_lsn()::text, \
                   CASE WHEN NOT pg_is_in_recovery() THEN NULL \
                        WHEN pg_last_wal_receive_lsn() IS NOT NULL \
                             AND pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0::float8 \
                        ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END, \
                   CASE WHEN pg_is_in_recovery() \
                        THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), \
                                      (SELECT timeline_id FROM pg_control_checkpoint())) \
                        ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
                   coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false), \
                   (SELECT system_identifier::text FROM pg_control_system()), \
                   ARRAY(SELECT application_name::text FROM pg_stat_replication \
                         WHERE state = 'streaming' ORDER BY 1)",
                &[],
            )
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                tracing::debug!(%error, "the local server does not answer");
                return LocalView::default();
            }
        };
        let Some(row) = rows.first() else {
            return LocalView::default();
        };
        let lsn = |index: usize| {
            row.get::<_, Option<String>>(index)
                .and_then(|text| parse_lsn(&text))
        };
        LocalView {
            accepting: true,
            in_recovery: row.get(0),
            current_lsn: lsn(1),
            received_lsn: lsn(2),
            replayed_lsn: lsn(3),
            lag_seconds: row.get::<_, Option<f64>>(4).map(|seconds| seconds.max(0.0)),
            timeline: row
                .get::<_, Option<i32>>(5)
                .and_then(|timeline| u32::try_from(timeline).ok()),
            receiver_streaming: row.get(6),
            system_identifier: row.get(7),
            streaming_replicas: row.get(8),
        }
    }
}
