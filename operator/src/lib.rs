//! The ScaledApp operator. One reconcile is a pipeline whose middle is pure:
//!
//! read (the ScaledApp) -> [`validate`] (spec -> `ValidatedApp`) -> [`render`] (->
//! `Children<Rendered>`, every child typed) -> [`apply`] (server-side apply in a fixed order,
//! prune the rest -> `Children<Applied>`) -> [`status`] (conditions read off the applied
//! children, one status patch when something changed). [`children`] is the one child set the
//! stages hand on; [`kinds`] is the one table of child kinds. [`reconcile`] drives it;
//! [`controller`] wires it to watches; [`run`] adds leader election, probes and shutdown.
//! Beside it, on every replica, [`metrics_api`] serves the HPAs the custom and external metrics
//! they scale on (requests/s and p95 per app pod, queue backlog per ScaledApp and queue).

pub mod api_docs;
pub mod apply;
pub mod children;
pub mod context;
pub mod controller;
pub mod crd;
pub mod instances;
pub mod kinds;
pub mod metrics;
pub mod metrics_api;
pub mod names;
pub mod reconcile;
pub mod render;
pub mod run;
pub mod server;
pub mod shards;
pub mod status;
pub mod status_view;
pub mod switchover;
pub mod validate;

#[cfg(test)]
mod fake_api;
#[cfg(test)]
mod test_support;
