//! Probes.

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::TestApp;

#[tokio::test]
async fn health_answers_ok() {
    let app = TestApp::spawn().await;
    let response = app.get("/health").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn ready_reports_every_shard_primary_up() {
    let app = TestApp::spawn().await;
    let response = app.get("/ready").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    let shards = body["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 2);
    assert!(
        shards.iter().all(|shard| shard["primary"] == "up"),
        "{body}"
    );
}

#[tokio::test]
async fn metrics_are_served_on_the_metrics_port_with_route_templates_as_labels() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    app.get(&format!("/api/users/{}", user["id"])).await;
    app.get("/no/such/path/12345").await;
    let text = app
        .client
        .get(format!("{}/metrics", app.metrics_address))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    assert!(text.contains(r#"route="/api/users/{id}""#), "{text}");
    assert!(text.contains(r#"route="unmatched""#), "{text}");
    assert!(!text.contains("12345"), "raw paths must not become labels");
    for name in [
        "http_request_duration_seconds",
        "cache_lookups_total",
        "db_pool_connections",
        "queue_depth",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    // The API port does not serve metrics.
    assert_eq!(app.get("/metrics").await.status(), StatusCode::NOT_FOUND);
}
