//! The children of one ScaledApp as one typed set, carried through the whole pipeline:
//!
//! - [`render`](crate::render::render) builds `Children<Rendered>`: what the operator wants;
//! - [`apply`](crate::apply) turns it into `Children<Applied>`: what the API server returned,
//!   status included; while paused it reads `Children<Live>` instead: what is there, if anything;
//! - [`status`](crate::status) reads readiness and endpoints straight off an applied or live set.
//!
//! [`Children::map`] is the only walk over the set, in apply order, and it destructures every
//! struct without `..`: a new child cannot be forgotten by apply, observe or printing.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::{Future, ready};

use futures::FutureExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;

use crate::kinds::Child;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::kinds::manifest;
use crate::session_rotation::SecretStep;

/// A stage of the pipeline: how it holds one child object.
pub trait Stage {
    /// One child of kind `K` in this stage.
    type Of<K: Child>: Clone + Debug + PartialEq + Send + Sync;
}

/// Rendered by the operator, not yet sent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rendered;
/// As the API server returned it from the apply (with its current status).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Applied;
/// Read without changing anything (while paused): the object may be missing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Live;
/// Visited for its side effect only (printing); holds nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Visited;

impl Stage for Rendered {
    type Of<K: Child> = K;
}
impl Stage for Applied {
    type Of<K: Child> = K;
}
impl Stage for Live {
    type Of<K: Child> = LiveObject<K>;
}
impl Stage for Visited {
    type Of<K: Child> = ();
}

/// A child read from the cluster: the rendered name, and the object if it exists.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveObject<K> {
    /// Name the object has (or would have).
    pub name: String,
    /// The object, unless it does not exist.
    pub object: Option<K>,
}

/// A stage whose objects come from the cluster, so status can read them.
pub trait Observation: Stage {
    /// The child's name.
    fn name<K: Child>(child: &Self::Of<K>) -> String;
    /// The object as the cluster has it, if it exists.
    fn object<K: Child>(child: &Self::Of<K>) -> Option<&K>;
}

impl Observation for Applied {
    fn name<K: Child>(child: &K) -> String {
        child.name_any()
    }
    fn object<K: Child>(child: &K) -> Option<&K> {
        Some(child)
    }
}

impl Observation for Live {
    fn name<K: Child>(child: &LiveObject<K>) -> String {
        child.name.clone()
    }
    fn object<K: Child>(child: &LiveObject<K>) -> Option<&K> {
        child.object.as_ref()
    }
}

/// A Secret to create once: its metadata and the keys to fill with random values.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretTemplate {
    /// Name, labels and (under `dataPolicy: Delete`) owner reference.
    pub meta: ObjectMeta,
    /// Keys that get a fresh random value on creation.
    pub keys: Vec<&'static str>,
    /// The session secret's rotation step this pass (the `<app>-app` Secret only; the values
    /// of every other Secret never change).
    pub rotation: Option<SecretStep>,
}

impl SecretTemplate {
    /// The Secret as a manifest with placeholder values, for `render` output (a real Secret is
    /// only ever created by the operator with generated values).
    pub fn to_manifest(&self) -> serde_json::Value {
        let data: serde_json::Map<String, serde_json::Value> = self
            .keys
            .iter()
            .map(|key| (key.to_string(), "<generated on creation>".into()))
            .collect();
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": self.meta,
            "type": "Opaque",
            "stringData": data,
        })
    }

    /// The Secret's name.
    pub fn name(&self) -> &str {
        self.meta
            .name
            .as_deref()
            .expect("templates are always named")
    }
}

/// Every child of one ScaledApp.
#[derive(Clone, Debug, PartialEq)]
pub struct Children<S: Stage> {
    /// Secrets created once with generated values, never overwritten (the same in every stage:
    /// their values never leave the API server).
    pub secrets: Vec<SecretTemplate>,
    /// The app's runtime configuration (the contract document).
    pub config: S::Of<ConfigMap>,
    /// Settings of the Postgres instance managers.
    pub postgres_config: S::Of<ConfigMap>,
    /// Who may reach Postgres and Redis.
    pub network_policies: Vec<S::Of<NetworkPolicy>>,
    /// The identity the Postgres instance managers read their ScaledApp with.
    pub postgres_access: PostgresAccess<S>,
    /// One entry per shard.
    pub shards: Vec<ShardObjects<S>>,
    /// Redis, unless an external Redis is used.
    pub redis: Option<RedisObjects<S>>,
    /// The app Deployment, Service, PDB and HPA.
    pub app: AppObjects<S>,
    /// One entry per worker pool.
    pub workers: Vec<WorkerObjects<S>>,
}

/// The app's objects.
#[derive(Clone, Debug, PartialEq)]
pub struct AppObjects<S: Stage> {
    /// The app Deployment.
    pub deployment: S::Of<Deployment>,
    /// The ClusterIP Service in front of it.
    pub service: S::Of<Service>,
    /// Keeps voluntary disruptions to one pod at a time.
    pub disruption_budget: S::Of<PodDisruptionBudget>,
    /// Present when autoscaling is enabled.
    pub autoscaler: Option<S::Of<HorizontalPodAutoscaler>>,
}

/// Redis run by the operator.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisObjects<S: Stage> {
    /// Single-pod StatefulSet.
    pub statefulset: S::Of<StatefulSet>,
    /// Headless Service naming the pod (the StatefulSet's governing Service).
    pub peers: S::Of<Service>,
    /// ClusterIP Service the app, workers and operator connect to.
    pub primary_service: S::Of<Service>,
}

/// The ServiceAccount of the Postgres pods and the one permission it has: reading its own
/// ScaledApp, whose status names each shard's primary.
#[derive(Clone, Debug, PartialEq)]
pub struct PostgresAccess<S: Stage> {
    /// The Postgres pods' identity.
    pub service_account: S::Of<ServiceAccount>,
    /// `get`/`watch` on this one ScaledApp.
    pub role: S::Of<Role>,
    /// Grants the role to the account.
    pub role_binding: S::Of<RoleBinding>,
}

/// One Postgres shard.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardObjects<S: Stage> {
    /// Shard number.
    pub index: u32,
    /// The shard's pods: the primary and its replicas, whichever the operator chose.
    pub statefulset: S::Of<StatefulSet>,
    /// Headless Service naming every pod, so instances find the primary by pod name.
    pub peers: S::Of<Service>,
    /// The pod labelled primary (read-write).
    pub primary_service: S::Of<Service>,
    /// The pods labelled replica (read-only), unless `replicasPerShard` is 0.
    pub replica_service: Option<S::Of<Service>>,
}

/// One worker pool.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerObjects<S: Stage> {
    /// Pool name.
    pub pool: String,
    /// The pool's Deployment.
    pub deployment: S::Of<Deployment>,
    /// Scales the pool on queue depth.
    pub autoscaler: S::Of<HorizontalPodAutoscaler>,
}

/// One step of the pipeline: turns each child of stage `From` into the same child in stage `To`.
pub trait Step<From: Stage, To: Stage> {
    /// Why a child could not be carried over.
    type Error;
    /// Carries one child over.
    fn child<K: Child>(
        &mut self,
        child: &From::Of<K>,
    ) -> impl Future<Output = Result<To::Of<K>, Self::Error>> + Send;
}

impl<S: Stage> Children<S> {
    /// Runs `step` over every child, one at a time, in apply order: configuration and policies
    /// first, so workloads never start without them; databases before the app that migrates
    /// them; the app before the workers that use its schema.
    pub async fn map<T: Stage, F: Step<S, T>>(
        &self,
        step: &mut F,
    ) -> Result<Children<T>, F::Error> {
        let Children {
            secrets,
            config,
            postgres_config,
            network_policies,
            postgres_access,
            shards,
            redis,
            app,
            workers,
        } = self;
        let config = step.child::<ConfigMap>(config).await?;
        let postgres_config = step.child::<ConfigMap>(postgres_config).await?;
        let mut policies = Vec::with_capacity(network_policies.len());
        for policy in network_policies {
            policies.push(step.child::<NetworkPolicy>(policy).await?);
        }
        let PostgresAccess {
            service_account,
            role,
            role_binding,
        } = postgres_access;
        let postgres_access = PostgresAccess {
            service_account: step.child::<ServiceAccount>(service_account).await?,
            role: step.child::<Role>(role).await?,
            role_binding: step.child::<RoleBinding>(role_binding).await?,
        };
        let mut mapped_shards = Vec::with_capacity(shards.len());
        for ShardObjects {
            index,
            statefulset,
            peers,
            primary_service,
            replica_service,
        } in shards
        {
            // Services first, so the pods' names resolve as soon as they start.
            let peers = step.child::<Service>(peers).await?;
            let primary_service = step.child::<Service>(primary_service).await?;
            let replica_service = match replica_service {
                Some(service) => Some(step.child::<Service>(service).await?),
                None => None,
            };
            mapped_shards.push(ShardObjects {
                index: *index,
                statefulset: step.child::<StatefulSet>(statefulset).await?,
                peers,
                primary_service,
                replica_service,
            });
        }
        let redis = match redis {
            Some(RedisObjects {
                statefulset,
                peers,
                primary_service,
            }) => {
                let peers = step.child::<Service>(peers).await?;
                let primary_service = step.child::<Service>(primary_service).await?;
                let statefulset = step.child::<StatefulSet>(statefulset).await?;
                Some(RedisObjects {
                    statefulset,
                    peers,
                    primary_service,
                })
            }
            None => None,
        };
        let AppObjects {
            deployment,
            service,
            disruption_budget,
            autoscaler,
        } = app;
        let app = AppObjects {
            deployment: step.child::<Deployment>(deployment).await?,
            service: step.child::<Service>(service).await?,
            disruption_budget: step.child::<PodDisruptionBudget>(disruption_budget).await?,
            autoscaler: match autoscaler {
                Some(autoscaler) => Some(step.child::<HorizontalPodAutoscaler>(autoscaler).await?),
                None => None,
            },
        };
        let mut mapped_workers = Vec::with_capacity(workers.len());
        for WorkerObjects {
            pool,
            deployment,
            autoscaler,
        } in workers
        {
            mapped_workers.push(WorkerObjects {
                pool: pool.clone(),
                deployment: step.child::<Deployment>(deployment).await?,
                autoscaler: step.child::<HorizontalPodAutoscaler>(autoscaler).await?,
            });
        }
        Ok(Children {
            secrets: secrets.clone(),
            config,
            postgres_config,
            network_policies: policies,
            postgres_access,
            shards: mapped_shards,
            redis,
            app,
            workers: mapped_workers,
        })
    }
}

/// Collects each child's manifest.
struct Print(Vec<serde_json::Value>);

impl Step<Rendered, Visited> for Print {
    type Error = Infallible;
    fn child<K: Child>(
        &mut self,
        child: &K,
    ) -> impl Future<Output = Result<(), Infallible>> + Send {
        self.0.push(manifest(child));
        ready(Ok(()))
    }
}

impl Children<Rendered> {
    /// Every object as JSON, in apply order (Secrets first, with placeholder values), for
    /// `scaledapp-operator render` and for tests.
    pub fn manifests(&self) -> Vec<serde_json::Value> {
        let mut print = Print(
            self.secrets
                .iter()
                .map(SecretTemplate::to_manifest)
                .collect(),
        );
        let visited = self
            .map(&mut print)
            .now_or_never()
            .expect("printing never waits");
        let Ok(_) = visited;
        print.0
    }
}

/// What the Postgres stage asks of the pods its StatefulSets own: they are not children (the
/// StatefulSet creates and owns them), so they are not applied or pruned, only relabelled (the
/// role Services select on the label) and deleted (so their StatefulSet recreates them from a
/// new template). The applier makes these writes with the rest of the pass's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodChanges {
    /// Pods whose role label must change, with the new value.
    pub relabel: Vec<(String, &'static str)>,
    /// Pods to delete so their StatefulSet recreates them from its new template.
    pub replace: Vec<String>,
}
