//! The one table of child kinds. Everything that must know every kind the operator creates is
//! generated from [`child_kinds!`]: the [`Child`] trait (without which a rendered object cannot be
//! applied), the [`Inventory`] that apply lists and prunes, and the controller's watches. A new
//! kind is added in the table; a rendered object of a kind missing from it does not compile.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;

use futures::Stream;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::ScaledApp;
use crate::names::{MANAGED_BY_LABEL, MANAGER};

/// An object with `apiVersion` and `kind` set, as `kubectl` and server-side apply expect it.
pub fn manifest<K>(object: &K) -> serde_json::Value
where
    K: kube::Resource<DynamicType = ()> + Serialize,
{
    let mut value = serde_json::to_value(object).expect("k8s-openapi types always serialise");
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    value
}

/// A kind of object a ScaledApp owns.
pub trait Child:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + k8s_openapi::Resource
    + Clone
    + Debug
    + PartialEq
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// This kind's shelf in an inventory.
    fn shelf(inventory: &mut Inventory) -> &mut BTreeMap<String, Self>;
}

/// What lists and prunes the children of one ScaledApp, one kind at a time (the applier). The
/// table below walks every kind through it, so this module needs nothing of apply's.
pub trait Shelving {
    /// Why a list or a prune failed.
    type Error;
    /// Every child of kind `K`, by name.
    fn list<K: Child>(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<String, K>, Self::Error>> + Send;
    /// Deletes `leftovers` (those the ScaledApp controls), returning `Kind/name` of each.
    fn prune<K: Child>(
        &self,
        leftovers: BTreeMap<String, K>,
    ) -> impl Future<Output = Result<Vec<String>, Self::Error>> + Send;
}

/// Changes to children of kind `K`: only ours (by label), and only their metadata, since owner
/// references are all a trigger needs; watch traffic and memory stay independent of the rest of
/// the cluster and of pod specs.
fn child_events<K: Child>(
    client: &Client,
    namespace: Option<&str>,
) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static {
    let config = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    let api = match namespace {
        Some(namespace) => Api::<PartialObjectMeta<K>>::namespaced(client.clone(), namespace),
        None => Api::<PartialObjectMeta<K>>::all(client.clone()),
    };
    watcher(api, config).touched_objects()
}

macro_rules! child_kinds {
    ($($shelf:ident: $kind:ty,)+) => {
        /// The live children of one ScaledApp, one shelf per kind, keyed by name. Apply takes
        /// each rendered object off its shelf; whatever is left was not rendered and is pruned.
        #[derive(Debug, Default)]
        pub struct Inventory {
            $(
                #[doc = concat!("`", stringify!($kind), "` children by name.")]
                pub $shelf: BTreeMap<String, $kind>,
            )+
        }

        $(
            impl Child for $kind {
                fn shelf(inventory: &mut Inventory) -> &mut BTreeMap<String, Self> {
                    &mut inventory.$shelf
                }
            }
        )+

        impl Inventory {
            /// Lists every kind of child of the applier's ScaledApp: one LIST per kind, all at
            /// once, so a pass waits for one round trip instead of one per kind.
            pub async fn list<S: Shelving>(store: &S) -> Result<Self, S::Error> {
                let ($($shelf,)+) = futures::try_join!($(store.list::<$kind>(),)+)?;
                Ok(Inventory { $($shelf,)+ })
            }

            /// Deletes what is still on the shelves, in table order (dependents first), and
            /// returns `Kind/name` of each object deleted.
            pub async fn prune<S: Shelving>(self, store: &S) -> Result<Vec<String>, S::Error> {
                let mut pruned = Vec::new();
                $(pruned.extend(store.prune::<$kind>(self.$shelf).await?);)+
                Ok(pruned)
            }
        }

        /// The controller, woken by a change to any child of any kind (in `namespace`, or in
        /// every namespace).
        pub fn watch_every_kind(
            controller: Controller<ScaledApp>,
            client: &Client,
            namespace: Option<&str>,
        ) -> Controller<ScaledApp> {
            controller $(.owns_stream(child_events::<$kind>(client, namespace)))+
        }
    };
}

// Prune order: what depends on another kind comes first (an HPA before its Deployment, a
// workload before the Services, ServiceAccounts and ConfigMaps its pods use, a RoleBinding
// before its Role and subject).
child_kinds! {
    autoscalers: HorizontalPodAutoscaler,
    disruption_budgets: PodDisruptionBudget,
    deployments: Deployment,
    stateful_sets: StatefulSet,
    services: Service,
    network_policies: NetworkPolicy,
    role_bindings: RoleBinding,
    roles: Role,
    service_accounts: ServiceAccount,
    config_maps: ConfigMap,
}
