//! The primary side: a running primary keeps its roles and slots while the record names it and
//! is fenced once it does not; a standby the record names is promoted.

use std::time::{Duration, Instant};

use scaled_contract::instance::{InstanceProblem, InstanceRole};

use crate::{bootstrap, conf::ServerMode, record::Record, slots};

use super::action::{Action, ManagerError, PROMOTE_WAIT_SECONDS};
use super::{LocalView, Manager, SLOT_INTERVAL, STOP_PATIENCE};

/// How long a named standby waits for the old primary to stop streaming before promoting.
const LAST_WAL_PATIENCE: Duration = Duration::from_secs(15);

impl Manager {
    pub(super) async fn as_primary(&mut self, record: Record) -> Result<Action, ManagerError> {
        match record {
            Record::Named { pod, .. } if pod == self.settings.pod => {}
            Record::Named { pod: other, .. } => {
                return self
                    .fence(format!("the primary record names {other}, not this pod"))
                    .await;
            }
            Record::NotChosen | Record::Unknown(_) | Record::Unconfirmed(_) => {
                let why = match &record {
                    Record::Unknown(why) | Record::Unconfirmed(why) => why.clone(),
                    _ => "the record names no primary".to_string(),
                };
                let limit =
                    Duration::from_secs(u64::from(self.settings.config.fence_after_seconds));
                let unconfirmed = self
                    .last_confirmed
                    .map_or(Duration::MAX, |confirmed| confirmed.elapsed());
                if unconfirmed >= limit {
                    return self
                        .fence(format!(
                            "the primary record has not confirmed this pod for \
                             fenceAfterSeconds ({}s): {why}",
                            limit.as_secs()
                        ))
                        .await;
                }
                return Ok(Action::Waiting(format!(
                    "cannot confirm the primary record ({why}); fencing in {}s",
                    (limit - unconfirmed).as_secs()
                )));
            }
        }
        if !self.observed.accepting {
            return Ok(Action::Waiting(
                "postgres is starting as primary".to_string(),
            ));
        }
        if !self.roles_ready {
            bootstrap::ensure_roles_and_database(
                &mut self.local,
                &self.settings.config,
                &self.settings.passwords,
            )
            .await?;
            self.roles_ready = true;
            return Ok(Action::RolesReady);
        }
        if Instant::now() >= self.next_slot_pass {
            self.next_slot_pass = Instant::now() + SLOT_INTERVAL;
            let (stateful_set, ordinal) = self.settings.stateful_set();
            let desired =
                slots::desired_slots(stateful_set, ordinal, self.settings.config.instances);
            let existing = slots::existing(&mut self.local).await?;
            let plan = slots::plan(stateful_set, &desired, &existing);
            if !plan.is_empty() {
                slots::apply(&mut self.local, &plan).await?;
                return Ok(Action::SlotsChanged(plan));
            }
        }
        Ok(Action::Steady)
    }

    pub(super) async fn promote(&mut self) -> Result<Action, ManagerError> {
        if !self.observed.accepting {
            return Ok(Action::Waiting(
                "named primary; waiting for the standby to accept connections to promote it"
                    .to_string(),
            ));
        }
        // In a planned switchover the old primary is shutting down and sends its last WAL on
        // the way out; promoting before the WAL receiver has it would leave those commits behind
        // on the old timeline. After a crash the receiver has already stopped, so this costs a
        // failover nothing. A primary that keeps streaming for long is not letting go (it may
        // not see the record): promote anyway, it fences itself.
        let named_since = *self.named_since.get_or_insert_with(Instant::now);
        if self.observed.receiver_streaming && named_since.elapsed() < LAST_WAL_PATIENCE {
            return Ok(Action::Waiting(
                "named primary; waiting for the old primary's last WAL before promoting".into(),
            ));
        }
        self.named_since = None;
        self.role = InstanceRole::Promoting;
        self.publish_role();
        tracing::info!("the primary record names this standby; promoting");
        let rows = self
            .local
            .query_within(
                "promote",
                "SELECT pg_promote(true, $1)",
                &[&PROMOTE_WAIT_SECONDS],
                Duration::from_secs(PROMOTE_WAIT_SECONDS as u64 + 10),
            )
            .await?;
        if !rows.first().is_some_and(|row| row.get::<_, bool>(0)) {
            return Err(ManagerError::Promote);
        }
        // Promotion only requests the end-of-recovery checkpoint; until it completes,
        // pg_control still shows the old timeline, and a pg_rewind against this server would
        // wrongly find "no rewind required". So wait for one before saying we are primary.
        self.local
            .query_within(
                "checkpoint after promotion",
                "CHECKPOINT",
                &[],
                Duration::from_secs(300),
            )
            .await?;
        self.write_settings(&ServerMode::Primary)?;
        let server = self
            .server
            .as_mut()
            .expect("promote is only called with a running standby");
        server.reload()?;
        server.set_mode(ServerMode::Primary);
        self.role = InstanceRole::Primary;
        self.fenced = false;
        self.roles_ready = false;
        self.next_slot_pass = Instant::now();
        self.refresh().await;
        Ok(Action::Promoted {
            timeline: self.observed.timeline,
        })
    }

    async fn fence(&mut self, reason: String) -> Result<Action, ManagerError> {
        tracing::warn!(%reason, "fencing: fast shutdown of the primary");
        self.role = InstanceRole::Fenced;
        self.publish_role();
        if let Some(server) = &self.server {
            let exit = server.stop(STOP_PATIENCE).await;
            if !exit.is_clean() {
                tracing::warn!(%exit, "the fenced postgres did not stop cleanly");
            }
        }
        self.server = None;
        self.local.reset();
        self.observed = LocalView::default();
        self.fenced = true;
        self.roles_ready = false;
        self.problem = Some(InstanceProblem {
            reason: "Fenced".to_string(),
            message: reason.clone(),
        });
        Ok(Action::Fenced { reason })
    }
}
