//! Faults: Redis down or failed over, replicas down or lagging, a primary down, a worker killed
//! mid-message.
//! Tests that break a shared component use a stack (or a Redis) of their own.

use std::{
    process::{Child, Command},
    time::{Duration, Instant},
};

use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    Forwarder, RedisPair, Stack, TestApp, app_on, eventually, hex_token, own_stack, session_key,
    test_config,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_reads_and_sign_ups_succeed_quickly_sign_ins_get_503_and_the_outbox_is_relayed_later()
 {
    let stack = own_stack();
    let app = app_on(&stack, |config| config.cache.redis_timeout_ms = 50).await;
    let user = app.create_user().await;
    let user_id = user["id"].as_i64().expect("id");
    let path = format!("/api/users/{user_id}");
    assert_eq!(app.get(&path).await.status(), StatusCode::OK);
    app.session_of(&user).await;

    stack.redis.stop();
    let bounded = Duration::from_millis(1500);
    let started = Instant::now();
    let read = app.get(&path).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert!(
        started.elapsed() < bounded,
        "read took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let second = app.create_user().await;
    assert!(second["id"].as_i64().is_some(), "sign-up needs no Redis");
    assert!(started.elapsed() < bounded);

    // Opening a session needs Redis: signing in answers 503 with Retry-After, quickly, rather
    // than hang, 500, or hand out a session nobody can revoke. (Signed-in requests go on: the
    // next test.)
    let started = Instant::now();
    let session = app
        .post(
            "/api/sessions",
            &json!({ "email": user["email"], "password": crate::support::PASSWORD }),
        )
        .await;
    assert_eq!(session.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(session.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < bounded,
        "the refusal took {:?}",
        started.elapsed()
    );
    // The limiter fails open by configuration.
    assert_eq!(app.get("/api/data").await.status(), StatusCode::OK);

    // What was committed as Redis went away (an order and an edit, with their outbox rows) is
    // relayed when it returns.
    let order = scaled_app::db::orders::place(
        &app.state.cluster,
        user_id,
        &json!([{ "sku": "a", "quantity": 1 }]),
        500,
        scaled_app::db::orders::OrderStreams {
            email: scaled_app::queue::EMAIL_STREAM,
            analytics: scaled_app::queue::ANALYTICS_STREAM,
        },
    )
    .await
    .expect("the order commits without Redis");
    assert!(matches!(order, scaled_app::db::orders::Placed::Order(_)));
    let edited =
        scaled_app::db::users::update(&app.state.cluster, user_id, Some("Offline edit"), None)
            .await
            .expect("the edit commits without Redis");
    let scaled_app::db::users::Updated::User(_, token) = edited else {
        panic!("the edit commits without Redis: {edited:?}");
    };
    // As the handler does: this pod's entry goes now, the shared half waits in the outbox.
    app.state
        .cache
        .invalidate_after_write(user_id, token.lsn)
        .await;
    app.state.relay_wake.notify_one();
    eventually(
        "the edit to be served from the database, not a stale cache",
        Duration::from_secs(10),
        || async {
            let read: Value = app.get(&path).await.json().await.ok()?;
            (read["name"] == "Offline edit").then_some(())
        },
    )
    .await;

    stack.redis.start();
    let mut redis = app.redis().await;
    eventually(
        "the outbox to reach Redis after it returned",
        Duration::from_secs(15),
        || {
            let mut redis = redis.clone();
            async move {
                let email: u64 = redis.xlen("email:send").await.ok()?;
                let analytics: u64 = redis.xlen("analytics:track").await.ok()?;
                (email == 1 && analytics == 1).then_some(())
            }
        },
    )
    .await;
    // The invalidation of the offline edit was relayed too: its generation is set.
    let generation: Option<u64> = redis.get(format!("user:{user_id}:gen")).await.expect("get");
    assert!(generation.is_some_and(|generation| generation > 0));
}

/// Places an order with the session cookie `token`.
async fn order_with(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .post(format!("{}/api/orders", app.address))
        .header(reqwest::header::COOKIE, format!("sid={token}"))
        .json(&json!({ "items": [{ "sku": "a", "quantity": 1 }], "total": 5 }))
        .send()
        .await
        .expect("request sent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_away_a_signed_in_user_keeps_ordering_and_revocations_apply_once_it_returns() {
    let stack = own_stack();
    let app = app_on(&stack, |config| config.cache.redis_timeout_ms = 50).await;
    let user = app.create_user().await;
    let user_id = user["id"].as_i64().expect("id");
    let token = app.session_of(&user).await;
    // A second session of the same user, signed out before the outage.
    let signed_out = app
        .post(
            "/api/sessions",
            &json!({ "email": user["email"], "password": crate::support::PASSWORD }),
        )
        .await;
    let signed_out = crate::support::session_cookie(&signed_out).expect("a second session");
    let removed = app
        .client
        .delete(format!("{}/api/sessions/current", app.address))
        .header(reqwest::header::COOKIE, format!("sid={signed_out}"))
        .send()
        .await
        .expect("request sent");
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        order_with(&app, &signed_out).await.status(),
        StatusCode::UNAUTHORIZED,
        "signed out"
    );
    // A token whose absolute lifetime is over (signed in two days ago), and a forged one.
    let expired = app
        .state
        .sessions
        .create(
            &scaled_app::sessions::new_data(
                user_id,
                0,
                chrono::Utc::now() - chrono::TimeDelta::days(2),
            ),
            None,
        )
        .await
        .expect("stored");
    let forged = token.replacen(&format!(".{user_id}."), &format!(".{}.", user_id + 1), 1);
    assert_ne!(forged, token);

    // Redis away but its data kept, as a persisted Redis comes back after a restart (this
    // test's Redis persists nothing, so a restart would end every session and prove nothing
    // about revocations): every command waits 8 s, far past the app's 50 ms budget.
    let mut redis = app.redis().await;
    let pause = Duration::from_secs(8);
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(pause.as_millis() as u64)
        .arg("ALL")
        .query_async(&mut redis)
        .await
        .expect("CLIENT PAUSE");
    let paused = Instant::now();
    let mut acknowledged = 0;
    let started = Instant::now();
    for _ in 0..5 {
        let order = order_with(&app, &token).await;
        assert_eq!(
            order.status(),
            StatusCode::CREATED,
            "an order while Redis is away"
        );
        acknowledged += 1;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "five orders took {:?}",
        started.elapsed()
    );
    assert_eq!(
        app.put_as(
            &user,
            &format!("/api/users/{user_id}"),
            &json!({ "name": "Offline" })
        )
        .await
        .status(),
        StatusCode::OK,
        "an edit while Redis is away"
    );
    // The stated cost: a session signed out before the outage cannot be told from a live one
    // while Redis is away, so its signature carries it.
    let revoked = order_with(&app, &signed_out).await;
    assert_eq!(revoked.status(), StatusCode::CREATED);
    acknowledged += 1;
    // Forged and expired tokens are refused whatever Redis does.
    assert_eq!(
        order_with(&app, &forged).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        order_with(&app, &expired).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let offline = app.metric("sessions_verified_offline_total", &[]).await;
    assert!(offline >= 7.0, "offline verifications counted: {offline}");
    assert!(
        paused.elapsed() < pause,
        "the outage ended before the test was done with it ({:?})",
        paused.elapsed()
    );

    // Once Redis answers, the signed-out session is refused again and the live one works on.
    // Until then it is carried on its signature, and what it orders is acknowledged too.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match order_with(&app, &signed_out).await.status() {
            StatusCode::CREATED => acknowledged += 1,
            StatusCode::UNAUTHORIZED => break,
            other => panic!("the signed-out session got {other}"),
        }
        assert!(
            Instant::now() < deadline,
            "the signed-out session was still honoured 15 s after the outage began"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(order_with(&app, &token).await.status(), StatusCode::CREATED);
    acknowledged += 1;
    assert_eq!(
        order_with(&app, &forged).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Every acknowledged order is in Postgres exactly once.
    let pool = app.pool_on(&stack.shards[app.shard_of(user_id) as usize].primary);
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(count, acknowledged);
}

#[tokio::test]
async fn with_redis_stopped_a_fail_closed_limiter_answers_503() {
    let stack = own_stack();
    let app = app_on(&stack, |config| {
        config.rate_limit.failure_mode = scaled_contract::FailureMode::FailClosed;
    })
    .await;
    stack.redis.stop();
    let response = app.get("/api/data").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    // Counted as a Redis failure, not as a database error.
    let dependency = |name: &'static str| {
        let app = &app;
        async move { app.metric("http_dependency_failures_total", &[name]).await }
    };
    assert_eq!(dependency(r#"dependency="redis""#).await, 1.0);
    assert_eq!(dependency(r#"dependency="database""#).await, 0.0);
    assert_eq!(app.metric("db_errors_total", &[]).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_use_replicas_fall_back_when_one_stops_and_the_writer_reads_its_writes_under_lag() {
    let stack = own_stack();
    let app = app_on(&stack, |_| {}).await;
    let user = app.create_user().await;
    let id = user["id"].as_i64().expect("id");
    let shard = app.shard_of(id);
    // Distinct ids so each read misses the cache and reaches the database.
    let readable: Vec<i64> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(app.create_user_on(shard).await["id"].as_i64().expect("id"));
        }
        ids
    };
    tokio::time::sleep(Duration::from_millis(600)).await; // replica probes mark them healthy
    let replica_reads = app
        .metric(
            "db_queries_total",
            &[r#"query="user_by_id""#, r#"role="replica""#],
        )
        .await;
    assert_eq!(
        app.get(&format!("/api/users/{}", readable[0]))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.metric(
            "db_queries_total",
            &[r#"query="user_by_id""#, r#"role="replica""#]
        )
        .await,
        replica_reads + 1.0,
        "a plain read goes to a replica"
    );

    // Lag the replica: a write is not visible there for a while, yet the writer sees it.
    let servers = &stack.shards[shard as usize];
    servers.replica.set_apply_delay(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = format!("/api/users/{id}");
    let response = app.put_as(&user, &path, &json!({ "name": "Fresh" })).await;
    assert_eq!(response.status(), StatusCode::OK);
    let token = response.headers()["x-consistency-token"]
        .to_str()
        .expect("token")
        .to_string();
    let on_replica: String = sqlx::query_scalar("SELECT name FROM users WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool_on(&servers.replica))
        .await
        .expect("replica read");
    assert_ne!(on_replica, "Fresh", "the replica really lags");
    let read: Value = app
        .client
        .get(format!("{}{path}", app.address))
        .header("x-consistency-token", token)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(read["name"], "Fresh", "read-your-writes despite the lag");
    // Other readers see it too: the cache generation keeps lagging replicas out of cache fills.
    let read: Value = app.get(&path).await.json().await.expect("json");
    assert_eq!(read["name"], "Fresh");

    // Stop the replica: reads fall back to the primary.
    servers.replica.stop();
    for id in &readable[1..] {
        let started = Instant::now();
        assert_eq!(
            app.get(&format!("/api/users/{id}")).await.status(),
            StatusCode::OK
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_primary_makes_its_shards_writes_503_while_the_other_shard_works() {
    let stack = own_stack();
    let app = app_on(&stack, |config| config.database.acquire_timeout_ms = 500).await;
    app.wait_for_standing_connections().await;
    let on_zero = app.create_user_on(0).await;
    let on_one = app.create_user_on(1).await;
    // Signing in reads the primaries: sign in while they are up.
    app.session_of(&on_zero).await;
    app.session_of(&on_one).await;
    stack.shards[0].primary.stop();

    let started = Instant::now();
    let order = app
        .send_as(
            &on_zero,
            reqwest::Method::POST,
            "/api/orders",
            &json!({ "items": [{ "sku": "a", "quantity": 1 }], "total": 1 }),
        )
        .await;
    assert_eq!(order.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fails fast: {:?}",
        started.elapsed()
    );
    let retry_after: u64 = order.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    let body: Value = order.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        !body.to_string().to_lowercase().contains("connection"),
        "no internals leak: {body}"
    );

    let renamed = app
        .put_as(
            &on_zero,
            &format!("/api/users/{}", on_zero["id"]),
            &json!({ "name": "x" }),
        )
        .await;
    assert_eq!(renamed.status(), StatusCode::SERVICE_UNAVAILABLE);

    let order = app
        .send_as(
            &on_one,
            reqwest::Method::POST,
            "/api/orders",
            &json!({ "items": [{ "sku": "a", "quantity": 1 }], "total": 1 }),
        )
        .await;
    assert_eq!(order.status(), StatusCode::CREATED);
    assert_eq!(
        app.get(&format!("/api/users/{}", on_one["id"]))
            .await
            .status(),
        StatusCode::OK
    );
    // One primary is still up, so the pod stays ready.
    assert_eq!(app.get("/ready").await.status(), StatusCode::OK);
    stack.shards[1].primary.stop();
    assert_eq!(
        app.get("/ready").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// The real binary in worker mode.
fn spawn_worker(config_path: &std::path::Path, pod: &str, ack_delay_ms: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_scaled-app"))
        .args([
            "worker",
            "--queues",
            "email:send,analytics:track",
            "--concurrency",
            "2",
        ])
        .arg(format!("--ack-delay-ms={ack_delay_ms}"))
        .env("SCALED_CONFIG", config_path)
        .env("SCALED_DATABASE_PASSWORD", crate::support::APP_PASSWORD)
        .env("SCALED_SESSION_SECRET", "test")
        .env("SCALED_POD_NAME", pod)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start the worker binary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_worker_mid_message_loses_nothing_and_applies_every_message_once() {
    let app = TestApp::spawn().await;
    let orders = 30;
    let mut users = Vec::new();
    for _ in 0..orders {
        let user = app.create_user().await;
        let id = user["id"].as_i64().expect("id");
        app.create_order(&user).await;
        users.push(id);
    }
    let directory = tempfile::tempdir().expect("tempdir");
    let config_path = directory.path().join("config.json");
    std::fs::write(&config_path, app.config.to_json()).expect("write config");

    let count = |sql: &'static str| {
        let app = &app;
        async move {
            let mut total = 0;
            for shard in 0..2 {
                total += sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&app.primary(shard).await)
                    .await
                    .expect("count");
            }
            total
        }
    };
    // Effects are committed and then held unacknowledged for 300 ms, so the kill lands in the
    // window between commit and ack.
    let mut doomed = spawn_worker(&config_path, &format!("doomed-{}", hex_token()), 300);
    eventually(
        "the first worker to apply some messages",
        Duration::from_secs(30),
        || async { (count("SELECT count(*) FROM processed_messages").await >= 4).then_some(()) },
    )
    .await;
    doomed.kill().expect("kill -9");
    doomed.wait().expect("reaped");
    let mut redis = app.redis().await;
    let pending: redis::streams::StreamPendingReply = redis
        .xpending("email:send", "scaled-workers")
        .await
        .expect("xpending");
    let pending_analytics: redis::streams::StreamPendingReply = redis
        .xpending("analytics:track", "scaled-workers")
        .await
        .expect("xpending");
    assert!(
        pending.count() + pending_analytics.count() > 0,
        "the kill left messages in flight"
    );

    let mut survivor = spawn_worker(&config_path, &format!("survivor-{}", hex_token()), 0);
    eventually(
        "every message to be applied",
        Duration::from_secs(60),
        || async {
            (count("SELECT count(*) FROM processed_messages").await == 2 * orders).then_some(())
        },
    )
    .await;
    // Give a duplicate a chance to show up, then check that each effect happened exactly once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count("SELECT count(*) FROM sent_emails").await, orders);
    assert_eq!(
        count("SELECT count(DISTINCT order_id) FROM sent_emails").await,
        orders
    );
    assert_eq!(
        count("SELECT COALESCE(sum(count), 0)::bigint FROM analytics_counters").await,
        orders
    );
    eventually("the streams to drain", Duration::from_secs(10), || {
        let mut redis = redis.clone();
        async move {
            let pending: redis::streams::StreamPendingReply =
                redis.xpending("email:send", "scaled-workers").await.ok()?;
            let length: u64 = redis.xlen("email:send").await.ok()?;
            (pending.count() == 0 && length == 0).then_some(())
        }
    })
    .await;
    let dead: u64 = redis.xlen("email:send:dead").await.expect("xlen");
    assert_eq!(dead, 0);
    survivor.kill().expect("stop the survivor");
    survivor.wait().expect("reaped");
    let _ = users;
}

#[tokio::test]
async fn the_shard_map_is_reloaded_from_the_config_file_without_a_restart() {
    let stack: &Stack = Stack::shared();
    let database = stack.create_database().await;
    let config = test_config(stack, &database, 200);
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("config.json");
    // Start with every slot on shard 0, then move them all to shard 1.
    let mut all_on_zero = config.clone();
    all_on_zero.shard_map =
        scaled_contract::ShardMap::from_assignment(&vec![0; 1024], stack.endpoints()).expect("map");
    std::fs::write(&path, all_on_zero.to_json()).expect("write");
    let mut settings =
        scaled_app::config::Settings::from_runtime(all_on_zero, scaled_contract::Secret::new("s"));
    settings.config_path = Some(path.clone());
    settings.database_password = Some(scaled_contract::Secret::new(crate::support::APP_PASSWORD));
    let application = scaled_app::startup::Application::build(settings)
        .await
        .expect("starts");
    let cluster = application.state().cluster.clone();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(application.run_until_stopped(shutdown.clone()));
    assert_eq!(cluster.shard_for_user(12345).index, 0);
    let mut all_on_one = config;
    all_on_one.shard_map =
        scaled_contract::ShardMap::from_assignment(&vec![1; 1024], stack.endpoints()).expect("map");
    std::fs::write(&path, all_on_one.to_json()).expect("write");
    eventually(
        "the new map to be in force",
        Duration::from_secs(10),
        || async { (cluster.shard_for_user(12345).index == 1).then_some(()) },
    )
    .await;
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_binary_finishes_every_request_in_flight_on_sigterm_and_exits_cleanly() {
    const IN_FLIGHT: usize = 8;
    let app = TestApp::spawn().await;
    let mut config = app.config.clone();
    let port = crate::support::free_port();
    config.http_port = port;
    config.metrics_port = 0;
    // The requests below wait on a row lock for a while; their statements must not time out.
    config.database.statement_timeout_ms = 120_000;
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("config.json");
    std::fs::write(&path, config.to_json()).expect("write config");
    let mut server = Command::new(env!("CARGO_BIN_EXE_scaled-app"))
        .arg("serve")
        .env("SCALED_CONFIG", &path)
        // The test app's secret, so sessions opened through it are valid in the binary too.
        .env("SCALED_SESSION_SECRET", crate::support::SESSION_SECRET)
        .env("SCALED_DATABASE_PASSWORD", crate::support::APP_PASSWORD)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start the server binary");
    let base = format!("http://127.0.0.1:{port}");
    eventually("the binary to serve", Duration::from_secs(30), || async {
        let response = app.client.get(format!("{base}/health")).send().await.ok()?;
        (response.status() == StatusCode::OK).then_some(())
    })
    .await;
    let user = app.create_user().await;
    let user_id = user["id"].as_i64().expect("id");
    let session = app.session_of(&user).await;

    // Hold the user's row: every rename waits for it inside its handler, so once all of them
    // wait, all of them are in flight, whatever the machine's speed.
    let pool = app.primary(app.shard_of(user_id)).await;
    let mut blocker = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(user_id)
        .execute(&mut *blocker)
        .await
        .expect("lock the row");
    let renames: Vec<_> = (0..IN_FLIGHT)
        .map(|index| {
            app.client
                .put(format!("{base}/api/users/{user_id}"))
                .header(reqwest::header::COOKIE, format!("sid={session}"))
                .json(&json!({ "name": format!("Drained {index}") }))
                .send()
        })
        .collect();
    let in_flight = tokio::spawn(futures::future::join_all(renames));
    eventually(
        "every rename to wait on the row lock",
        Duration::from_secs(60),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (waiting == IN_FLIGHT as i64).then_some(())
        },
    )
    .await;

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(server.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    // Draining: new connections are refused while the requests in flight wait...
    eventually(
        "the listener to close after SIGTERM",
        Duration::from_secs(30),
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    assert!(
        server.try_wait().expect("wait").is_none(),
        "the server exited with requests in flight"
    );
    // ...and every one of them completes once the row is free.
    blocker.rollback().await.expect("release the row");
    let responses = in_flight.await.expect("the requests' task");
    assert_eq!(responses.len(), IN_FLIGHT);
    for response in responses {
        let response = response.expect("a request in flight at SIGTERM gets its response");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn an_exhausted_pool_answers_503_quickly_instead_of_queueing() {
    let app = TestApp::spawn_with(|config| {
        config.database.pool_size = 1;
        config.database.max_overflow = 0;
        config.database.acquire_timeout_ms = 200;
    })
    .await;
    app.wait_for_standing_connections().await;
    // Set-up shares the one connection per primary with the relay, so on a busy machine a step
    // may meet the very 503 this test is about: retry set-up steps, not the assertion.
    let email = format!("pool-{}@example.org", hex_token());
    let credentials = json!({ "email": email, "password": crate::support::PASSWORD });
    let user: Value = eventually(
        "the user to be created",
        Duration::from_secs(30),
        || async {
            let mut body = credentials.clone();
            body["name"] = json!("Pool");
            let response = app.post("/api/users", &body).await;
            (response.status() == StatusCode::ACCEPTED).then_some(())?;
            let user: Value = response.json().await.ok()?;
            user["id"].is_i64().then_some(user)
        },
    )
    .await;
    let user_id = user["id"].as_i64().expect("id");
    let session = eventually("a sign-in", Duration::from_secs(30), || async {
        crate::support::session_cookie(&app.post("/api/sessions", &credentials).await)
    })
    .await;
    let order = |app: &TestApp| {
        app.client
            .post(format!("{}/api/orders", app.address))
            .header(reqwest::header::COOKIE, format!("sid={session}"))
            .json(&json!({ "items": [{ "sku": "a", "quantity": 1 }], "total": 1 }))
            .send()
    };
    // Hold the shard's only primary connection.
    let shard = app.state.cluster.shard_for_user(user_id);
    let held = shard.primary.acquire().await.expect("the only connection");
    let started = Instant::now();
    let response = order(&app).await.expect("sent");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    drop(held);
    eventually(
        "an order once the connection is free",
        Duration::from_secs(30),
        || async { (order(&app).await.ok()?.status() == StatusCode::CREATED).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_pool_started_while_redis_is_down_joins_when_it_returns_and_handles_the_backlog() {
    use scaled_app::worker::{FaultInjection, WorkerPool};
    use tokio_util::sync::CancellationToken;

    let stack = own_stack();
    let app = app_on(&stack, |_| {}).await;
    let user = app.create_user().await;
    stack.redis.stop();
    let pool = WorkerPool {
        redis: app.state.redis.clone(),
        cluster: app.state.cluster.clone(),
        settings: app.config.queues.clone(),
        metrics: app.state.metrics.clone(),
        faults: FaultInjection::default(),
    };
    let shutdown = CancellationToken::new();
    let streams = vec!["email:send".to_string()];
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { pool.run(&streams, 1, "starts-early", shutdown).await }
    });
    // It keeps trying instead of returning (a crash loop in a pod).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !running.is_finished(),
        "the pool gave up while Redis was down"
    );

    stack.redis.start();
    let order = app.create_order(&user).await;
    let order_id = order["id"].as_i64().expect("id");
    let shard = app.shard_of(user["id"].as_i64().expect("id"));
    let pool = app.pool_on(&stack.shards[shard as usize].primary);
    eventually(
        "the worker to send the confirmation",
        Duration::from_secs(30),
        || async {
            let sent: i64 =
                sqlx::query_scalar("SELECT count(*) FROM sent_emails WHERE order_id = $1")
                    .bind(order_id)
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (sent == 1).then_some(())
        },
    )
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the pool stops on shutdown")
        .expect("the pool task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_a_pod_still_on_the_demoted_primary_degrades_then_reaches_the_new_one() {
    let pair = RedisPair::start();
    // The app reaches Redis through a "Service" that the failover repoints.
    let service = Forwarder::start(pair.primary.port).await;
    let app = TestApp::spawn_with(|config| {
        config.redis.url = service.url(1);
        config.cache.redis_timeout_ms = 200;
    })
    .await;
    let user = app.create_user().await;
    let token = app.session_of(&user).await;
    let mut worker = crate::worker::worker(&app, scaled_app::queue::EMAIL_STREAM, "w-1").await;
    let mut old = redis::Client::open(pair.primary.url(1))
        .expect("a redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the old primary");
    let group: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut old)
        .await
        .expect("info");
    assert!(group.contains("connected_slaves:1"), "{group}");

    // The failover as the operator runs it, except that the app's connections to the old
    // primary are not killed: they stay open on a server that is now a replica.
    pair.replica.promote();
    pair.primary.replicate(&pair.replica);
    service.point_at(pair.replica.port);

    // Writes on the old connections are refused (READONLY): a signed-in order still goes
    // through, its session verified on its signature, like during a Redis outage.
    assert_eq!(order_with(&app, &token).await.status(), StatusCode::CREATED);
    // And the next attempts reach the new primary through the Service: a sign-in (which needs
    // Redis to count the attempt and store the session) and a worker step.
    let signed_in = eventually(
        "a sign-in on the new primary",
        Duration::from_secs(10),
        || async {
            let response = app
                .post(
                    "/api/sessions",
                    &json!({ "email": user["email"], "password": crate::support::PASSWORD }),
                )
                .await;
            (response.status() == StatusCode::CREATED).then_some(response)
        },
    )
    .await;
    let session = crate::support::session_cookie(&signed_in).expect("a session");
    assert!(
        app.metric("redis_reconnects_total", &[r#"reason="not_primary""#])
            .await
            >= 1.0
    );
    let mut new = redis::Client::open(pair.replica.url(1))
        .expect("a redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the new primary");
    // Both sessions, by key (a count would also take in a session a sign-in wrote before a
    // later step of it timed out on a loaded machine, which the user never got).
    for cookie in [&token, &session] {
        let held: bool = new.exists(session_key(cookie)).await.expect("exists");
        assert!(held, "the new primary holds the session {cookie}");
    }
    // The limiter counts in Redis again (it sends its headers only then).
    let limited = app
        .client
        .get(format!("{}/api/data", app.address))
        .header(reqwest::header::COOKIE, format!("sid={session}"))
        .send()
        .await
        .expect("sent");
    assert_eq!(limited.status(), StatusCode::OK);
    assert!(limited.headers().contains_key("x-ratelimit-limit"));

    // The worker, on a connection of its own to the old primary, is refused once, then opens a
    // new one and handles what the relay sends to the new primary.
    app.create_order(&user).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refusals = 0;
    let handled = loop {
        match worker.step().await {
            Ok(scaled_app::worker::Outcome::Handled(count)) => break count,
            Ok(scaled_app::worker::Outcome::Idle) => {}
            Err(_) => refusals += 1,
        }
        assert!(
            Instant::now() < deadline,
            "the worker never handled the order on the new primary"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        refusals >= 1,
        "the worker's first step reached the old primary"
    );
    assert!(handled >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_primarys_pod_vanishes_without_a_reset_the_app_reconnects_within_seconds() {
    let pair = RedisPair::start();
    let service = Forwarder::start(pair.primary.port).await;
    let app = TestApp::spawn_with(|config| {
        config.redis.url = service.url(1);
        config.cache.redis_timeout_ms = 200;
    })
    .await;
    let user = app.create_user().await;
    let token = app.session_of(&user).await;

    // A force-deleted pod (or one cut off the network) takes its end of every connection with
    // it: no reset comes, and the app's connections hang instead of failing. The operator
    // promotes the replica and the Service points at it.
    service.blackhole_existing();
    let cut = Instant::now();
    pair.replica.promote();
    service.point_at(pair.replica.port);

    // An order needs no Redis round trip to succeed (the session's signature is checked), so it
    // is answered at once, within the Redis budgets, not after a hung call.
    let order = tokio::time::timeout(Duration::from_secs(2), order_with(&app, &token))
        .await
        .expect("an order answered within 2 s of the cut");
    assert_eq!(order.status(), StatusCode::CREATED);
    // A sign-in needs Redis (the attempt counter and the new session): it works again once the
    // hung connections are replaced, which a timed-out call starts.
    eventually(
        "a sign-in through the new primary",
        Duration::from_secs(20),
        || async {
            let response = app
                .post(
                    "/api/sessions",
                    &json!({ "email": user["email"], "password": crate::support::PASSWORD }),
                )
                .await;
            (response.status() == StatusCode::CREATED).then_some(())
        },
    )
    .await;
    let outage = cut.elapsed();
    assert!(
        outage < Duration::from_secs(3),
        "sign-ins came back {outage:?} after the cut"
    );
    assert!(
        app.metric("redis_reconnects_total", &[r#"reason="timeout""#])
            .await
            >= 1.0
    );
}
