//! What the data-bearing components (Redis, Postgres) share: volume claims, their retention
//! under the data policy, headless Services, and the StatefulSet around a pod spec.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Service,
    ServicePort, ServiceSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::DataPolicy;
use crate::names::ROLE_LABEL;
use crate::validate::ValidatedApp;

/// A volume claim template.
pub fn claim(name: &str, size: &str, storage_class_name: Option<String>) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name,
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(size.into()),
                )])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// PVCs follow the data policy when the StatefulSet is deleted; scaling down never deletes data.
pub fn retention(policy: DataPolicy) -> StatefulSetPersistentVolumeClaimRetentionPolicy {
    StatefulSetPersistentVolumeClaimRetentionPolicy {
        when_deleted: Some(
            match policy {
                DataPolicy::Retain => "Retain",
                DataPolicy::Delete => "Delete",
            }
            .into(),
        ),
        when_scaled: Some("Retain".into()),
    }
}

/// How a Service addresses its pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressing {
    /// Headless: DNS names each pod (stable per-pod names for StatefulSets). With
    /// `not_ready: false` only ready pods are published, so a client never resolves a pod that
    /// does not answer yet; peers that must find each other while starting publish all.
    Headless {
        /// Publish pods before they are ready.
        not_ready: bool,
    },
    /// A virtual IP: a new connection goes to whichever selected pod is ready now, so clients
    /// follow a role label that moves without waiting for DNS.
    ClusterIp,
}

/// A Service over `selector` with one named port per `(name, port)`.
pub fn service(
    meta: ObjectMeta,
    selector: BTreeMap<String, String>,
    ports: &[(&str, i32)],
    addressing: Addressing,
) -> Service {
    let mut meta = meta;
    // The role label on the Service itself lets `kubectl get svc -l` find a role's endpoint.
    if let (Some(labels), Some(role)) = (meta.labels.as_mut(), selector.get(ROLE_LABEL)) {
        labels.insert(ROLE_LABEL.into(), role.clone());
    }
    let (cluster_ip, publish_not_ready_addresses) = match addressing {
        Addressing::Headless { not_ready } => (Some("None".to_string()), Some(not_ready)),
        Addressing::ClusterIp => (None, None),
    };
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            cluster_ip,
            selector: Some(selector),
            publish_not_ready_addresses,
            ports: Some(
                ports
                    .iter()
                    .map(|(name, port)| ServicePort {
                        name: Some((*name).into()),
                        port: *port,
                        target_port: Some(IntOrString::Int(*port)),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The parts in which one data-bearing StatefulSet differs from another.
pub struct StatefulSetParts {
    /// Metadata (name, labels, owner); the name is also the governing Service's.
    pub meta: ObjectMeta,
    /// Labels of the pods, which the StatefulSet selects on.
    pub selector: BTreeMap<String, String>,
    /// Pod count.
    pub replicas: i32,
    /// `Parallel` when pods do not depend on their predecessors; `None` keeps the default
    /// (ordered). Immutable once created.
    pub pod_management_policy: Option<&'static str>,
    /// `OnDelete` when the operator replaces pods itself, in an order the StatefulSet controller
    /// cannot know; `None` keeps rolling updates by the controller.
    pub update_strategy: Option<&'static str>,
    /// The pod.
    pub pod: PodSpec,
    /// Volume claim templates, if the pods keep data.
    pub claims: Option<Vec<PersistentVolumeClaim>>,
}

/// A StatefulSet whose volumes follow the ScaledApp's data policy.
pub fn stateful_set(app: &ValidatedApp, parts: StatefulSetParts) -> StatefulSet {
    let StatefulSetParts {
        meta,
        selector,
        replicas,
        pod_management_policy,
        update_strategy,
        pod,
        claims,
    } = parts;
    StatefulSet {
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: meta.name.clone(),
            pod_management_policy: pod_management_policy.map(String::from),
            update_strategy: update_strategy.map(|type_| StatefulSetUpdateStrategy {
                type_: Some(type_.into()),
                rolling_update: None,
            }),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(selector),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            volume_claim_templates: claims,
            persistent_volume_claim_retention_policy: Some(retention(app.spec.data_policy)),
            ..StatefulSetSpec::default()
        }),
        metadata: meta,
        status: None,
    }
}
