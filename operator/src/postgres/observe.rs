//! The Postgres stage's reads, and its only I/O: every Postgres pod of a ScaledApp, their
//! volume claims, and each instance manager's `/status`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::{Api, Client, ResourceExt};
use scaled_contract::instance::InstanceStatus;

use crate::names::{POSTGRES_COMPONENT, ROLE_LABEL, component_selector};
use crate::validate::ValidatedApp;

use super::observation::{PodObservation, ShardObservation, ShardSet, shard_and_ordinal};

/// Label the StatefulSet controller puts on each pod: the revision it was created from.
const REVISION_LABEL: &str = "controller-revision-hash";

/// How long one instance manager may take to answer `/status`.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Failures reading the Postgres pods or their volume claims. (An instance manager that does
/// not answer is an observation, not an error.)
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// Listing the pods or volume claims failed.
    #[error("failed to list {kind} of ScaledApp {namespace}/{name}: {source}")]
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
}

/// What [`read`] fetched: the Postgres pods, their volume claims, and each pod's report.
#[derive(Debug, Default)]
pub struct Reads {
    pods: Vec<Pod>,
    claims: Vec<PartialObjectMeta<PersistentVolumeClaim>>,
    reports: Vec<Option<InstanceStatus>>,
}

/// Reads every Postgres pod of the ScaledApp, its volume claims, and each instance manager's
/// `/status` (all managers at once). It needs nothing of the pass's other reads, so the
/// reconcile runs it beside them.
pub async fn read(
    client: &Client,
    http: &reqwest::Client,
    app: &ValidatedApp,
) -> Result<Reads, ObserveError> {
    let selector = component_selector(&app.name, POSTGRES_COMPONENT);
    let params = ListParams::default().labels(&selector);
    let list_error = |kind: &'static str| {
        move |source| ObserveError::List {
            kind,
            namespace: app.namespace.clone(),
            name: app.name.clone(),
            source,
        }
    };
    let pod_api = Api::<Pod>::namespaced(client.clone(), &app.namespace);
    let claim_api = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &app.namespace);
    let (pods, claims) = futures::try_join!(
        async { pod_api.list(&params).await.map_err(list_error("pods")) },
        async {
            claim_api
                .list_metadata(&params)
                .await
                .map_err(list_error("persistentvolumeclaims"))
        },
    )?;
    let reports =
        futures::future::join_all(pods.items.iter().map(|pod| instance_status(http, pod))).await;
    Ok(Reads {
        pods: pods.items,
        claims: claims.items,
        reports,
    })
}

/// The shards as [`read`] saw them, with what the StatefulSets say (`sets`). Pure.
pub fn shards(
    app: &ValidatedApp,
    reads: Reads,
    sets: &BTreeMap<u32, ShardSet>,
) -> Vec<ShardObservation> {
    let Reads {
        pods,
        claims,
        reports,
    } = reads;

    let mut shards: Vec<ShardObservation> = (0..app.shards)
        .map(|index| ShardObservation {
            index,
            update_revision: sets.get(&index).and_then(|set| set.update_revision.clone()),
            ..ShardObservation::default()
        })
        .collect();
    for (pod, instance) in pods.iter().zip(reports) {
        let Some((index, ordinal)) = shard_and_ordinal(app, &pod.name_any()) else {
            continue;
        };
        if let Some(shard) = shards.get_mut(index as usize) {
            let running = pod.metadata.deletion_timestamp.is_none()
                && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            let restarts = pod
                .status
                .as_ref()
                .and_then(|status| status.container_statuses.as_ref())
                // The container is named after the component (render/postgres.rs).
                .and_then(|containers| containers.iter().find(|c| c.name == POSTGRES_COMPONENT))
                .map_or(0, |container| container.restart_count);
            shard.pods.push(PodObservation {
                name: pod.name_any(),
                ordinal,
                role_label: pod.labels().get(ROLE_LABEL).cloned(),
                running,
                revision: pod.labels().get(REVISION_LABEL).cloned(),
                uid: pod.uid(),
                restarts,
                instance,
            });
        }
    }
    for claim in claims {
        // Claims from the template are named `data-<statefulset>-<ordinal>`.
        let name = claim.name_any();
        if let Some((index, ordinal)) = name
            .strip_prefix("data-")
            .and_then(|pod| shard_and_ordinal(app, pod))
            && let Some(shard) = shards.get_mut(index as usize)
        {
            let set_created = sets.get(&index).and_then(|set| set.created.as_ref());
            if retained(claim.metadata.creation_timestamp.as_ref(), set_created) {
                shard.volumes.insert(ordinal);
            }
        }
    }
    for shard in &mut shards {
        shard.pods.sort_by_key(|pod| pod.ordinal);
    }
    shards
}

/// Whether a claim may hold data from before its shard's StatefulSet: it is older than the set.
/// Timestamps have one-second resolution, so a claim from the same second is the set's own; when
/// either time is unknown it counts as retained (waiting for the pods' reports is safe,
/// guessing is not).
fn retained(claim_created: Option<&Time>, set_created: Option<&Time>) -> bool {
    match (claim_created, set_created) {
        (Some(claim), Some(set)) => claim.0 < set.0,
        _ => true,
    }
}

/// The instance manager's report, if the pod runs and answers in time.
async fn instance_status(http: &reqwest::Client, pod: &Pod) -> Option<InstanceStatus> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip = status.pod_ip.as_deref()?;
    let address: std::net::IpAddr = ip.parse().ok()?;
    let url = format!(
        "http://{}/status",
        std::net::SocketAddr::new(address, scaled_contract::instance::INSTANCE_STATUS_PORT)
    );
    let response = http.get(url).timeout(STATUS_TIMEOUT).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json::<InstanceStatus>().await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid"))
    }

    #[test]
    fn only_claims_older_than_their_statefulset_can_hold_data_from_before_it() {
        // The StatefulSet controller makes the claims right after the set: nothing on them
        // until a recorded primary initialises; a claim kept from an earlier ScaledApp is older.
        assert!(!retained(Some(&at(100)), Some(&at(100))));
        assert!(!retained(Some(&at(101)), Some(&at(100))));
        assert!(retained(Some(&at(40)), Some(&at(100))));
        assert!(retained(None, Some(&at(100))));
        assert!(retained(Some(&at(100)), None));
    }
}
