//! Postgres instances: which pod of each shard is the primary.
//!
//! The decision is the operator's alone and is recorded in one place, the ScaledApp's
//! `status.shards[].primaryPod`, which the instance managers obey. Each pass
//! [`observe`]s the shard's pods and what their instance managers report at `/status`,
//! [`decide`]s purely (keep the recorded primary; choose the first one when none is recorded),
//! and [`label`]s the pods with their role, which the `-primary` and `-replica` Services select on.
//!
//! The first primary of a shard is `<shard>-0` when no volume holds data yet. When volumes were
//! kept (a ScaledApp re-created under `dataPolicy: Retain`), it is the instance with the newest
//! data (highest timeline, then WAL position), chosen only once every pod with a volume has
//! reported: a replica that is further behind must never become the primary of older data.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use scaled_contract::instance::{InstanceRole, InstanceStatus};

use crate::crd::{InstanceSummary, ScaledAppStatus};
use crate::metrics::Metrics;
use crate::render::{
    COMPONENT_LABEL, INSTANCE_LABEL, MANAGER, POSTGRES_COMPONENT, PRIMARY_ROLE, REPLICA_ROLE,
    ROLE_LABEL, shard_set_name,
};
use crate::validate::ValidatedApp;

/// How long one instance manager may take to answer `/status`.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Failures reading or labelling Postgres pods.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
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
    /// Setting a pod's role label failed.
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
}

/// One Postgres pod as seen this pass.
#[derive(Clone, Debug, PartialEq)]
pub struct PodObservation {
    /// Pod name.
    pub name: String,
    /// Ordinal within the StatefulSet.
    pub ordinal: u32,
    /// Its role label now.
    pub role_label: Option<String>,
    /// What its instance manager reported, if it answered.
    pub instance: Option<InstanceStatus>,
}

/// One shard's pods and volumes as seen this pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardObservation {
    /// Shard number.
    pub index: u32,
    /// Pods that exist, by ordinal.
    pub pods: Vec<PodObservation>,
    /// Ordinals that have a data volume (PVC) already.
    pub volumes: BTreeSet<u32>,
}

/// What the operator decided for one shard.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardDecision {
    /// Shard number.
    pub index: u32,
    /// The primary, once chosen.
    pub primary_pod: Option<String>,
    /// Why no primary is chosen yet.
    pub waiting: Option<String>,
    /// The primary's timeline, as it reports it.
    pub timeline: Option<u32>,
    /// Every pod as its instance manager reports it.
    pub instances: Vec<InstanceSummary>,
    /// Pods whose role label must change, with the new value.
    pub relabel: Vec<(String, &'static str)>,
}

/// Reads every Postgres pod of the ScaledApp, its volume claims, and each instance manager's
/// `/status`.
pub async fn observe(
    client: &Client,
    http: &reqwest::Client,
    app: &ValidatedApp,
) -> Result<Vec<ShardObservation>, InstanceError> {
    let selector = format!(
        "{INSTANCE_LABEL}={},{COMPONENT_LABEL}={}",
        app.name, POSTGRES_COMPONENT
    );
    let params = ListParams::default().labels(&selector);
    let list_error = |kind: &'static str| {
        move |source| InstanceError::List {
            kind,
            namespace: app.namespace.clone(),
            name: app.name.clone(),
            source,
        }
    };
    let pods = Api::<Pod>::namespaced(client.clone(), &app.namespace)
        .list(&params)
        .await
        .map_err(list_error("pods"))?
        .items;
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &app.namespace)
        .list_metadata(&params)
        .await
        .map_err(list_error("persistentvolumeclaims"))?
        .items;
    let reports =
        futures::future::join_all(pods.iter().map(|pod| instance_status(http, pod))).await;

    let mut shards: Vec<ShardObservation> = (0..app.spec.database.shards as u32)
        .map(|index| ShardObservation {
            index,
            ..ShardObservation::default()
        })
        .collect();
    for (pod, instance) in pods.iter().zip(reports) {
        let Some((index, ordinal)) = shard_and_ordinal(app, &pod.name_any()) else {
            continue;
        };
        if let Some(shard) = shards.get_mut(index as usize) {
            shard.pods.push(PodObservation {
                name: pod.name_any(),
                ordinal,
                role_label: pod.labels().get(ROLE_LABEL).cloned(),
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
            shard.volumes.insert(ordinal);
        }
    }
    for shard in &mut shards {
        shard.pods.sort_by_key(|pod| pod.ordinal);
    }
    Ok(shards)
}

/// `(shard, ordinal)` of a pod named `<name>-shard-<shard>-<ordinal>`.
fn shard_and_ordinal(app: &ValidatedApp, pod: &str) -> Option<(u32, u32)> {
    let rest = pod.strip_prefix(&format!("{}-shard-", app.name))?;
    let (shard, ordinal) = rest.split_once('-')?;
    Some((shard.parse().ok()?, ordinal.parse().ok()?))
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

/// Decides each shard's primary and the pods' role labels. Pure. While `paused`, nothing is
/// chosen or relabelled; what is recorded and reported is kept.
pub fn decide(
    app: &ValidatedApp,
    current: Option<&ScaledAppStatus>,
    observed: &[ShardObservation],
    paused: bool,
) -> Vec<ShardDecision> {
    observed
        .iter()
        .map(|shard| {
            let recorded = current
                .and_then(|status| status.shards.iter().find(|s| s.index == shard.index as i32))
                .and_then(|s| s.primary_pod.clone());
            let (primary_pod, waiting) = match recorded {
                Some(primary) => (Some(primary), None),
                None if paused => (None, Some("paused: no primary is chosen".to_string())),
                None => match first_primary(app, shard) {
                    Ok(primary) => (Some(primary), None),
                    Err(waiting) => (None, Some(waiting)),
                },
            };
            let relabel = match (&primary_pod, paused) {
                (Some(primary), false) => shard
                    .pods
                    .iter()
                    .filter_map(|pod| {
                        let role = if &pod.name == primary {
                            PRIMARY_ROLE
                        } else {
                            REPLICA_ROLE
                        };
                        (pod.role_label.as_deref() != Some(role)).then(|| (pod.name.clone(), role))
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let timeline = shard
                .pods
                .iter()
                .find(|pod| Some(&pod.name) == primary_pod.as_ref())
                .and_then(|pod| pod.instance.as_ref())
                .filter(|instance| instance.role == InstanceRole::Primary)
                .and_then(|instance| instance.timeline);
            ShardDecision {
                index: shard.index,
                primary_pod,
                waiting,
                timeline,
                instances: shard.pods.iter().map(summary).collect(),
                relabel,
            }
        })
        .collect()
}

/// The first primary of a shard, or why it cannot be chosen yet.
fn first_primary(app: &ValidatedApp, shard: &ShardObservation) -> Result<String, String> {
    let set = shard_set_name(app, shard.index);
    let with_data: Vec<&PodObservation> = shard
        .pods
        .iter()
        .filter(|pod| {
            pod.instance.as_ref().is_some_and(|instance| {
                instance.role != InstanceRole::Refused && instance.data_major_version.is_some()
            })
        })
        .collect();
    let silent: Vec<String> = shard
        .volumes
        .iter()
        .filter(|ordinal| {
            !shard
                .pods
                .iter()
                .any(|pod| pod.ordinal == **ordinal && pod.instance.is_some())
        })
        .map(|ordinal| format!("{set}-{ordinal}"))
        .collect();
    if with_data.is_empty() && shard.volumes.is_empty() {
        // Nothing was ever stored: the first pod initialises the shard.
        return Ok(format!("{set}-0"));
    }
    if !silent.is_empty() {
        return Err(format!(
            "volumes exist: waiting for {} to report their data before choosing a primary",
            silent.join(", ")
        ));
    }
    match with_data.iter().max_by_key(|pod| {
        let instance = pod.instance.as_ref().expect("filtered on a report");
        (
            instance.timeline.unwrap_or(0),
            instance.current_lsn.unwrap_or(0),
            // The lowest ordinal wins a tie.
            std::cmp::Reverse(pod.ordinal),
        )
    }) {
        Some(newest) => Ok(newest.name.clone()),
        // Every volume reported and none holds data (all empty, or all refused).
        None => Ok(format!("{set}-0")),
    }
}

fn summary(pod: &PodObservation) -> InstanceSummary {
    match &pod.instance {
        Some(instance) => InstanceSummary {
            pod: pod.name.clone(),
            role: format!("{:?}", instance.role),
            ready: instance.ready,
            lag_mib: instance
                .lag_bytes
                .map(|bytes| i64::try_from(bytes / (1024 * 1024)).unwrap_or(i64::MAX)),
            reclones: i64::from(instance.reclones),
            problem: instance
                .problem
                .as_ref()
                .map(|problem| format!("{}: {}", problem.reason, problem.message))
                .or_else(|| instance.last_reclone_reason.clone()),
        },
        None => InstanceSummary {
            pod: pod.name.clone(),
            role: "Unknown".into(),
            ..InstanceSummary::default()
        },
    }
}

/// Sets the role label of each pod in `decisions` that needs it; returns `Pod/name` of each.
pub async fn label(
    client: &Client,
    namespace: &str,
    metrics: &Metrics,
    decisions: &[ShardDecision],
) -> Result<Vec<String>, InstanceError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut labelled = Vec::new();
    for (pod, role) in decisions.iter().flat_map(|shard| shard.relabel.iter()) {
        let patch = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "labels": {ROLE_LABEL: role}},
        });
        metrics.record_write("Pod");
        pods.patch(
            pod,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| InstanceError::Label {
            namespace: namespace.to_string(),
            pod: pod.clone(),
            role,
            source,
        })?;
        labelled.push(format!("Pod/{pod} ({role})"));
    }
    Ok(labelled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ShardStatus;
    use crate::test_support::validated_example;
    use scaled_contract::instance::InstanceProblem;

    fn report(pod: &str, role: InstanceRole, data: Option<(u32, u64)>) -> InstanceStatus {
        InstanceStatus {
            pod: pod.into(),
            shard: 0,
            role,
            ready: role == InstanceRole::Primary || role == InstanceRole::Replica,
            server_major_version: Some(17),
            data_major_version: data.map(|_| 17),
            system_identifier: None,
            timeline: data.map(|(timeline, _)| timeline),
            current_lsn: data.map(|(_, lsn)| lsn),
            received_lsn: None,
            replayed_lsn: None,
            lag_bytes: None,
            lag_seconds: None,
            primary_pod: None,
            streaming_replicas: Vec::new(),
            problem: None,
            reclones: 0,
            last_reclone_reason: None,
        }
    }

    fn pod(ordinal: u32, instance: Option<InstanceStatus>) -> PodObservation {
        PodObservation {
            name: format!("shop-shard-0-{ordinal}"),
            ordinal,
            role_label: None,
            instance,
        }
    }

    fn shard(pods: Vec<PodObservation>, volumes: &[u32]) -> ShardObservation {
        ShardObservation {
            index: 0,
            pods,
            volumes: volumes.iter().copied().collect(),
        }
    }

    fn decide_one(shard: ShardObservation, current: Option<&ScaledAppStatus>) -> ShardDecision {
        let app = validated_example("shop");
        decide(&app, current, &[shard], false).remove(0)
    }

    #[test]
    fn a_new_shard_gets_its_first_pod_as_primary_before_any_pod_exists() {
        let decision = decide_one(shard(vec![], &[]), None);
        assert_eq!(decision.primary_pod.as_deref(), Some("shop-shard-0-0"));
        assert_eq!(decision.waiting, None);
    }

    #[test]
    fn kept_volumes_wait_for_every_instance_and_the_newest_data_wins() {
        let waiting = decide_one(
            shard(
                vec![pod(
                    0,
                    Some(report(
                        "shop-shard-0-0",
                        InstanceRole::Pending,
                        Some((1, 500)),
                    )),
                )],
                &[0, 1],
            ),
            None,
        );
        assert_eq!(waiting.primary_pod, None);
        assert!(
            waiting
                .waiting
                .as_deref()
                .is_some_and(|w| w.contains("shop-shard-0-1")),
            "{waiting:?}"
        );
        let chosen = decide_one(
            shard(
                vec![
                    pod(
                        0,
                        Some(report(
                            "shop-shard-0-0",
                            InstanceRole::Pending,
                            Some((1, 900)),
                        )),
                    ),
                    pod(
                        1,
                        Some(report(
                            "shop-shard-0-1",
                            InstanceRole::Pending,
                            Some((2, 100)),
                        )),
                    ),
                    pod(
                        2,
                        Some(report("shop-shard-0-2", InstanceRole::Pending, None)),
                    ),
                ],
                &[0, 1, 2],
            ),
            None,
        );
        assert_eq!(
            chosen.primary_pod.as_deref(),
            Some("shop-shard-0-1"),
            "a later timeline beats a larger position on an older one"
        );
    }

    #[test]
    fn a_refused_data_directory_is_never_chosen() {
        let mut refused = report("shop-shard-0-0", InstanceRole::Refused, Some((9, 9999)));
        refused.problem = Some(InstanceProblem {
            reason: "MajorVersionMismatch".into(),
            message: "data directory is version 15, server is 17".into(),
        });
        let decision = decide_one(
            shard(
                vec![
                    pod(0, Some(refused)),
                    pod(
                        1,
                        Some(report(
                            "shop-shard-0-1",
                            InstanceRole::Pending,
                            Some((1, 10)),
                        )),
                    ),
                ],
                &[0, 1],
            ),
            None,
        );
        assert_eq!(decision.primary_pod.as_deref(), Some("shop-shard-0-1"));
        assert_eq!(
            decision.instances[0].problem.as_deref(),
            Some("MajorVersionMismatch: data directory is version 15, server is 17")
        );
    }

    #[test]
    fn the_recorded_primary_is_kept_and_labels_follow_it() {
        let status = ScaledAppStatus {
            shards: vec![ShardStatus {
                index: 0,
                primary_pod: Some("shop-shard-0-2".into()),
                ..ShardStatus::default()
            }],
            ..ScaledAppStatus::default()
        };
        let mut labelled = pod(2, None);
        labelled.role_label = Some(PRIMARY_ROLE.into());
        let decision = decide_one(
            shard(vec![pod(0, None), pod(1, None), labelled], &[]),
            Some(&status),
        );
        assert_eq!(decision.primary_pod.as_deref(), Some("shop-shard-0-2"));
        assert_eq!(
            decision.relabel,
            vec![
                ("shop-shard-0-0".to_string(), REPLICA_ROLE),
                ("shop-shard-0-1".to_string(), REPLICA_ROLE),
            ],
            "only labels that differ are written"
        );
    }

    #[test]
    fn while_paused_nothing_is_chosen_or_relabelled() {
        let app = validated_example("shop");
        let decision = decide(&app, None, &[shard(vec![pod(0, None)], &[])], true).remove(0);
        assert_eq!(decision.primary_pod, None);
        assert!(decision.relabel.is_empty());
    }

    #[test]
    fn pod_names_give_their_shard_and_ordinal() {
        let app = validated_example("shop");
        assert_eq!(shard_and_ordinal(&app, "shop-shard-12-3"), Some((12, 3)));
        assert_eq!(shard_and_ordinal(&app, "shop-redis-0"), None);
        assert_eq!(shard_and_ordinal(&app, "shopping-shard-1-0"), None);
    }
}
