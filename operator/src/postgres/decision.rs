//! The vocabulary of the Postgres decision: what [`decide`](super::decide) takes
//! ([`Inputs`]) and gives ([`Topology`], a [`ShardDecision`] per shard, [`News`]). A leaf of
//! the stage: the decision and the primary moves both speak it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::children::PodChanges;
use crate::crd::{FailoverStatus, InstanceSummary, PrimaryUnhealthy, ScaledAppStatus};
use crate::validate::ValidatedApp;

use super::switchover_request::SwitchoverRequest;

/// What the Postgres stage decided this pass, for every shard.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Topology {
    /// Per shard, in shard order.
    pub shards: Vec<ShardDecision>,
    /// The switchover request acted on (or refused) this pass, to record in status so it is
    /// acted on once.
    pub switchover_handled: Option<String>,
    /// What happened this pass that deserves an Event, shards' news included.
    pub news: Vec<News>,
}

impl Topology {
    /// The pod writes the applier makes for this decision: role labels, then replacements.
    pub fn pod_changes(&self) -> PodChanges {
        PodChanges {
            relabel: self
                .shards
                .iter()
                .flat_map(|shard| shard.relabel.iter().cloned())
                .collect(),
            replace: self
                .shards
                .iter()
                .flat_map(|shard| shard.replace.iter().cloned())
                .collect(),
        }
    }

    /// Each shard's failover clock, to remember until the next pass.
    pub fn clocks(&self) -> BTreeMap<u32, PrimaryUnhealthy> {
        self.shards
            .iter()
            .filter_map(|shard| Some((shard.index, shard.clock.clone()?)))
            .collect()
    }
}

/// What the operator decided for one shard.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardDecision {
    /// Shard number.
    pub index: u32,
    /// The primary, once chosen.
    pub primary_pod: Option<String>,
    /// The uid of the primary's pod object, as confirmed (see `ShardStatus::primary_pod_uid`).
    pub primary_pod_uid: Option<String>,
    /// Why no primary is chosen yet.
    pub waiting: Option<String>,
    /// What is wrong with the primary, while something is.
    pub primary_health: Option<String>,
    /// The primary is unhealthy and a replica could take over: a failover is due once the
    /// delay has passed, so time alone changes the decision.
    pub failover_due: bool,
    /// The primary's timeline, as it reports it.
    pub timeline: Option<u32>,
    /// A failover or switchover in progress.
    pub failover: Option<FailoverStatus>,
    /// The last completed one.
    pub last_failover: Option<FailoverStatus>,
    /// Every pod as its instance manager reports it.
    pub instances: Vec<InstanceSummary>,
    /// Pods whose role label must change, with the new value.
    pub relabel: Vec<(String, &'static str)>,
    /// What happened this pass that deserves an Event.
    pub news: Vec<News>,
    /// The switchover request acted on (or refused) this pass.
    pub handled_switchover: Option<String>,
    /// Pods to delete so the StatefulSet recreates them from its new template.
    pub replace: Vec<String>,
    /// The failover clock while the primary looks unhealthy ([`clock::advance`]).
    pub clock: Option<PrimaryUnhealthy>,
}

/// Something a pass decided that users should hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct News {
    /// Whether it is a Warning (else Normal).
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// What happened, naming the pods.
    pub note: String,
}

#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// The ScaledApp.
    pub app: &'a ValidatedApp,
    /// Its status before this pass (the primary record lives there).
    pub current: Option<&'a ScaledAppStatus>,
    /// While paused nothing is chosen, promoted or relabelled.
    pub paused: bool,
    /// Now.
    pub now: &'a Time,
    /// Each shard's failover clock from the last pass ([`clock::Clocks::previous`]).
    pub clocks: &'a BTreeMap<u32, PrimaryUnhealthy>,
    /// A switchover asked for and not yet acted on; `Err((id, why))` when the annotation could
    /// not be read.
    pub switchover: Option<&'a Result<SwitchoverRequest, (String, String)>>,
}

/// A promoted replica has this long, beyond the failover delay, to report itself primary before
/// it is given up on.
pub(super) const PROMOTION_GRACE: Duration = Duration::from_secs(60);

/// Pods per shard: the primary and its replicas.
pub(super) fn pods_per_shard(app: &ValidatedApp) -> u32 {
    app.pods_per_shard
}
