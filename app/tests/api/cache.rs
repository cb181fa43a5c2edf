//! The user cache: single flight, layers, generations, cross-pod invalidation.

use std::time::Duration;

use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, eventually, public};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_reads_of_a_cold_user_cost_exactly_one_database_query() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let id = user["id"].as_i64().expect("id");
    // Wait until the replica has the row, so the one load is not followed by a primary re-check.
    let replica =
        app.pool_on(&crate::support::Stack::shared().shards[app.shard_of(id) as usize].replica);
    eventually(
        "the replica to have the user",
        Duration::from_secs(10),
        || async {
            let found: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(&replica)
                .await
                .ok()?;
            found.map(|_| ())
        },
    )
    .await;
    let path = format!("/api/users/{id}");
    let before = app
        .metric("db_queries_total", &[r#"query="user_by_id""#])
        .await;
    let reads = (0..1000).map(|_| {
        let app = &app;
        let path = &path;
        async move { app.get(path).await.status() }
    });
    let statuses = futures::future::join_all(reads).await;
    assert!(
        statuses.iter().all(|status| *status == StatusCode::OK),
        "some reads failed"
    );
    let after = app
        .metric("db_queries_total", &[r#"query="user_by_id""#])
        .await;
    assert_eq!(after - before, 1.0);
}

#[tokio::test]
async fn a_repeated_read_is_an_l1_hit_and_a_new_pod_finds_the_user_in_l2() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let path = format!("/api/users/{}", user["id"]);
    app.get(&path).await;
    let hits = app
        .metric("cache_lookups_total", &[r#"layer="l1""#, r#"result="hit""#])
        .await;
    app.get(&path).await;
    assert_eq!(
        app.metric("cache_lookups_total", &[r#"layer="l1""#, r#"result="hit""#])
            .await,
        hits + 1.0
    );

    let other = app.another_pod().await;
    let queries = other.metric("db_queries_total", &[]).await;
    let body: Value = other.get(&path).await.json().await.expect("json");
    assert_eq!(body, public(&user));
    assert_eq!(
        other
            .metric("cache_lookups_total", &[r#"layer="l2""#, r#"result="hit""#])
            .await,
        1.0
    );
    assert_eq!(
        other.metric("db_queries_total", &[]).await,
        queries,
        "served from L2"
    );
}

#[tokio::test]
async fn a_write_on_one_pod_evicts_the_user_from_the_other_pods_l1() {
    let writer = TestApp::spawn().await;
    let reader = writer.another_pod().await;
    let user = writer.create_user().await;
    let path = format!("/api/users/{}", user["id"]);
    for _ in 0..2 {
        assert_eq!(reader.get(&path).await.status(), StatusCode::OK);
    }
    assert_eq!(
        writer
            .put_as(&user, &path, &json!({ "name": "Changed elsewhere" }))
            .await
            .status(),
        StatusCode::OK
    );
    eventually(
        "the other pod to see the change",
        Duration::from_secs(3),
        || async {
            let body: Value = reader.get(&path).await.json().await.ok()?;
            (body["name"] == "Changed elsewhere").then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn an_l2_value_stored_under_an_older_generation_is_never_served() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let id = user["id"].as_i64().expect("id");
    let mut redis = app.redis().await;
    // What a slow reader would have stored had the guard not existed: an old value under an old
    // generation, while the generation has since moved on.
    let stale = json!({ "g": 1, "u": { "id": id, "name": "STALE", "email": user["email"], "created_at": user["created_at"], "updated_at": user["updated_at"] } });
    let _: () = redis
        .set(format!("user:{id}"), stale.to_string())
        .await
        .expect("set");
    let _: () = redis.set(format!("user:{id}:gen"), 2).await.expect("set");
    let body: Value = app
        .get(&format!("/api/users/{id}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["name"], user["name"]);
    // And the reader's refill is stored under the current generation.
    let stored: String = redis.get(format!("user:{id}")).await.expect("refilled");
    let stored: Value = serde_json::from_str(&stored).expect("json");
    assert_eq!(stored["g"], 2);
}

#[tokio::test]
async fn the_writer_reads_its_own_write_through_the_consistency_token() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let path = format!("/api/users/{}", user["id"]);
    let response = app.put_as(&user, &path, &json!({ "name": "Mine" })).await;
    let token = response.headers()["x-consistency-token"]
        .to_str()
        .expect("token")
        .to_string();
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.starts_with("ryw="))
        .expect("a ryw cookie")
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Max-Age=5"),
        "{cookie}"
    );
    let read = app
        .client
        .get(format!("{}{path}", app.address))
        .header("x-consistency-token", &token)
        .send()
        .await
        .expect("sent");
    assert_eq!(
        read.headers()["cache-control"],
        "private, no-cache",
        "a writer's view is not for shared caches"
    );
    let body: Value = read.json().await.expect("json");
    assert_eq!(body["name"], "Mine");
}

#[tokio::test]
async fn a_made_up_consistency_token_is_ignored_so_it_cannot_force_reads_past_the_caches() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let path = format!("/api/users/{}", user["id"]);
    let response = app.put_as(&user, &path, &json!({ "name": "Mine" })).await;
    let genuine = response.headers()["x-consistency-token"]
        .to_str()
        .expect("token")
        .to_string();
    let (shard, rest) = genuine.split_once('.').expect("<shard>.<lsn>.<mac>");
    let mac = rest.rsplit('.').next().expect("a mac");
    // The largest LSN, unsigned, with a made-up signature, or with the genuine token's: a
    // client cannot name a position the app did not give it.
    for forged in [
        format!("{shard}.{}", u64::MAX),
        format!("{shard}.{}.0123456789abcdef", u64::MAX),
        format!("{shard}.{}.{mac}", u64::MAX),
    ] {
        for (header, value) in [
            ("x-consistency-token", forged.clone()),
            ("cookie", format!("ryw={forged}")),
        ] {
            let read = app
                .client
                .get(format!("{}{path}", app.address))
                .header(header, &value)
                .send()
                .await
                .expect("sent");
            assert_eq!(read.status(), reqwest::StatusCode::OK, "{header}: {value}");
            let cache_control = read.headers()["cache-control"]
                .to_str()
                .expect("ascii")
                .to_string();
            assert!(
                cache_control.starts_with("public"),
                "{header}: {value} was honoured: {cache_control}"
            );
        }
    }
    // The genuine one still is.
    let read = app
        .client
        .get(format!("{}{path}", app.address))
        .header("x-consistency-token", &genuine)
        .send()
        .await
        .expect("sent");
    assert_eq!(read.headers()["cache-control"], "private, no-cache");
}
