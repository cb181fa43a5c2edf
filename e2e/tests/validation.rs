//! Invalid ScaledApps are refused by the API server itself (schema and CEL rules), with a
//! message that says what to fix: one case per rule.

use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use scaled_e2e::*;
use scaledapp_operator::crd::ScaledApp;
use serde_json::{Value, json};

/// The shop example as raw JSON with `change` applied (raw, because some invalid values cannot
/// even be expressed in the Rust types).
fn shop_with(change: impl FnOnce(&mut Value)) -> DynamicObject {
    let mut value = serde_json::to_value(example("shop")).expect("json");
    change(&mut value);
    serde_json::from_value(value).expect("an object with metadata")
}

fn raw_apps(client: &Client, namespace: &TestNamespace) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        &namespace.name,
        &ApiResource::erase::<ScaledApp>(&()),
    )
}

async fn refused(client: &Client, namespace: &TestNamespace, app: DynamicObject, expected: &str) {
    let error = raw_apps(client, namespace)
        .create(&PostParams::default(), &app)
        .await
        .expect_err("the API server must refuse this ScaledApp");
    let message = error.to_string();
    assert!(
        message.contains(expected),
        "expected {expected:?} in: {message}"
    );
}

#[tokio::test]
async fn the_api_server_refuses_each_invalid_spec_with_what_to_fix() {
    let client = client().await;
    let namespace = TestNamespace::create(&client, "validation").await;
    let apps = raw_apps(&client, &namespace);
    let cases: Vec<(&str, DynamicObject, &str)> = vec![
        (
            "name too long",
            shop_with(|v| v["metadata"]["name"] = json!("a-name-that-is-longer-than-thirty-chars")),
            "must be at most 30 characters",
        ),
        (
            "app min > max",
            shop_with(|v| v["spec"]["app"]["replicas"] = json!({"min": 10, "max": 5})),
            "replicas.min must be less than or equal to replicas.max",
        ),
        (
            "worker min > max",
            shop_with(|v| v["spec"]["workers"][0]["replicas"] = json!({"min": 3, "max": 1})),
            "replicas.min must be less than or equal to replicas.max",
        ),
        (
            "duplicate worker pool",
            shop_with(|v| {
                v["spec"]["workers"][1]["name"] = v["spec"]["workers"][0]["name"].clone()
            }),
            "Duplicate value",
        ),
        (
            "worker name not a DNS label",
            shop_with(|v| v["spec"]["workers"][0]["name"] = json!("Email_Pool")),
            "spec.workers[0].name",
        ),
        (
            "worker name too long",
            shop_with(|v| v["spec"]["workers"][0]["name"] = json!("a-very-long-pool-name")),
            "may not be more than 15",
        ),
        (
            "queue the app has no handler for",
            shop_with(|v| v["spec"]["workers"][0]["queues"] = json!(["email:send", "sms:send"])),
            "may only name queues the app handles: email:send, analytics:track",
        ),
        (
            "queue name malformed",
            shop_with(|v| v["spec"]["workers"][0]["queues"] = json!(["Email Send"])),
            "spec.workers[0].queues[0]",
        ),
        (
            "reserved env name",
            shop_with(|v| {
                v["spec"]["app"]["env"] = json!([{"name": "SCALED_CONFIG", "value": "x"}])
            }),
            "reserved for the operator",
        ),
        (
            "both in-cluster and external Redis",
            shop_with(|v| {
                v["spec"]["cache"]["externalRedis"] = json!({"url": "redis://cache:6379"})
            }),
            "set either cache.redis",
        ),
        (
            "fewer slots than shards",
            shop_with(|v| v["spec"]["database"]["slots"] = json!(1)),
            "slots must be at least database.shards",
        ),
        (
            "synchronous replication without replicas",
            shop_with(|v| {
                v["spec"]["database"]["synchronousReplication"] = json!(true);
                v["spec"]["database"]["replicasPerShard"] = json!(0);
            }),
            "synchronousReplication needs replicasPerShard >= 1",
        ),
        (
            "a session lifetime shorter than its idle timeout",
            shop_with(|v| {
                v["spec"]["sessions"] = json!({"ttlSeconds": 7200, "maxLifetimeSeconds": 3600});
            }),
            "sessions.maxLifetimeSeconds must be at least sessions.ttlSeconds",
        ),
        (
            "CPU target out of range",
            shop_with(|v| v["spec"]["autoscaling"]["targetCpuUtilizationPercent"] = json!(5)),
            "should be greater than or equal to 10",
        ),
        (
            "too many shards",
            shop_with(|v| v["spec"]["database"]["shards"] = json!(65)),
            "should be less than or equal to 64",
        ),
        (
            "credentials in the external Redis URL",
            shop_with(|v| {
                v["spec"]["cache"]["redis"] = Value::Null;
                v["spec"]["cache"]["externalRedis"] =
                    json!({"url": "redis://user:secret@cache:6379"});
            }),
            "spec.cache.externalRedis.url",
        ),
        (
            "malformed CPU quantity",
            shop_with(|v| v["spec"]["app"]["resources"]["requests"]["cpu"] = json!("lots")),
            "spec.app.resources.requests.cpu",
        ),
        (
            "unknown rate-limit failure mode",
            shop_with(|v| v["spec"]["rateLimit"]["failureMode"] = json!("FailSometimes")),
            "Unsupported value",
        ),
    ];
    let mut failures = Vec::new();
    for (case, app, expected) in cases {
        let result = apps.create(&PostParams::default(), &app).await;
        match result {
            Ok(_) => failures.push(format!("{case}: accepted")),
            Err(error) if !error.to_string().contains(expected) => {
                failures.push(format!("{case}: message lacks {expected:?}: {error}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    namespace.delete().await;
}

#[tokio::test]
async fn shards_and_slots_cannot_be_changed_after_creation() {
    let client = client().await;
    let namespace = TestNamespace::create(&client, "immutable").await;
    let apps = namespace.apps();
    apps.create(&PostParams::default(), &example("shop"))
        .await
        .expect("valid shop");
    for (field, value, expected) in [
        ("shards", 3, "resharding"),
        ("slots", 2048, "database.slots is immutable"),
    ] {
        let patch = json!({"spec": {"database": {field: value}}});
        let error = apps
            .patch("shop", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect_err("change must be refused");
        assert!(error.to_string().contains(expected), "{field}: {error}");
    }
    // Unrelated changes still go through.
    apps.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"database": {"replicasPerShard": 1}}})),
    )
    .await
    .expect("replica count may change");
    refused(
        &client,
        &namespace,
        shop_with(|v| v["metadata"]["name"] = json!("Bad_Name")),
        "metadata.name",
    )
    .await;
    namespace.delete().await;
}
