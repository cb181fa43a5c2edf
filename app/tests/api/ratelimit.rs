//! The rate limiter on `/api/data`.

use std::time::Duration;

use reqwest::StatusCode;

use crate::support::TestApp;

async fn fire(app: &TestApp, client: &str, count: usize) -> Vec<reqwest::Response> {
    let requests = (0..count).map(|_| {
        app.client
            .get(format!("{}/api/data", app.address))
            .header("x-client-id", client)
            .send()
    });
    futures::future::join_all(requests)
        .await
        .into_iter()
        .map(|response| response.expect("sent"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_through_two_pods_get_exactly_the_limit() {
    let first = TestApp::spawn().await;
    let second = first.another_pod().await;
    let (a, b) = tokio::join!(
        fire(&first, "shared-client", 30),
        fire(&second, "shared-client", 30)
    );
    let responses: Vec<_> = a.into_iter().chain(b).collect();
    let allowed = responses
        .iter()
        .filter(|response| response.status() == StatusCode::OK)
        .count();
    assert_eq!(allowed, 10);
    let rejected: Vec<_> = responses
        .iter()
        .filter(|response| response.status() == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(rejected.len(), 50);
    for response in rejected {
        let headers = response.headers();
        let retry_after: u64 = headers["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!((1..=60).contains(&retry_after));
        assert_eq!(headers["x-ratelimit-limit"], "10");
        assert_eq!(headers["x-ratelimit-remaining"], "0");
    }
    let ok = responses
        .iter()
        .find(|response| response.status() == StatusCode::OK)
        .expect("one allowed");
    assert_eq!(ok.headers()["x-ratelimit-limit"], "10");
    assert!(ok.headers().contains_key("x-ratelimit-remaining"));
    assert!(
        first.metric("rate_limit_rejections_total", &[]).await
            + second.metric("rate_limit_rejections_total", &[]).await
            == 50.0
    );
}

#[tokio::test]
async fn rejected_requests_do_not_count_against_the_next_window() {
    let app = TestApp::spawn_with(|config| config.rate_limit.window_seconds = 1).await;
    let first = fire(&app, "patient", 25).await;
    assert_eq!(
        first
            .iter()
            .filter(|response| response.status() == StatusCode::OK)
            .count(),
        10
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = fire(&app, "patient", 15).await;
    assert_eq!(
        second
            .iter()
            .filter(|response| response.status() == StatusCode::OK)
            .count(),
        10
    );
}

#[tokio::test]
async fn clients_are_limited_separately_and_a_bad_client_id_is_400() {
    let app = TestApp::spawn().await;
    fire(&app, "greedy", 12).await;
    let other = fire(&app, "modest", 1).await;
    assert_eq!(other[0].status(), StatusCode::OK);
    let bad = app
        .client
        .get(format!("{}/api/data", app.address))
        .header("x-client-id", "x".repeat(500))
        .send()
        .await
        .expect("sent");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}
