//! The rate limiter on `/api/data`: keyed by the signed-in user, else the client address; headers
//! the client controls do not move it to another bucket. With Redis stopped and
//! `failureMode: Local`, each pod limits each client itself.

use std::time::{Duration, Instant};

use reqwest::{StatusCode, header};
use scaled_contract::{FailureMode, RuntimeConfig};
use serde_json::Value;

use crate::support::{TestApp, app_with_own_redis, eventually};

/// `count` concurrent requests, each with the headers `headers(index)` gives.
async fn fire_with(
    app: &TestApp,
    count: usize,
    headers: impl Fn(usize) -> Vec<(&'static str, String)>,
) -> Vec<reqwest::Response> {
    let requests = (0..count).map(|index| {
        let mut request = app.client.get(format!("{}/api/data", app.address));
        for (name, value) in headers(index) {
            request = request.header(name, value);
        }
        request.send()
    });
    futures::future::join_all(requests)
        .await
        .into_iter()
        .map(|response| response.expect("sent"))
        .collect()
}

async fn fire(app: &TestApp, count: usize) -> Vec<reqwest::Response> {
    fire_with(app, count, |_| Vec::new()).await
}

fn allowed(responses: &[reqwest::Response]) -> usize {
    responses
        .iter()
        .filter(|response| response.status() == StatusCode::OK)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_through_two_pods_get_exactly_the_limit() {
    let first = TestApp::spawn().await;
    let second = first.another_pod().await;
    let (a, b) = tokio::join!(fire(&first, 30), fire(&second, 30));
    let responses: Vec<_> = a.into_iter().chain(b).collect();
    assert_eq!(allowed(&responses), 10);
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
    assert_eq!(allowed(&fire(&app, 25).await), 10);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(allowed(&fire(&app, 15).await), 10);
}

#[tokio::test]
async fn changing_x_client_id_or_spoofing_x_forwarded_for_gets_no_more_than_the_limit() {
    let app = TestApp::spawn().await;
    let responses = fire_with(&app, 30, |index| {
        vec![
            ("x-client-id", format!("client-{index}")),
            ("x-forwarded-for", format!("198.51.100.{index}")),
        ]
    })
    .await;
    assert_eq!(
        allowed(&responses),
        10,
        "no proxy is trusted by default, so every request counts against the peer address"
    );
    // Junk in those headers is not an error, and does not reach Redis as a key.
    let junk = fire_with(&app, 1, |_| {
        vec![
            ("x-client-id", "x".repeat(500)),
            ("x-forwarded-for", "*, ratelimit:user:1".into()),
        ]
    })
    .await;
    assert_eq!(junk[0].status(), StatusCode::TOO_MANY_REQUESTS);
    let mut redis = app.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("ratelimit:*")
        .query_async(&mut redis)
        .await
        .expect("keys");
    assert_eq!(keys, vec!["ratelimit:ip:127.0.0.1".to_string()]);
}

#[tokio::test]
async fn behind_one_trusted_proxy_only_the_address_it_appended_counts() {
    let app = TestApp::spawn_with(|config| config.rate_limit.trusted_proxy_hops = 1).await;
    // The client may prepend anything; the proxy appends the address it saw (198.51.100.7).
    let spoofing = fire_with(&app, 30, |index| {
        vec![(
            "x-forwarded-for",
            format!("203.0.113.{index}, 198.51.100.7"),
        )]
    })
    .await;
    assert_eq!(allowed(&spoofing), 10);
    // Another client behind the proxy has its own window, and IPv6 clients are counted per /64.
    let other = fire_with(&app, 1, |_| {
        vec![("x-forwarded-for", "198.51.100.8".into())]
    })
    .await;
    assert_eq!(other[0].status(), StatusCode::OK);
    let same_network = fire_with(&app, 20, |index| {
        vec![("x-forwarded-for", format!("2001:db8:5:6::{index:x}"))]
    })
    .await;
    assert_eq!(allowed(&same_network), 10);
}

#[tokio::test]
async fn a_signed_in_user_is_one_client_from_any_address() {
    let app = TestApp::spawn_with(|config| config.rate_limit.trusted_proxy_hops = 1).await;
    let user = app.create_user().await;
    let session = app.session_of(&user).await;
    let responses = fire_with(&app, 30, |index| {
        vec![
            ("x-forwarded-for", format!("198.51.100.{index}")),
            (header::COOKIE.as_str(), format!("sid={session}")),
        ]
    })
    .await;
    assert_eq!(allowed(&responses), 10);
    // The user's count is not an address's: the same address without the session still passes.
    let anonymous = fire_with(&app, 1, |_| {
        vec![("x-forwarded-for", "198.51.100.1".into())]
    })
    .await;
    assert_eq!(anonymous[0].status(), StatusCode::OK);
}

#[tokio::test]
async fn rate_limit_settings_are_reloaded_from_the_config_file_without_a_restart() {
    let app = TestApp::spawn().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("config.json");
    let mut config = app.config.clone();
    std::fs::write(&path, config.to_json()).expect("write");
    let mut settings = scaled_app::config::Settings::from_runtime(
        config.clone(),
        scaled_contract::Secret::new(crate::support::SESSION_SECRET),
    );
    settings.config_path = Some(path.clone());
    let application = scaled_app::startup::Application::build(settings)
        .await
        .expect("starts");
    let address = format!("http://{}", application.http_addr());
    let limiter = application.state().limiter.clone();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(application.run_until_stopped(shutdown.clone()));

    config.rate_limit.limit = 3;
    config.rate_limit.trusted_proxy_hops = 1;
    std::fs::write(&path, config.to_json()).expect("write");
    eventually(
        "the new rate-limit settings to be in force",
        Duration::from_secs(20),
        || async { (limiter.settings() == config.rate_limit).then_some(()) },
    )
    .await;
    let requests = (0..10).map(|_| {
        app.client
            .get(format!("{address}/api/data"))
            .header("x-forwarded-for", "198.51.100.99")
            .send()
    });
    let responses: Vec<_> = futures::future::join_all(requests)
        .await
        .into_iter()
        .map(|response| response.expect("sent"))
        .collect();
    assert_eq!(allowed(&responses), 3);
    assert!(
        responses
            .iter()
            .all(|response| response.status() != StatusCode::OK
                || response.headers()["x-ratelimit-limit"] == "3")
    );
    shutdown.cancel();
}

/// Local mode with a small limit and a short window, behind one trusted proxy (so that tests can
/// speak for several clients). Every decision first waits for Redis up to its budget (the
/// least, 250 ms, here), so the window is long beside it.
fn local_mode(config: &mut RuntimeConfig) {
    config.rate_limit.failure_mode = FailureMode::Local;
    config.rate_limit.limit = 5;
    config.rate_limit.window_seconds = 3;
    config.rate_limit.trusted_proxy_hops = 1;
    config.cache.redis_timeout_ms = 50;
}

/// `count` concurrent requests from the client at `address` (as the trusted proxy reports it).
async fn fire_from(app: &TestApp, count: usize, address: &str) -> Vec<reqwest::Response> {
    fire_with(app, count, |_| {
        vec![("x-forwarded-for", address.to_string())]
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_a_local_limiter_lets_exactly_the_limit_through_then_answers_429() {
    let (app, redis, _dir) = app_with_own_redis(local_mode).await;
    redis.stop();
    let responses = fire_from(&app, 12, "198.51.100.1").await;
    assert_eq!(allowed(&responses), 5);
    let (ok, refused): (Vec<_>, Vec<_>) = responses
        .into_iter()
        .partition(|response| response.status() == StatusCode::OK);
    let mut remaining: Vec<u32> = ok
        .iter()
        .map(|response| {
            assert_eq!(response.headers()["x-ratelimit-limit"], "5");
            response.headers()["x-ratelimit-remaining"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("a number")
        })
        .collect();
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        [0, 1, 2, 3, 4],
        "each allowed request counted once"
    );
    assert_eq!(refused.len(), 7);
    for response in refused {
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let headers = response.headers();
        let retry_after: u64 = headers["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!((1..=3).contains(&retry_after), "{retry_after}");
        assert_eq!(headers["x-ratelimit-limit"], "5");
        assert_eq!(headers["x-ratelimit-remaining"], "0");
        let body: Value = response.json().await.expect("a JSON error");
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    }
    // Every decision was the pod's own, and the refusals count as refusals.
    assert_eq!(
        app.metric("rate_limit_degraded_total", &[r#"mode="local""#])
            .await,
        12.0
    );
    assert_eq!(
        app.metric("rate_limit_degraded_total", &[r#"mode="fail_open""#])
            .await,
        0.0
    );
    assert_eq!(app.metric("rate_limit_rejections_total", &[]).await, 7.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_a_client_that_keeps_sending_is_allowed_again_once_the_window_passes() {
    let (app, redis, _dir) = app_with_own_redis(local_mode).await;
    redis.stop();
    let window = Duration::from_secs(3);
    let client = "198.51.100.2";
    let started = Instant::now();
    assert_eq!(allowed(&fire_from(&app, 5, client).await), 5);
    let counted = started.elapsed(); // every allowed request was counted by now
    // Hammer: refused until the oldest of the five leaves the window, and the refusals do not
    // hold it shut (if they counted, a client sending this often would never get through).
    let mut refused = 0;
    let reopened = loop {
        let response = &fire_from(&app, 1, client).await[0];
        if response.status() == StatusCode::OK {
            break started.elapsed();
        }
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        refused += 1;
        assert!(
            started.elapsed() < counted + window + Duration::from_secs(2),
            "still refused {:?} after the burst, with a {window:?} window ({refused} refusals)",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refused >= 3, "the client kept sending ({refused} refusals)");
    assert!(
        reopened >= window,
        "allowed again after {reopened:?}, inside the window"
    );
    // Once all five have left, the new window holds only the request that got through: four
    // more pass, the refusals took no place.
    tokio::time::sleep(
        (counted + window + Duration::from_millis(300)).saturating_sub(started.elapsed()),
    )
    .await;
    assert_eq!(allowed(&fire_from(&app, 10, client).await), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_a_local_limiter_limits_each_client_apart() {
    let (app, redis, _dir) = app_with_own_redis(|config| {
        local_mode(config);
        config.rate_limit.window_seconds = 60;
    })
    .await;
    redis.stop();
    let (first, second) = tokio::join!(
        fire_from(&app, 10, "198.51.100.3"),
        fire_from(&app, 10, "198.51.100.4")
    );
    assert_eq!(allowed(&first), 5);
    assert_eq!(allowed(&second), 5);
    // One client used up does not use up another.
    assert_eq!(allowed(&fire_from(&app, 3, "198.51.100.5").await), 3);
    // The key is the Redis limiter's: an IPv6 client is one client across its /64.
    let same_network = fire_with(&app, 10, |index| {
        vec![("x-forwarded-for", format!("2001:db8:7:8::{index:x}"))]
    })
    .await;
    assert_eq!(allowed(&same_network), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_redis_returns_a_local_limiter_counts_in_redis_again() {
    let (app, redis, _dir) = app_with_own_redis(|config| {
        local_mode(config);
        config.rate_limit.window_seconds = 60;
    })
    .await;
    let client = "198.51.100.6";
    redis.stop();
    assert_eq!(allowed(&fire_from(&app, 8, client).await), 5);
    // The restarted Redis is empty, while this pod's own window for the client is full for a
    // minute: a request let through now was counted in Redis.
    redis.start();
    eventually(
        "a request counted in Redis again",
        Duration::from_secs(20),
        || async { (fire_from(&app, 1, client).await[0].status() == StatusCode::OK).then_some(()) },
    )
    .await;
    let local = app
        .metric("rate_limit_degraded_total", &[r#"mode="local""#])
        .await;
    let responses = fire_from(&app, 10, client).await;
    assert_eq!(allowed(&responses), 4, "Redis's limit: 5 with the first");
    assert_eq!(
        app.metric("rate_limit_degraded_total", &[r#"mode="local""#])
            .await,
        local,
        "no decision taken locally once Redis answered"
    );
    let mut connection = app.redis().await;
    let counted: u64 = redis::cmd("ZCARD")
        .arg(format!("ratelimit:ip:{client}"))
        .query_async(&mut connection)
        .await
        .expect("zcard");
    assert_eq!(counted, 5);
}
