//! The ScaledApp operator. One reconcile is a pipeline whose middle is pure:
//!
//! read (the ScaledApp) -> [`validate`] (spec -> `ValidatedApp`) -> observe (the only reads:
//! the live children, [`postgres::observe`] for the Postgres pods and their instance managers)
//! -> [`render`] (-> `Children<Rendered>`, every child typed), [`postgres::decide`] (-> the
//! `Topology`: each shard's primary, failovers, pod labels and replacements) and
//! [`session_rotation::decide`] (the session secret's rotation step) -> [`apply`] (one
//! applier, server-side apply in a fixed order, the pod changes, prune the rest ->
//! `Children<Applied>`) -> [`status`] (computed from the outcome, one status patch when
//! something changed) -> [`events`]. [`children`] is the one child set the stages hand on;
//! [`kinds`] is the one table of child kinds; [`names`] the one leaf of names and labels.
//! [`reconcile`] drives it; [`controller`] wires it to watches; [`run`] adds leader election,
//! probes and shutdown. Beside it, on every replica, [`metrics_api`] serves the HPAs the custom
//! and external metrics they scale on (requests/s and p95 per app pod, queue backlog per
//! ScaledApp and queue).

pub mod annotation_request;
pub mod api_docs;
pub mod apply;
pub mod children;
pub mod context;
pub mod controller;
pub mod crd;
pub mod events;
pub mod kinds;
pub mod metrics;
pub mod metrics_api;
pub mod names;
pub mod postgres;
pub mod reconcile;
pub mod redis;
pub mod render;
pub mod rotate;
pub mod run;
pub mod server;
pub mod session_rotation;
pub mod shards;
pub mod status;
pub mod status_view;
pub mod switchover;
pub mod validate;

#[cfg(test)]
mod fake_api;
#[cfg(test)]
mod test_support;
