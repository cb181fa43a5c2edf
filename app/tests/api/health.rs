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

#[tokio::test]
async fn odd_methods_and_unknown_paths_add_no_metric_series() {
    let app = TestApp::spawn().await;
    let series = |text: &str| {
        text.lines()
            .filter(|line| line.starts_with("http_requests_total{"))
            .count()
    };
    let scrape = || async {
        app.client
            .get(format!("{}/metrics", app.metrics_address))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text")
    };
    let odd = |index: usize| {
        reqwest::Method::from_bytes(format!("X{}{index}", crate::support::hex_token()).as_bytes())
            .expect("a method token")
    };
    // One of each kind first, so the "other" and "unmatched" series exist.
    app.client
        .request(odd(0), format!("{}/health", app.address))
        .send()
        .await
        .expect("sent");
    app.get("/no/such/path/0").await;
    let before = scrape().await;
    for index in 1..=100 {
        let response = app
            .client
            .request(odd(index), format!("{}/health", app.address))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        app.get(&format!("/no/such/path/{}", crate::support::hex_token()))
            .await;
    }
    let after = scrape().await;
    assert_eq!(series(&after), series(&before), "{after}");
    assert!(after.contains(r#"method="other""#), "{after}");
    assert!(!after.contains("method=\"X"), "{after}");
    assert!(!after.contains("/no/such/path"), "{after}");
}
