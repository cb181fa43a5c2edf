//! The ScaledApp operator. One reconcile is a pipeline whose middle is pure:
//!
//! read (the ScaledApp) -> [`validate`] (spec -> `ValidatedApp`) -> [`render`] (-> every child,
//! typed) -> [`apply`] (server-side apply in a fixed order, prune the rest) -> [`status`]
//! (conditions from what the children report, one status patch when something changed).

pub mod crd;
pub mod render;
pub mod shards;
pub mod validate;

#[cfg(test)]
mod test_support;
