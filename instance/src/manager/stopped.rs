//! Postgres is not running: what the data directory holds and what the record says decide
//! whether to initialise, start, clone or rewind.

use std::time::Instant;

use scaled_contract::instance::InstanceRole;

use crate::{
    bootstrap,
    conf::ServerMode,
    datadir::{self, DataState},
    record::Record,
    replication::Progress,
    server::Server,
};

use super::action::{Action, ManagerError};
use super::{LocalView, Manager};

impl Manager {
    pub(super) async fn while_stopped(&mut self, record: Record) -> Result<Action, ManagerError> {
        let state = self.data.inspect(self.binaries.major())?;
        if let DataState::Refused(problem) = state {
            self.role = InstanceRole::Refused;
            let message = problem.message.clone();
            self.problem = Some(problem);
            return Ok(Action::Refused(message));
        }
        if self.role == InstanceRole::Refused {
            // The directory was fixed by hand; whatever the problem was is gone.
            self.problem = None;
        }
        let own = self.settings.pod.clone();
        let primary = match record {
            Record::Named { pod, .. } => pod,
            Record::NotChosen | Record::Unknown(_) | Record::Unconfirmed(_) => {
                self.role = if self.fenced {
                    InstanceRole::Fenced
                } else {
                    InstanceRole::Pending
                };
                return Ok(Action::Waiting(match record {
                    Record::Unknown(why) => format!("cannot read the primary record: {why}"),
                    Record::Unconfirmed(why) => why,
                    _ => "no primary is named yet".to_string(),
                }));
            }
        };
        if primary == own {
            return match state {
                DataState::Empty => {
                    self.role = InstanceRole::Pending;
                    self.data.remove_scratch(datadir::Scratch::Clone)?;
                    bootstrap::initdb(
                        &self.binaries,
                        &self.data,
                        &self.settings.passwords.superuser,
                    )
                    .await?;
                    Ok(Action::Initialised)
                }
                // Promote rather than start it read-write: promotion switches to a new
                // timeline, which pg_rewind needs to tell the histories apart.
                DataState::Ours { standby: true } => {
                    self.start(ServerMode::Standby { primary: None })
                }
                DataState::Ours { standby: false } => self.start(ServerMode::Primary),
                DataState::Refused(_) => unreachable!("handled above"),
            };
        }
        match state {
            DataState::Empty => self.clone_from(&primary).await,
            DataState::Ours { standby: true } => self.start(ServerMode::Standby {
                primary: Some(self.upstream(&primary)),
            }),
            DataState::Ours { standby: false } => self.rewind_from(&primary).await,
            DataState::Refused(_) => unreachable!("handled above"),
        }
    }

    fn start(&mut self, mode: ServerMode) -> Result<Action, ManagerError> {
        self.write_settings(&mode)?;
        self.data
            .set_standby(matches!(mode, ServerMode::Standby { .. }))?;
        let server = Server::start(&self.binaries, &self.data, mode.clone())?;
        self.server = Some(server);
        self.local.reset();
        self.observed = LocalView::default();
        self.roles_ready = false;
        self.next_slot_pass = Instant::now();
        self.progress = Progress::new(Instant::now());
        Ok(match mode {
            ServerMode::Primary => {
                self.role = InstanceRole::Primary;
                self.fenced = false;
                Action::StartedPrimary
            }
            ServerMode::Standby { primary } => {
                self.role = InstanceRole::Replica;
                Action::StartedStandby {
                    primary: primary.map(|upstream| upstream.pod),
                }
            }
        })
    }
}
