//! The identity the metrics APIs keep per-ScaledApp state under (pod scrapes, queue readings).
//! Its own file because both readers and the source that owns them use it.

use kube::ResourceExt;

use crate::crd::ScaledApp;

/// One ScaledApp, by identity: a ScaledApp deleted and created again under the same name starts
/// with fresh state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AppKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

impl AppKey {
    /// The key of `app`.
    pub fn of(app: &ScaledApp) -> AppKey {
        AppKey {
            namespace: app.namespace().unwrap_or_default(),
            name: app.name_any(),
            uid: app.uid().unwrap_or_default(),
        }
    }
}
