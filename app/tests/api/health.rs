//! Probes.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{RedisServer, Stack, TestApp, eventually, free_port, test_config};

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
    assert_eq!(body["redis"], "up", "{body}");
    assert_eq!(body["reachedDependencies"], true, "{body}");
}

async fn ready_body(app: &TestApp) -> (StatusCode, Value) {
    let response = app.get("/ready").await;
    let status = response.status();
    (status, response.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_never_reached_redis_is_not_ready_and_once_ready_its_first_sign_in_and_order_succeed()
 {
    let stack = Stack::shared();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let redis = RedisServer::stopped(dir.path());
    let database = stack.create_database().await;
    let mut config = test_config(stack, &database, 0);
    config.redis.url = redis.url(0);
    let app = TestApp::start_config(config).await;

    // Several probes, as the kubelet would send: none lets the pod into the Service.
    for _ in 0..3 {
        let (status, body) = ready_body(&app).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["status"], "starting", "{body}");
        assert_eq!(body["redis"], "down", "{body}");
        assert_eq!(body["reachedDependencies"], false, "{body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    redis.start();
    app.wait_until_ready().await;
    // The first signed-in write after the first 200 succeeds: no retry, as a client sees it.
    let user = app.create_user().await;
    let session = app
        .post(
            "/api/sessions",
            &json!({ "email": user["email"], "password": crate::support::PASSWORD }),
        )
        .await;
    assert_eq!(session.status(), StatusCode::CREATED, "the first sign-in");
    let cookie = session.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .split(';')
        .next()
        .expect("a cookie")
        .to_string();
    let order = app
        .client
        .post(format!("{}/api/orders", app.address))
        .header("cookie", cookie)
        .json(&json!({ "items": [{ "sku": "a", "quantity": 1 }], "total": 1 }))
        .send()
        .await
        .expect("sent");
    assert_eq!(order.status(), StatusCode::CREATED, "the first order");

    // Losing Redis later degrades the pod; it stays in the Service.
    redis.stop();
    let (status, body) = ready_body(&app).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["redis"], "down", "{body}");
    assert_eq!(body["reachedDependencies"], true, "{body}");
}

#[tokio::test]
async fn a_pod_that_never_reached_one_of_its_shard_primaries_is_not_ready() {
    let stack = Stack::shared();
    let database = stack.create_database().await;
    let mut config = test_config(stack, &database, 0);
    // Shard 1's primary address answers nothing; shard 0 and Redis are up.
    config.shard_map.shards[1].primary = format!("127.0.0.1:{}", free_port());
    let app = TestApp::start_config(config).await;
    eventually(
        "a probe that found Redis up",
        Duration::from_secs(10),
        || async {
            let (_, body) = ready_body(&app).await;
            (body["redis"] == "up").then_some(())
        },
    )
    .await;
    for _ in 0..3 {
        let (status, body) = ready_body(&app).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["status"], "starting", "{body}");
        assert_eq!(body["shards"][0]["primary"], "up", "{body}");
        assert_eq!(body["shards"][1]["primary"], "down", "{body}");
    }
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
