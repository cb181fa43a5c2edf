//! A user's one-off request carried in an annotation on the ScaledApp (a switchover, written by
//! `scaledapp-operator switchover`): a JSON object with a unique `id`, acted on once per id, the
//! id acted on last being recorded in status by the stage that owns the request.

use kube::ResourceExt;
use serde::de::DeserializeOwned;

use crate::crd::ScaledApp;

/// A request that names itself.
pub trait Request: DeserializeOwned {
    /// Unique per request.
    fn id(&self) -> &str;
}

/// The request in `annotation`, unless its id is `done` (acted on already). One that cannot be
/// read comes back as `Err((id, why))`, its "id" the annotation's first 64 characters, so it is
/// refused once, with the reason and `how` (the command that writes a valid one).
pub fn pending<R: Request>(
    app: &ScaledApp,
    annotation: &str,
    done: Option<&str>,
    how: &str,
) -> Option<Result<R, (String, String)>> {
    let raw = app.annotations().get(annotation)?;
    let request = serde_json::from_str::<R>(raw).map_err(|error| {
        (
            raw.chars().take(64).collect::<String>(),
            format!("the {annotation} annotation is not a request ({error}); use `{how}`"),
        )
    });
    let id = match &request {
        Ok(request) => request.id().to_string(),
        Err((id, _)) => id.clone(),
    };
    (done != Some(id.as_str())).then_some(request)
}
