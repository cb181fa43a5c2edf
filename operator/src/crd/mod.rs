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

/// Longest ScaledApp name: the longest child, `<name>-shard-63-replica`, must stay within the
/// 52 characters a StatefulSet name may have (its pods get a 63-character revision label).
pub const MAX_NAME_LENGTH: usize = 30;

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

    #[test]
    fn the_primary_record_has_the_field_name_the_instance_managers_read() {
        let shard = ShardStatus {
            primary_pod: Some("shop-shard-0-1".into()),
            ..ShardStatus::default()
        };
        let json = serde_json::to_value(&shard).expect("serialises");
        assert_eq!(
            json[scaled_contract::instance::PRIMARY_POD_FIELD],
            "shop-shard-0-1"
        );
    }
}
