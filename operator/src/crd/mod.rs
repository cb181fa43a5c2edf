//! The `ScaledApp` API (`scaled.dev/v1alpha1`): spec, status, printer columns and the schema/CEL
//! rules that make the API server refuse an invalid ScaledApp with a message saying what to fix.
//!
//! Every field's doc comment becomes `kubectl explain` text, and every default here is written
//! into the schema, so what a user reads back with `kubectl get -o yaml` is what the operator uses.

mod app;
mod autoscaling;
mod cache;
mod cdn;
mod common;
mod database;
mod rate_limit;
mod sessions;
mod spec;
mod status;
mod workers;

pub use app::*;
pub use autoscaling::*;
pub use cache::*;
pub use cdn::*;
pub use common::*;
pub use database::*;
pub use rate_limit::*;
pub use sessions::*;
pub use spec::*;
pub use status::*;
pub use workers::*;

/// The CustomResourceDefinition as installed: `ScaledApp::crd()` with doc-comment line breaks
/// inside paragraphs joined, so `kubectl explain` wraps the text itself.
pub fn custom_resource_definition()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    fn join_lines(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    match child {
                        serde_json::Value::String(text) if key == "description" => {
                            *text = text
                                .split("\n\n")
                                .map(|paragraph| {
                                    paragraph
                                        .split('\n')
                                        .map(str::trim)
                                        .collect::<Vec<_>>()
                                        .join(" ")
                                })
                                .collect::<Vec<_>>()
                                .join("\n\n");
                        }
                        _ => join_lines(child),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(join_lines),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(spec::ScaledApp::crd()).expect("the CRD serialises");
    join_lines(&mut value);
    serde_json::from_value(value).expect("joining lines keeps the CRD valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_have_no_line_breaks_inside_paragraphs() {
        let yaml = serde_json::to_string(&custom_resource_definition()).expect("json");
        assert!(yaml.contains("Number of shards. Each shard is a primary with its own replicas and owns a share of the slots."));
    }

    /// The instance managers read the primary record with the contract's view of a ScaledApp,
    /// not with these types: what the operator writes must parse into it, field for field.
    #[test]
    fn the_instance_managers_view_reads_the_primary_records_the_operator_writes() {
        use scaled_contract::instance::ScaledAppView;

        let mut app = crate::test_support::example("shop");
        let read = |app: &ScaledApp| -> ScaledAppView {
            let json = serde_json::to_string(app).expect("a ScaledApp serialises");
            serde_json::from_str(&json).expect("the contract's view parses it")
        };
        assert_eq!(read(&app).shard(0), None, "no status yet");
        app.status = Some(ScaledAppStatus::default());
        assert_eq!(read(&app).shard(0), None, "a status without shards");

        app.status = Some(ScaledAppStatus {
            observed_generation: Some(3),
            shards: vec![
                ShardStatus {
                    index: 0,
                    slots: 8,
                    slot_ranges: "0-7".into(),
                    primary_pod: Some("shop-shard-0-1".into()),
                    primary_pod_uid: Some("uid-1".into()),
                    timeline: Some(2),
                    ..ShardStatus::default()
                },
                ShardStatus {
                    index: 1,
                    primary_pod: Some("shop-shard-1-0".into()),
                    ..ShardStatus::default()
                },
                ShardStatus {
                    index: 2,
                    waiting: Some("volumes exist".into()),
                    ..ShardStatus::default()
                },
            ],
            ..ScaledAppStatus::default()
        });
        let view = read(&app);
        let written = &app.status.as_ref().expect("set above").shards;
        for shard in written {
            let index = u32::try_from(shard.index).expect("a shard index");
            let record = view.shard(index).expect("every written shard is read");
            assert_eq!(record.index, shard.index);
            assert_eq!(record.primary_pod, shard.primary_pod);
            assert_eq!(record.primary_pod_uid, shard.primary_pod_uid);
        }
        assert_eq!(
            view.shard(0)
                .and_then(|shard| shard.primary_pod_uid.as_deref()),
            Some("uid-1")
        );
        assert_eq!(view.shard(3), None);
    }
}
