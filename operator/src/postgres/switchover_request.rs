//! A user's request to move a shard's primary: the [`SWITCHOVER_ANNOTATION`] on the ScaledApp
//! (written by `scaledapp-operator switchover`), acted on once per id.

use crate::annotation_request::{Request, pending};
use crate::crd::ScaledApp;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SwitchoverRequest {
    /// Shard.
    pub shard: u32,
    /// Pod to promote; the most caught-up ready replica when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Unique per request, so each one is acted on once.
    pub id: String,
}

impl Request for SwitchoverRequest {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Annotation on a ScaledApp asking for a switchover (set by `scaledapp-operator switchover`).
pub const SWITCHOVER_ANNOTATION: &str = "scaled.dev/switchover";

/// The switchover asked for in the annotation, unless it was acted on already
/// (`status.lastSwitchoverRequest`); a request that cannot be read comes back as
/// `Err((id, why))`, so it is refused once, with the reason.
pub fn pending_switchover(app: &ScaledApp) -> Option<Result<SwitchoverRequest, (String, String)>> {
    let done = app
        .status
        .as_ref()
        .and_then(|status| status.last_switchover_request.as_deref());
    pending(
        app,
        SWITCHOVER_ANNOTATION,
        done,
        "scaledapp-operator switchover",
    )
}
