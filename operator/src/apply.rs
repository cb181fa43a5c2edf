//! Apply: make the cluster match the rendered [`Children`] with server-side apply under one field
//! manager, in apply order, then prune children that are no longer rendered; or, while paused,
//! only read them.
//!
//! A reconcile that finds nothing to change writes nothing. Every child carries a hash of what
//! was last applied ([`APPLIED_HASH_ANNOTATION`]); an object is re-applied only when that hash
//! differs from the rendered one, or when its `managedFields` entry for our manager differs from
//! the one recorded right after our last apply. The second check catches hand edits: a field
//! another manager took over, or a field someone removed, leaves our entry changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::{Future, ready};
use std::sync::Mutex;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use rand::distr::{Alphanumeric, SampleString};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::children::{
    Applied, Children, Live, LiveObject, PodChanges, Rendered, SecretTemplate, Step,
};
use crate::kinds::{Child, Inventory, Shelving, manifest};
use crate::metrics::Metrics;
use crate::names::{
    APPLIED_HASH_ANNOTATION, MANAGED_BY_LABEL, MANAGER, ROLE_LABEL, SCALEDAPP_NAME_LABEL,
    SESSION_SECRET_ROTATION_ANNOTATION,
};
use crate::session_rotation::{OutOfStep, Rotated, rotated};

/// Failures talking to the API server; all transient from the reconciler's point of view.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Listing existing children failed.
    #[error("failed to list {kind} children of ScaledApp {namespace}/{name}: {source}")]
    List {
        /// Kind listed.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// ScaledApp name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Server-side apply of one child failed.
    #[error("failed to apply {kind} {namespace}/{name}: {source}")]
    Apply {
        /// Kind applied.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Object name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Reading or creating a generated Secret failed.
    #[error("failed to ensure Secret {namespace}/{name}: {source}")]
    Secret {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// A Secret with a generated Secret's name exists and was not generated for this ScaledApp.
    #[error(
        "Secret {namespace}/{name} already exists and was not created for ScaledApp {scaledapp} (no owner reference to it, no app.kubernetes.io/managed-by=scaledapp-operator label): the operator will not take it over; delete or rename that Secret, or rename the ScaledApp"
    )]
    SecretConflict {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// ScaledApp name.
        scaledapp: String,
    },
    /// The app Secret does not hold the step a session-secret rotation in progress goes on
    /// from: it was replaced or edited during the rotation, and the operator swaps only values
    /// it staged itself.
    #[error(
        "Secret {namespace}/{name} is not at step {expected} of its session-secret rotation (its {SESSION_SECRET_ROTATION_ANNOTATION} annotation is {found:?}): it was replaced or edited during the rotation, and the operator swaps only values it staged; to finish the rotation with the values the Secret holds now, set that annotation to {signing:?}"
    )]
    SessionSecretOutOfStep {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// The marker the rotation expected.
        expected: String,
        /// The marker that ends the rotation as it stands.
        signing: String,
        /// The marker found, if any.
        found: Option<String>,
    },
    /// Setting a Postgres pod's role label failed.
    #[error("failed to label pod {namespace}/{pod} as {role}: {source}")]
    Label {
        /// Namespace.
        namespace: String,
        /// Pod.
        pod: String,
        /// Role label value.
        role: &'static str,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Deleting a Postgres pod for a rolling update failed.
    #[error("failed to delete pod {namespace}/{pod} for the rolling update: {source}")]
    Replace {
        /// Namespace.
        namespace: String,
        /// Pod.
        pod: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// Deleting a child that is no longer rendered failed.
    #[error("failed to prune {kind} {namespace}/{name}: {source}")]
    Prune {
        /// Kind deleted.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Object name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

/// What one apply changed, as `Kind/name` per object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    /// Objects created.
    pub created: Vec<String>,
    /// Objects updated.
    pub updated: Vec<String>,
    /// Objects deleted.
    pub pruned: Vec<String>,
}

impl ApplyError {
    /// A CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            ApplyError::SecretConflict { .. } => "SecretConflict",
            ApplyError::SessionSecretOutOfStep { .. } => "SessionSecretOutOfStep",
            _ => "ApplyFailed",
        }
    }

    /// Whether only a person can resolve it (retrying will not), so the ScaledApp is not ready.
    pub fn needs_a_person(&self) -> bool {
        matches!(
            self,
            ApplyError::SecretConflict { .. } | ApplyError::SessionSecretOutOfStep { .. }
        )
    }
}

impl Changes {
    /// Whether the apply wrote anything.
    pub fn any(&self) -> bool {
        !(self.created.is_empty() && self.updated.is_empty() && self.pruned.is_empty())
    }
}

/// What we saw of an object right after applying it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AppliedRecord {
    uid: String,
    applied_hash: String,
    managed_fields_hash: String,
}

/// Memory of the last apply of each object, shared by all reconciles. Lost on restart, which
/// costs one no-op apply per object.
#[derive(Debug, Default)]
pub struct AppliedCache {
    records: Mutex<HashMap<String, AppliedRecord>>,
}

impl AppliedCache {
    fn get(&self, key: &str) -> Option<AppliedRecord> {
        self.records
            .lock()
            .expect("cache lock is never poisoned: no panics while held")
            .get(key)
            .cloned()
    }

    fn put(&self, key: String, record: AppliedRecord) {
        self.records
            .lock()
            .expect("cache lock is never poisoned: no panics while held")
            .insert(key, record);
    }

    fn forget(&self, key: &str) {
        self.records
            .lock()
            .expect("cache lock is never poisoned: no panics while held")
            .remove(key);
    }
}

/// The children of one ScaledApp and the client to change them.
pub struct Applier<'a> {
    client: Client,
    namespace: &'a str,
    app_name: &'a str,
    cache: &'a AppliedCache,
    metrics: &'a Metrics,
}

/// Hash of a rendered object, stable across runs (serde_json writes struct fields in order).
pub fn content_hash<K: Serialize>(object: &K) -> String {
    let bytes = serde_json::to_vec(object).expect("k8s-openapi types always serialise");
    hex::encode(&Sha256::digest(&bytes)[..12])
}

/// Hash of our manager's `managedFields` entry for the main resource, if any.
fn our_managed_fields_hash(meta: &kube::api::ObjectMeta) -> String {
    let ours: Vec<_> = meta
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| {
            entry.manager.as_deref() == Some(MANAGER)
                && entry.operation.as_deref() == Some("Apply")
                && entry.subresource.as_deref().unwrap_or_default().is_empty()
        })
        .map(|entry| entry.fields_v1.as_ref().map(|fields| &fields.0))
        .collect();
    content_hash(&ours)
}

impl<'a> Applier<'a> {
    /// An applier for the children of ScaledApp `app_name` in `namespace`.
    pub fn new(
        client: Client,
        namespace: &'a str,
        app_name: &'a str,
        cache: &'a AppliedCache,
        metrics: &'a Metrics,
    ) -> Self {
        Applier {
            client,
            namespace,
            app_name,
            cache,
            metrics,
        }
    }

    fn selector(&self) -> String {
        format!(
            "{SCALEDAPP_NAME_LABEL}={},{MANAGED_BY_LABEL}={MANAGER}",
            self.app_name
        )
    }

    /// This ScaledApp's children of kind `K`, by name.
    async fn list_kind<K: Child>(&self) -> Result<BTreeMap<String, K>, ApplyError> {
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        let list = api
            .list(&ListParams::default().labels(&self.selector()))
            .await
            .map_err(|source| ApplyError::List {
                kind: kind::<K>(),
                namespace: self.namespace.to_string(),
                name: self.app_name.to_string(),
                source,
            })?;
        Ok(list
            .items
            .into_iter()
            .map(|object| (object.name_any(), object))
            .collect())
    }

    /// Every child of the ScaledApp as the cluster holds it now (one LIST per kind): the
    /// pass's observation, handed back to [`Applier::apply`] or [`Applier::observe`].
    pub async fn inventory(&self) -> Result<Inventory, ApplyError> {
        Inventory::list(self).await
    }

    /// Ensures the Secrets, applies every rendered child, makes the pod changes, prunes the
    /// rest, and returns the children as the API server now holds them, with what changed.
    pub async fn apply(
        &self,
        rendered: &Children<Rendered>,
        pods: &PodChanges,
        inventory: Inventory,
    ) -> Result<(Children<Applied>, Changes), ApplyError> {
        let mut changes = Changes::default();
        for template in &rendered.secrets {
            self.ensure_secret(template, &mut changes).await?;
        }
        let mut step = ApplyStep {
            applier: self,
            inventory,
            changes,
        };
        let applied = rendered.map(&mut step).await?;
        let ApplyStep {
            inventory,
            mut changes,
            ..
        } = step;
        self.change_pods(pods, &mut changes).await?;
        // What is left on the shelves was not rendered this time.
        changes.pruned = inventory.prune(self).await?;
        Ok((applied, changes))
    }

    /// The children as `inventory` holds them, changing nothing (used while paused).
    pub async fn observe(
        &self,
        rendered: &Children<Rendered>,
        inventory: Inventory,
    ) -> Children<Live> {
        let mut step = ObserveStep(inventory);
        let Ok(live) = rendered.map(&mut step).await;
        live
    }

    /// Sets role labels (with server-side apply, under our one field manager, so the label is
    /// ours and nothing else of the pod is), then deletes the pods to replace.
    async fn change_pods(
        &self,
        pods: &PodChanges,
        changes: &mut Changes,
    ) -> Result<(), ApplyError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), self.namespace);
        for (pod, role) in &pods.relabel {
            let patch = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod, "labels": {ROLE_LABEL: role}},
            });
            self.metrics.record_write("Pod");
            api.patch(
                pod,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|source| ApplyError::Label {
                namespace: self.namespace.to_string(),
                pod: pod.clone(),
                role,
                source,
            })?;
            changes.updated.push(format!("Pod/{pod} ({role})"));
        }
        for pod in &pods.replace {
            self.metrics.record_write("Pod");
            match api.delete(pod, &DeleteParams::default()).await {
                Ok(_) => changes
                    .updated
                    .push(format!("Pod/{pod} (replaced for the new template)")),
                // Already gone: the StatefulSet recreates it either way.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(source) => {
                    return Err(ApplyError::Replace {
                        namespace: self.namespace.to_string(),
                        pod: pod.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    async fn apply_one<K: Child>(
        &self,
        desired: &K,
        inventory: &mut Inventory,
        changes: &mut Changes,
    ) -> Result<K, ApplyError> {
        let name = desired.name_any();
        let kind = kind::<K>();
        let key = format!("{kind}/{}/{name}", self.namespace);
        let hash = content_hash(desired);
        let existing = K::shelf(inventory).remove(&name);
        if let Some(existing) = &existing
            && self.unchanged(&key, &hash, existing)
        {
            return Ok(existing.clone());
        }

        let mut object = desired.clone();
        object
            .annotations_mut()
            .insert(APPLIED_HASH_ANNOTATION.to_string(), hash.clone());
        let manifest = manifest(&object);
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        self.metrics.record_write(kind);
        let applied = api
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&manifest),
            )
            .await
            .map_err(|source| ApplyError::Apply {
                kind,
                namespace: self.namespace.to_string(),
                name: name.clone(),
                source,
            })?;
        self.cache.put(
            key,
            AppliedRecord {
                uid: applied.uid().unwrap_or_default(),
                applied_hash: hash,
                managed_fields_hash: our_managed_fields_hash(applied.meta()),
            },
        );
        let label = format!("{kind}/{name}");
        if existing.is_some() {
            changes.updated.push(label);
        } else {
            changes.created.push(label);
        }
        Ok(applied)
    }

    fn unchanged<K: Resource>(&self, key: &str, hash: &str, live: &K) -> bool {
        let live_hash = live
            .meta()
            .annotations
            .as_ref()
            .and_then(|a| a.get(APPLIED_HASH_ANNOTATION));
        if live_hash.map(String::as_str) != Some(hash) {
            return false;
        }
        self.cache.get(key).is_some_and(|record| {
            record.applied_hash == hash
                && Some(record.uid.as_str()) == live.meta().uid.as_deref()
                && record.managed_fields_hash == our_managed_fields_hash(live.meta())
        })
    }

    /// Deletes `leftovers` this ScaledApp controls; returns `Kind/name` of each one deleted.
    async fn prune_kind<K: Child>(
        &self,
        leftovers: BTreeMap<String, K>,
    ) -> Result<Vec<String>, ApplyError> {
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        let mut pruned = Vec::new();
        for (name, object) in leftovers {
            // Only what this ScaledApp controls: a same-named app.kubernetes.io/instance label is not proof.
            let owned = object.owner_references().iter().any(|owner| {
                owner.kind == "ScaledApp"
                    && owner.controller == Some(true)
                    && owner.name == self.app_name
            });
            if !owned {
                continue;
            }
            self.metrics.record_write(kind::<K>());
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(source) => {
                    return Err(ApplyError::Prune {
                        kind: kind::<K>(),
                        namespace: self.namespace.to_string(),
                        name,
                        source,
                    });
                }
            }
            self.cache
                .forget(&format!("{}/{}/{name}", kind::<K>(), self.namespace));
            pruned.push(format!("{}/{name}", kind::<K>()));
        }
        Ok(pruned)
    }

    /// Creates a Secret with fresh random values if it does not exist; never overwrites values,
    /// but for the session secret's rotation steps ([`crate::session_rotation`]). Labels and
    /// owner references are then kept by server-side apply of the metadata alone (with the
    /// rotated keys and their marker, once a rotation wrote them).
    async fn ensure_secret(
        &self,
        template: &SecretTemplate,
        changes: &mut Changes,
    ) -> Result<(), ApplyError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), self.namespace);
        let name = template.name().to_string();
        let secret_error = |source| ApplyError::Secret {
            namespace: self.namespace.to_string(),
            name: name.clone(),
            source,
        };
        let existing = api.get_opt(&name).await.map_err(secret_error)?;
        if let Some(live) = &existing
            && !self.generated_here(live)
        {
            // Someone else's Secret under our name: taking it over would hand its values to our
            // pods, and under `dataPolicy: Delete` delete it with the ScaledApp.
            return Err(ApplyError::SecretConflict {
                namespace: self.namespace.to_string(),
                name,
                scaledapp: self.app_name.to_string(),
            });
        }
        let mut created = None;
        if existing.is_none() {
            let data: BTreeMap<String, ByteString> = template
                .keys
                .iter()
                .map(|key| (key.to_string(), generated_value()))
                .collect();
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.namespace.to_string()),
                    // Labelled from birth, so a pass interrupted before the metadata apply below
                    // still recognises the Secret as its own. Owner references are left to that
                    // apply, which can also remove them again (data policy changes).
                    labels: template.meta.labels.clone(),
                    ..Default::default()
                },
                data: Some(data),
                type_: Some("Opaque".into()),
                ..Secret::default()
            };
            self.metrics.record_write("Secret");
            match api
                .create(
                    &PostParams {
                        field_manager: Some(MANAGER.into()),
                        ..PostParams::default()
                    },
                    &secret,
                )
                .await
            {
                Ok(secret) => {
                    changes.created.push(format!("Secret/{name}"));
                    created = Some(secret);
                }
                // Another operator replica (or an earlier, interrupted pass) created it first.
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    // Read, so a rotation step is taken on the values that are there.
                    if template.rotation.is_some() {
                        created = Some(api.get(&name).await.map_err(secret_error)?);
                    }
                }
                Err(source) => return Err(secret_error(source)),
            }
        }
        let live = existing.as_ref().or(created.as_ref());
        let rotation = match (&template.rotation, live) {
            (Some(step), Some(live)) => rotated(live, step, generated_value).map_err(
                |OutOfStep {
                     expected,
                     finished,
                     found,
                 }| ApplyError::SessionSecretOutOfStep {
                    namespace: self.namespace.to_string(),
                    name: name.clone(),
                    expected,
                    signing: finished,
                    found,
                },
            )?,
            _ => None,
        };
        let mut desired = Secret {
            metadata: template.meta.clone(),
            ..Secret::default()
        };
        if let Some(Rotated { marker, data }) = &rotation {
            desired.metadata.annotations = Some(BTreeMap::from([(
                SESSION_SECRET_ROTATION_ANNOTATION.to_string(),
                marker.clone(),
            )]));
            desired.data = Some(data.clone());
        }
        let stepped = rotation
            .as_ref()
            .filter(|rotated| {
                live.is_none_or(|live| rotation_marker(live) != Some(&rotated.marker))
            })
            .map(|rotated| rotated.marker.clone());
        let rotation_matches = rotation
            .as_ref()
            .is_none_or(|rotated| live.is_some_and(|live| holds(live, rotated)));
        let live_matches = existing.as_ref().is_some_and(|live| {
            let labels_match = template
                .meta
                .labels
                .iter()
                .flatten()
                .all(|(key, value)| live.labels().get(key) == Some(value));
            let owners: BTreeSet<_> = live
                .owner_references()
                .iter()
                .map(|o| o.uid.clone())
                .collect();
            let wanted: BTreeSet<_> = template
                .meta
                .owner_references
                .iter()
                .flatten()
                .map(|o| o.uid.clone())
                .collect();
            labels_match && owners == wanted
        });
        if live_matches && rotation_matches {
            return Ok(());
        }
        let manifest = manifest(&desired);
        self.metrics.record_write("Secret");
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&manifest),
        )
        .await
        .map_err(secret_error)?;
        if let Some(marker) = stepped {
            // The marker only: the values are never in Events or logs.
            changes.updated.push(format!(
                "Secret/{name} (session secret at rotation step {marker})"
            ));
        }
        Ok(())
    }
}

/// The session-secret rotation step a live Secret is at.
fn rotation_marker(live: &Secret) -> Option<&String> {
    live.annotations().get(SESSION_SECRET_ROTATION_ANNOTATION)
}

/// Whether a live Secret holds what the rotation wants, marker and values.
fn holds(live: &Secret, rotated: &Rotated) -> bool {
    rotation_marker(live) == Some(&rotated.marker)
        && rotated
            .data
            .iter()
            .all(|(key, value)| live.data.as_ref().and_then(|data| data.get(key)) == Some(value))
}

/// A generated Secret value: 32 random alphanumerics (190 bits).
fn generated_value() -> ByteString {
    ByteString(
        Alphanumeric
            .sample_string(&mut rand::rng(), 32)
            .into_bytes(),
    )
}

impl Applier<'_> {
    /// Whether a live Secret was generated by the operator for this ScaledApp: it carries our
    /// managed-by and app.kubernetes.io/instance labels, or this ScaledApp controls it.
    fn generated_here(&self, live: &Secret) -> bool {
        let labels = live.labels();
        let labelled = labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGER)
            && labels.get(SCALEDAPP_NAME_LABEL).map(String::as_str) == Some(self.app_name);
        let owned = live
            .owner_references()
            .iter()
            .any(|owner| owner.kind == "ScaledApp" && owner.name == self.app_name);
        labelled || owned
    }
}

impl Shelving for Applier<'_> {
    type Error = ApplyError;

    async fn list<K: Child>(&self) -> Result<BTreeMap<String, K>, ApplyError> {
        self.list_kind().await
    }

    async fn prune<K: Child>(
        &self,
        leftovers: BTreeMap<String, K>,
    ) -> Result<Vec<String>, ApplyError> {
        self.prune_kind(leftovers).await
    }
}

fn kind<K: k8s_openapi::Resource>() -> &'static str {
    K::KIND
}

/// Applies one child at a time, taking it off the inventory's shelf.
struct ApplyStep<'s, 'a> {
    applier: &'s Applier<'a>,
    inventory: Inventory,
    changes: Changes,
}

impl Step<Rendered, Applied> for ApplyStep<'_, '_> {
    type Error = ApplyError;
    fn child<K: Child>(&mut self, child: &K) -> impl Future<Output = Result<K, ApplyError>> + Send {
        self.applier
            .apply_one(child, &mut self.inventory, &mut self.changes)
    }
}

/// Looks each child up on the inventory's shelf.
struct ObserveStep(Inventory);

impl Step<Rendered, Live> for ObserveStep {
    type Error = Infallible;
    fn child<K: Child>(
        &mut self,
        child: &K,
    ) -> impl Future<Output = Result<LiveObject<K>, Infallible>> + Send {
        let name = child.name_any();
        let object = K::shelf(&mut self.0).remove(&name);
        ready(Ok(LiveObject { name, object }))
    }
}
