//! Apply: make the cluster match [`Desired`] with server-side apply under one field manager, in
//! a fixed order, then prune children that are no longer rendered.
//!
//! A reconcile that finds nothing to change writes nothing. Every child carries a hash of what
//! was last applied ([`APPLIED_HASH_ANNOTATION`]); an object is re-applied only when that hash
//! differs from the rendered one, or when its `managedFields` entry for our manager differs from
//! the one recorded right after our last apply. The second check catches hand edits: a field
//! another manager took over, or a field someone removed, leaves our entry changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Mutex;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::{ByteString, NamespaceResourceScope};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use rand::distr::{Alphanumeric, SampleString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;
use crate::render::{
    APPLIED_HASH_ANNOTATION, AppObjects, Desired, INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGER,
    RedisObjects, SecretTemplate, ShardObjects, WorkerObjects, manifest,
};

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

/// What the cluster holds after an apply (or after a read, when paused): the workloads whose
/// status decides readiness, and what was changed.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Deployments by name.
    pub deployments: BTreeMap<String, Deployment>,
    /// StatefulSets by name.
    pub statefulsets: BTreeMap<String, StatefulSet>,
    /// `Kind/name` of each object created.
    pub created: Vec<String>,
    /// `Kind/name` of each object updated.
    pub updated: Vec<String>,
    /// `Kind/name` of each object deleted.
    pub pruned: Vec<String>,
}

impl Observed {
    /// Whether this pass wrote anything.
    pub fn changed(&self) -> bool {
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
    instance: &'a str,
    cache: &'a AppliedCache,
    metrics: &'a Metrics,
    observed: Observed,
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
    /// An applier for the children of `instance` in `namespace`.
    pub fn new(
        client: Client,
        namespace: &'a str,
        instance: &'a str,
        cache: &'a AppliedCache,
        metrics: &'a Metrics,
    ) -> Self {
        Applier {
            client,
            namespace,
            instance,
            cache,
            metrics,
            observed: Observed::default(),
        }
    }

    fn selector(&self) -> String {
        format!(
            "{INSTANCE_LABEL}={},{MANAGED_BY_LABEL}={MANAGER}",
            self.instance
        )
    }

    async fn list<K>(&self) -> Result<BTreeMap<String, K>, ApplyError>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + k8s_openapi::Resource
            + Clone
            + DeserializeOwned
            + Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        let list = api
            .list(&ListParams::default().labels(&self.selector()))
            .await
            .map_err(|source| ApplyError::List {
                kind: kind::<K>(),
                namespace: self.namespace.to_string(),
                name: self.instance.to_string(),
                source,
            })?;
        Ok(list
            .items
            .into_iter()
            .map(|object| (object.name_any(), object))
            .collect())
    }

    /// Applies every desired object, prunes the rest, and returns what the cluster now holds.
    pub async fn apply(mut self, desired: &Desired) -> Result<Observed, ApplyError> {
        let Desired {
            config,
            postgres_scripts,
            secrets,
            app,
            redis,
            shards,
            workers,
            network_policies,
        } = desired;

        for template in secrets {
            self.ensure_secret(template).await?;
        }

        // Configuration and policies first, so workloads never start without them; databases
        // before the app that migrates them; the app before the workers that use its schema.
        let mut config_maps = self.list::<ConfigMap>().await?;
        let mut policies = self.list::<NetworkPolicy>().await?;
        let mut services = self.list::<Service>().await?;
        let mut statefulsets = self.list::<StatefulSet>().await?;
        let mut deployments = self.list::<Deployment>().await?;
        let mut budgets = self.list::<PodDisruptionBudget>().await?;
        let mut autoscalers = self.list::<HorizontalPodAutoscaler>().await?;

        for config_map in [config, postgres_scripts] {
            self.apply_one(config_map, &mut config_maps).await?;
        }
        for policy in network_policies {
            self.apply_one(policy, &mut policies).await?;
        }
        for ShardObjects {
            index: _,
            primary,
            primary_service,
            replicas,
            replica_service,
        } in shards
        {
            self.apply_one(primary_service, &mut services).await?;
            let primary = self.apply_one(primary, &mut statefulsets).await?;
            self.observed
                .statefulsets
                .insert(primary.name_any(), primary);
            if let Some(service) = replica_service {
                self.apply_one(service, &mut services).await?;
            }
            if let Some(replicas) = replicas {
                let replicas = self.apply_one(replicas, &mut statefulsets).await?;
                self.observed
                    .statefulsets
                    .insert(replicas.name_any(), replicas);
            }
        }
        if let Some(RedisObjects {
            statefulset,
            service,
        }) = redis
        {
            self.apply_one(service, &mut services).await?;
            let redis = self.apply_one(statefulset, &mut statefulsets).await?;
            self.observed.statefulsets.insert(redis.name_any(), redis);
        }
        let AppObjects {
            deployment,
            service,
            disruption_budget,
            autoscaler,
        } = app;
        let deployment = self.apply_one(deployment, &mut deployments).await?;
        self.observed
            .deployments
            .insert(deployment.name_any(), deployment);
        self.apply_one(service, &mut services).await?;
        self.apply_one(disruption_budget, &mut budgets).await?;
        if let Some(autoscaler) = autoscaler {
            self.apply_one(autoscaler, &mut autoscalers).await?;
        }
        for WorkerObjects {
            pool: _,
            deployment,
            autoscaler,
        } in workers
        {
            let deployment = self.apply_one(deployment, &mut deployments).await?;
            self.observed
                .deployments
                .insert(deployment.name_any(), deployment);
            self.apply_one(autoscaler, &mut autoscalers).await?;
        }

        // What is left in the maps was not rendered this time: prune it (dependents first).
        self.prune(autoscalers).await?;
        self.prune(budgets).await?;
        self.prune(deployments).await?;
        self.prune(statefulsets).await?;
        self.prune(services).await?;
        self.prune(policies).await?;
        self.prune(config_maps).await?;
        Ok(self.observed)
    }

    /// Reads the workloads without changing anything (used while paused).
    pub async fn observe(self) -> Result<Observed, ApplyError> {
        Ok(Observed {
            deployments: self.list::<Deployment>().await?,
            statefulsets: self.list::<StatefulSet>().await?,
            ..Observed::default()
        })
    }

    async fn apply_one<K>(
        &mut self,
        desired: &K,
        live: &mut BTreeMap<String, K>,
    ) -> Result<K, ApplyError>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + k8s_openapi::Resource
            + Clone
            + Serialize
            + DeserializeOwned
            + Debug,
    {
        let name = desired.name_any();
        let kind = kind::<K>();
        let key = format!("{kind}/{}/{name}", self.namespace);
        let hash = content_hash(desired);
        let existing = live.remove(&name);
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
            self.observed.updated.push(label);
        } else {
            self.observed.created.push(label);
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

    async fn prune<K>(&mut self, leftovers: BTreeMap<String, K>) -> Result<(), ApplyError>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + k8s_openapi::Resource
            + Clone
            + DeserializeOwned
            + Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        for (name, object) in leftovers {
            // Only what this ScaledApp controls: a same-named instance label is not proof.
            let owned = object.owner_references().iter().any(|owner| {
                owner.kind == "ScaledApp"
                    && owner.controller == Some(true)
                    && owner.name == self.instance
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
            self.observed.pruned.push(format!("{}/{name}", kind::<K>()));
        }
        Ok(())
    }

    /// Creates a Secret with fresh random values if it does not exist; never overwrites values.
    /// Labels and owner references are then kept by server-side apply of the metadata alone.
    async fn ensure_secret(&mut self, template: &SecretTemplate) -> Result<(), ApplyError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), self.namespace);
        let name = template.name().to_string();
        let secret_error = |source| ApplyError::Secret {
            namespace: self.namespace.to_string(),
            name: name.clone(),
            source,
        };
        let existing = api.get_opt(&name).await.map_err(secret_error)?;
        if existing.is_none() {
            let data: BTreeMap<String, ByteString> = template
                .keys
                .iter()
                .map(|key| {
                    let value = Alphanumeric.sample_string(&mut rand::rng(), 32);
                    (key.to_string(), ByteString(value.into_bytes()))
                })
                .collect();
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.namespace.to_string()),
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
                Ok(_) => self.observed.created.push(format!("Secret/{name}")),
                // Another operator replica (or an earlier, interrupted pass) created it first.
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                Err(source) => return Err(secret_error(source)),
            }
        }
        let metadata = Secret {
            metadata: template.meta.clone(),
            ..Secret::default()
        };
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
        if live_matches {
            return Ok(());
        }
        let manifest = manifest(&metadata);
        self.metrics.record_write("Secret");
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&manifest),
        )
        .await
        .map_err(secret_error)?;
        Ok(())
    }
}

fn kind<K: k8s_openapi::Resource>() -> &'static str {
    K::KIND
}
