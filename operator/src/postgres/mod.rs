//! The Postgres stage of a reconcile: which pod of each shard is the primary, and what the
//! operator does about it. It runs inside the one pipeline, in its three parts:
//!
//! - [`read`] (I/O, reads only): every Postgres pod of the ScaledApp, its volume claims, and
//!   what each instance manager reports at `/status`, as [`ShardObservation`]s.
//! - [`decide`] (pure): from the observations, the status before this pass and the failover
//!   clocks, a [`Topology`]: the primary of each shard, the labels to move, the pods to replace,
//!   the failovers and switchovers that start or complete, each with its reason.
//! - The applier writes what the topology asks ([`Topology::pod_changes`]), with every other
//!   write of the pass; status records the primary and the clocks; Events tell the news.
//!
//! The decision is the operator's alone and is recorded in one place, the ScaledApp's
//! `status.shards[].primaryPod`, which the instance managers obey.

mod clock;
mod decide;
mod decision;
mod health;
mod observation;
mod observe;
mod promote;
mod switchover_request;

#[cfg(test)]
mod tests;

pub use clock::{Clocks, advance};
pub use decide::decide;
pub use decision::{Inputs, News, ShardDecision, Topology};
pub use health::{Health, primary_health};
pub use observation::{PodObservation, ShardObservation, ShardSet};
pub use observe::{ObserveError, Reads, read, shards};
pub use switchover_request::{SWITCHOVER_ANNOTATION, SwitchoverRequest, pending_switchover};
