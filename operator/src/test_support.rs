//! Fixtures for unit tests: the checked-in examples, as the API server would hand them over.

use std::convert::Infallible;
use std::future::{Future, ready};
use std::path::PathBuf;

use futures::FutureExt;
use kube::ResourceExt;

use crate::apply::Changes;
use crate::children::{Applied, Children, Live, LiveObject, Rendered, Step};
use crate::crd::ScaledApp;
use crate::kinds::Child;
use crate::postgres::{ShardDecision, Topology};
use crate::status::{Observed, Outcome};
use crate::validate::{Defaults, ValidatedApp, validate};

/// Path of `examples/<name>.yaml`.
pub fn example_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(format!("{name}.yaml"))
}

/// `examples/<name>.yaml` with the metadata a cluster would add.
pub fn example(name: &str) -> ScaledApp {
    let text = std::fs::read_to_string(example_path(name)).expect("example exists");
    let mut app: ScaledApp = serde_yaml::from_str(&text).expect("example parses");
    app.metadata.namespace = Some("default".into());
    app.metadata.uid = Some(format!("uid-{name}"));
    app.metadata.generation = Some(1);
    app
}

/// `examples/<name>.yaml`, validated.
pub fn validated_example(name: &str) -> ValidatedApp {
    validate(&example(name), &Defaults::default()).expect("example is valid")
}

/// Children as a fresh cluster reports them: none exists yet.
pub fn nothing_yet(rendered: &Children<Rendered>) -> Children<Live> {
    struct Missing;
    impl Step<Rendered, Live> for Missing {
        type Error = Infallible;
        fn child<K: Child>(
            &mut self,
            child: &K,
        ) -> impl Future<Output = Result<LiveObject<K>, Infallible>> + Send {
            ready(Ok(LiveObject {
                name: child.name_any(),
                object: None,
            }))
        }
    }
    let Ok(live) = rendered
        .map(&mut Missing)
        .now_or_never()
        .expect("never waits");
    live
}

/// Children as applied, every workload reporting all its replicas ready: StatefulSets at their
/// spec, Deployments left to an HPA at 3 (the app) or 1 (worker pools).
pub fn all_ready(rendered: &Children<Rendered>) -> Children<Applied> {
    struct Ready;
    impl Step<Rendered, Applied> for Ready {
        type Error = Infallible;
        fn child<K: Child>(
            &mut self,
            child: &K,
        ) -> impl Future<Output = Result<K, Infallible>> + Send {
            let mut object = serde_json::to_value(child).expect("serialises");
            object["metadata"]["generation"] = 1.into();
            let replicas = |object: &serde_json::Value, unset: i64| {
                object["spec"]["replicas"].as_i64().unwrap_or(unset)
            };
            match K::KIND {
                "Deployment" => {
                    let name = child.name_any();
                    let replicas = replicas(&object, if name.ends_with("-app") { 3 } else { 1 });
                    object["spec"]["replicas"] = replicas.into();
                    object["status"] = serde_json::json!({"observedGeneration": 1,
                        "readyReplicas": replicas, "updatedReplicas": replicas, "replicas": replicas});
                }
                "StatefulSet" => {
                    let replicas = replicas(&object, 1);
                    object["status"] = serde_json::json!({"observedGeneration": 1,
                        "readyReplicas": replicas, "updatedReplicas": replicas, "replicas": replicas});
                }
                _ => {}
            }
            ready(Ok(
                serde_json::from_value(object).expect("still the same kind")
            ))
        }
    }
    let Ok(applied) = rendered
        .map(&mut Ready)
        .now_or_never()
        .expect("never waits");
    applied
}

/// The outcome of a pass that applied (or read) `children` of `app`, with every shard's first
/// pod chosen as primary.
pub fn applied(app: &ValidatedApp, children: Observed) -> Outcome {
    let shards = (0..app.shards)
        .map(|index| ShardDecision {
            index,
            primary_pod: Some(scaled_contract::instance::pod_name(
                &crate::names::shard_set_name(&app.name, index),
                0,
            )),
            ..ShardDecision::default()
        })
        .collect();
    Outcome::Applied {
        app: Box::new(app.clone()),
        children,
        changes: Changes::default(),
        topology: Topology {
            shards,
            ..Topology::default()
        },
        redis: None,
        session_rotation: Default::default(),
    }
}
