//! What the Postgres stage saw of a shard this pass: its pods, what their instance managers
//! reported, and which volumes may hold data from before the shard's StatefulSet.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use scaled_contract::instance::InstanceStatus;

use crate::names::shard_set_name;
use crate::validate::ValidatedApp;

/// One Postgres pod as seen this pass.
#[derive(Clone, Debug, PartialEq)]
pub struct PodObservation {
    /// Pod name.
    pub name: String,
    /// Ordinal within the StatefulSet.
    pub ordinal: u32,
    /// Its role label now.
    pub role_label: Option<String>,
    /// Running and not being deleted.
    pub running: bool,
    /// The StatefulSet revision the pod was created from.
    pub revision: Option<String>,
    /// The pod object's uid: another one under the same name is a recreated pod.
    pub uid: Option<String>,
    /// How often its postgres container restarted.
    pub restarts: i32,
    /// What its instance manager reported, if it answered.
    pub instance: Option<InstanceStatus>,
}

impl PodObservation {
    /// Which process this is: the pod's uid and its postgres container's restart count. A new
    /// one means the process seen before is gone.
    pub fn incarnation(&self) -> Option<String> {
        self.uid
            .as_ref()
            .map(|uid| format!("{uid}/{}", self.restarts))
    }
}

/// What the operator knows of a shard's StatefulSet from applying it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardSet {
    /// `status.updateRevision`: the current template revision.
    pub update_revision: Option<String>,
    /// When it was created.
    pub created: Option<Time>,
}

/// One shard's pods and volumes as seen this pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardObservation {
    /// Shard number.
    pub index: u32,
    /// Pods that exist, by ordinal.
    pub pods: Vec<PodObservation>,
    /// Ordinals whose data volume (PVC) is older than the shard's StatefulSet: kept from an
    /// earlier ScaledApp (`dataPolicy: Retain`), so it may hold data. Claims the StatefulSet
    /// made itself hold nothing until a recorded primary initialises its own.
    pub volumes: BTreeSet<u32>,
    /// The StatefulSet's current template revision (`status.updateRevision`).
    pub update_revision: Option<String>,
}

/// Name of pod `ordinal` of shard `index`'s StatefulSet.
pub fn pod_name(app: &ValidatedApp, index: u32, ordinal: u32) -> String {
    scaled_contract::instance::pod_name(&shard_set_name(&app.name, index), ordinal)
}

/// `(shard, ordinal)` of a pod named `<app>-shard-<shard>-<ordinal>`.
pub fn shard_and_ordinal(app: &ValidatedApp, pod: &str) -> Option<(u32, u32)> {
    let rest = pod.strip_prefix(&format!("{}-shard-", app.name))?;
    let (shard, ordinal) = rest.split_once('-')?;
    if !(shard.bytes().all(|b| b.is_ascii_digit()) && ordinal.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    Some((shard.parse().ok()?, ordinal.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::validated_example;

    #[test]
    fn pod_names_give_their_shard_and_ordinal() {
        let app = validated_example("shop");
        assert_eq!(pod_name(&app, 12, 3), "shop-shard-12-3");
        assert_eq!(shard_and_ordinal(&app, "shop-shard-12-3"), Some((12, 3)));
        assert_eq!(shard_and_ordinal(&app, "shop-redis-0"), None);
        assert_eq!(shard_and_ordinal(&app, "shopping-shard-1-0"), None);
        assert_eq!(shard_and_ordinal(&app, "shop-shard-1-+0"), None);
    }
}
