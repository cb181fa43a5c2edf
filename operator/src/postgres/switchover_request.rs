//! A user's request to move a shard's primary: the [`SWITCHOVER_ANNOTATION`] on the ScaledApp
//! (written by `scaledapp-operator switchover`), acted on once per id.

use kube::ResourceExt;

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

/// Annotation on a ScaledApp asking for a switchover (set by `scaledapp-operator switchover`).
pub const SWITCHOVER_ANNOTATION: &str = "scaled.dev/switchover";

/// The switchover asked for in the annotation, unless it was acted on already
/// (`status.lastSwitchoverRequest`); a request that cannot be read comes back as
/// `Err((id, why))`, so it is refused once, with the reason.
pub fn pending_switchover(app: &ScaledApp) -> Option<Result<SwitchoverRequest, (String, String)>> {
    let raw = app.annotations().get(SWITCHOVER_ANNOTATION)?;
    let request = serde_json::from_str::<SwitchoverRequest>(raw).map_err(|error| {
        (
            raw.chars().take(64).collect::<String>(),
            format!(
                "the {SWITCHOVER_ANNOTATION} annotation is not a request ({error}); use \
                 `scaledapp-operator switchover`"
            ),
        )
    });
    let id = match &request {
        Ok(request) => request.id.clone(),
        Err((id, _)) => id.clone(),
    };
    let done = app
        .status
        .as_ref()
        .and_then(|status| status.last_switchover_request.as_deref());
    (done != Some(id.as_str())).then_some(request)
}
