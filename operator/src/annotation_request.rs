//! A user's one-off request carried in an annotation on the ScaledApp (a switchover or a
//! session-secret rotation, written by `scaledapp-operator switchover` / `rotate-session-secret`):
//! a JSON object with a unique `id`, acted on once per id, the id acted on last being recorded in
//! status by the stage that owns the request. The operator's side is [`pending`]; the commands'
//! side is [`fresh_id`], [`annotate`] and [`read`].

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use rand::distr::{Alphanumeric, SampleString};
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

/// Failures of a command writing a request or reading how it goes.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Writing the request failed.
    #[error("failed to annotate ScaledApp {namespace}/{name}: {source}")]
    Annotate {
        /// Namespace.
        namespace: String,
        /// ScaledApp.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Reading the ScaledApp failed.
    #[error("failed to read ScaledApp {namespace}/{name}: {source}")]
    Read {
        /// Namespace.
        namespace: String,
        /// ScaledApp.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

/// A request id nobody used before, `<kind>-<10 random characters>`.
pub fn fresh_id(kind: &str) -> String {
    format!(
        "{kind}-{}",
        Alphanumeric
            .sample_string(&mut rand::rng(), 10)
            .to_lowercase()
    )
}

/// Writes `request` into `annotation` on the ScaledApp.
pub async fn annotate(
    apps: &Api<ScaledApp>,
    namespace: &str,
    name: &str,
    annotation: &str,
    request: &impl serde::Serialize,
) -> Result<(), RequestError> {
    let value = serde_json::to_string(request).expect("a request serialises");
    let patch = serde_json::json!({"metadata": {"annotations": {annotation: value}}});
    apps.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| RequestError::Annotate {
            namespace: namespace.to_string(),
            name: name.to_string(),
            source,
        })?;
    Ok(())
}

/// The ScaledApp as the API holds it now.
pub async fn read(
    apps: &Api<ScaledApp>,
    namespace: &str,
    name: &str,
) -> Result<ScaledApp, RequestError> {
    apps.get(name).await.map_err(|source| RequestError::Read {
        namespace: namespace.to_string(),
        name: name.to_string(),
        source,
    })
}
