//! The replica side: a running standby follows the primary the record names (retargeting, or
//! discarding its data when it cannot follow), and a stopped one gets its data from the
//! primary (clone, or rewind of a former primary).

use std::time::{Duration, Instant};

use scaled_contract::error_chain;
use scaled_contract::instance::{InstanceProblem, InstanceRole, REASON_RECLONED};

use crate::{
    conf::{ServerMode, Upstream},
    datadir,
    record::Record,
    replication::{self, Progress, Source},
    slots,
};

use super::action::{Action, ManagerError};
use super::{LocalView, Manager, SLOT_INTERVAL, STOP_PATIENCE};

impl Manager {
    pub(super) async fn as_standby(
        &mut self,
        record: Record,
        upstream: Option<Upstream>,
    ) -> Result<Action, ManagerError> {
        let primary = match record {
            Record::Named { pod, .. } if pod == self.settings.pod => return self.promote().await,
            Record::Named { pod, .. } => pod,
            Record::NotChosen | Record::Unknown(_) | Record::Unconfirmed(_) => {
                return Ok(Action::Waiting(match &upstream {
                    Some(upstream) => format!(
                        "the primary record names nobody or cannot be read; still following {}",
                        upstream.pod
                    ),
                    None => "the primary record names nobody or cannot be read".to_string(),
                }));
            }
        };
        if upstream.as_ref().map(|upstream| upstream.pod.as_str()) != Some(primary.as_str()) {
            return self.retarget(primary);
        }
        if Instant::now() >= self.next_slot_pass && self.observed.accepting {
            // A rewound former primary still has its old slots; they would pin WAL forever.
            self.next_slot_pass = Instant::now() + SLOT_INTERVAL;
            let (stateful_set, _) = self.settings.stateful_set();
            let existing = slots::existing(&mut self.local).await?;
            let plan = slots::plan(stateful_set, &Default::default(), &existing);
            if !plan.is_empty() {
                slots::apply(&mut self.local, &plan).await?;
                return Ok(Action::SlotsChanged(plan));
            }
        }
        self.check_following(&primary).await
    }

    async fn check_following(&mut self, primary: &str) -> Result<Action, ManagerError> {
        let now = Instant::now();
        self.progress.observe(
            now,
            self.observed.receiver_streaming,
            self.observed.replayed_lsn,
        );
        let stalled = self.progress.stalled_for(now);
        let limit = Duration::from_secs(u64::from(self.settings.config.reclone_after_seconds));
        if stalled < limit {
            return Ok(Action::Steady);
        }
        let own_pod = self.settings.pod.clone();
        let view = match replication::ask_primary(self.peer(primary), &own_pod).await {
            Ok(view) => view,
            Err(error) => {
                return Ok(Action::Waiting(format!(
                    "not streaming for {}s, but primary {primary} does not answer either: {error}",
                    stalled.as_secs()
                )));
            }
        };
        let own_timeline = match self.observed.timeline {
            Some(timeline) => Some(timeline),
            None => self
                .data
                .control_data(&self.binaries)
                .await
                .ok()
                .map(|control| control.timeline),
        };
        match replication::cannot_follow(primary, &own_pod, own_timeline, stalled, &view) {
            None => {
                if view.streaming_to_me {
                    self.progress = Progress::new(now);
                }
                Ok(Action::Waiting(format!(
                    "not streaming for {}s; primary {primary} is not a primary yet",
                    stalled.as_secs()
                )))
            }
            Some(reason) => {
                let lost = view
                    .slot
                    .as_ref()
                    .and_then(|slot| slot.wal_status.as_deref())
                    == Some("lost");
                let action = self.discard_for_reclone(reason).await?;
                if lost
                    && let Err(error) =
                        replication::drop_lost_slot(self.peer(primary), &own_pod).await
                {
                    tracing::warn!(%error, "could not drop the invalidated slot; the next clone waits for it");
                }
                Ok(action)
            }
        }
    }

    async fn discard_for_reclone(&mut self, reason: String) -> Result<Action, ManagerError> {
        tracing::warn!(%reason, "this replica cannot follow; discarding its data to clone again");
        // Forgotten only once stopped: a SIGTERM meanwhile finds it and waits for it.
        if let Some(server) = &self.server {
            server.stop(STOP_PATIENCE).await;
        }
        self.server = None;
        self.local.reset();
        self.observed = LocalView::default();
        self.role = InstanceRole::Pending;
        self.data.discard()?;
        self.reclones += 1;
        self.last_reclone_reason = Some(reason.clone());
        self.problem = Some(InstanceProblem {
            reason: REASON_RECLONED.to_string(),
            message: reason.clone(),
        });
        Ok(Action::Discarded { reason })
    }

    fn retarget(&mut self, primary: String) -> Result<Action, ManagerError> {
        let mode = ServerMode::Standby {
            primary: Some(self.upstream(&primary)),
        };
        self.write_settings(&mode)?;
        let server = self
            .server
            .as_mut()
            .expect("retarget is only called with a running standby");
        // primary_conninfo and primary_slot_name are reloadable since Postgres 13.
        server.reload()?;
        server.set_mode(mode);
        self.progress = Progress::new(Instant::now());
        self.role = InstanceRole::Replica;
        Ok(Action::Retargeted { primary })
    }

    pub(super) async fn clone_from(&mut self, primary: &str) -> Result<Action, ManagerError> {
        self.role = InstanceRole::Pending;
        let own_pod = self.settings.pod.clone();
        let slot = scaled_contract::instance::slot_name(&own_pod);
        let view = match replication::ask_primary(self.peer(primary), &own_pod).await {
            Ok(view) => view,
            Err(error) => {
                return Ok(Action::Waiting(format!(
                    "waiting for primary {primary} to answer before cloning it: {error}"
                )));
            }
        };
        if view.in_recovery {
            return Ok(Action::Waiting(format!(
                "waiting for {primary} to finish becoming primary before cloning it"
            )));
        }
        match view.slot {
            None => {
                return Ok(Action::Waiting(format!(
                    "waiting for primary {primary} to create replication slot {slot}"
                )));
            }
            Some(state) if state.wal_status.as_deref() == Some("lost") => {
                replication::drop_lost_slot(self.peer(primary), &own_pod).await?;
                return Ok(Action::Waiting(format!(
                    "dropped the invalidated slot {slot} on {primary}; waiting for a fresh one"
                )));
            }
            Some(_) => {}
        }
        self.role = InstanceRole::Cloning;
        self.publish_role();
        self.data.remove_scratch(datadir::Scratch::Initdb)?;
        self.data.remove_scratch(datadir::Scratch::Discard)?;
        let address = self.settings.peer_address(primary);
        let result = replication::clone(
            &self.binaries,
            &self.data,
            &Source {
                pod: primary,
                address: &address,
                user: &self.settings.config.replication_user,
                password: &self.settings.passwords.replication,
            },
            &own_pod,
            self.settings.config.clone_max_rate_kib_per_second,
        )
        .await;
        self.role = InstanceRole::Pending;
        result?;
        Ok(Action::Cloned {
            primary: primary.to_string(),
        })
    }

    pub(super) async fn rewind_from(&mut self, primary: &str) -> Result<Action, ManagerError> {
        self.role = if self.fenced {
            InstanceRole::Fenced
        } else {
            InstanceRole::Pending
        };
        let own_pod = self.settings.pod.clone();
        match replication::ask_primary(self.peer(primary), &own_pod).await {
            Ok(view) if !view.in_recovery => {}
            Ok(_) => {
                return Ok(Action::Waiting(format!(
                    "waiting for {primary} to finish becoming primary before rewinding from it"
                )));
            }
            Err(error) => {
                return Ok(Action::Waiting(format!(
                    "this data was a primary; waiting for primary {primary} to answer to rewind \
                     from it: {error}"
                )));
            }
        }
        tracing::info!(%primary, "this data was a primary and another pod is named; rewinding");
        let address = self.settings.peer_address(primary);
        let result = replication::rewind(
            &self.binaries,
            &self.data,
            &Source {
                pod: primary,
                address: &address,
                user: &self.settings.config.replication_user,
                password: &self.settings.passwords.replication,
            },
            &own_pod,
        )
        .await;
        match result {
            Ok(()) => {
                self.fenced = false;
                Ok(Action::Rewound {
                    primary: primary.to_string(),
                })
            }
            Err(error) => {
                self.discard_for_reclone(format!(
                    "pg_rewind from {primary} failed, so the data is cloned again: {}",
                    error_chain(&error)
                ))
                .await
            }
        }
    }
}
