//! Orders: stored on the user's shard with their queue messages (outbox), relayed to Redis;
//! rate-limited per buyer.

use std::time::Duration;

use redis::AsyncCommands;
use reqwest::StatusCode;
use scaled_app::config::RoutePolicy;
use serde_json::{Value, json};

use crate::support::{TestApp, eventually};

#[tokio::test]
async fn an_order_is_stored_on_its_users_shard_and_its_messages_reach_both_streams() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let user_id = user["id"].as_i64().expect("id");
    let order = app.create_order(&user).await;
    assert_eq!(order["total"], 19.98);
    assert_eq!(order["items"], json!([{ "sku": "sku-1", "quantity": 2 }]));

    let pool = app.primary(app.shard_of(user_id)).await;
    let (stored,): (i64,) = sqlx::query_as("SELECT total_cents FROM orders WHERE id = $1")
        .bind(order["id"].as_i64().expect("id"))
        .fetch_one(&pool)
        .await
        .expect("the order is on the user's shard");
    assert_eq!(stored, 1998);

    let mut redis = app.redis().await;
    let entries: Vec<String> =
        eventually("both messages in Redis", Duration::from_secs(10), || {
            let mut redis = redis.clone();
            async move {
                let email: redis::streams::StreamRangeReply =
                    redis.xrange_all("email:send").await.ok()?;
                let analytics: redis::streams::StreamRangeReply =
                    redis.xrange_all("analytics:track").await.ok()?;
                let payloads: Vec<String> = email
                    .ids
                    .iter()
                    .chain(analytics.ids.iter())
                    .filter_map(|entry| entry.get::<String>("payload"))
                    .collect();
                (payloads.len() == 2).then_some(payloads)
            }
        })
        .await;
    let messages: Vec<Value> = entries
        .iter()
        .map(|text| serde_json::from_str(text).expect("json payload"))
        .collect();
    assert!(messages.iter().any(
        |message| message["type"] == "order_confirmation" && message["order_id"] == order["id"]
    ));
    assert!(
        messages
            .iter()
            .any(|message| message["event"] == "order_created" && message["user_id"] == user_id)
    );
    assert_ne!(messages[0]["event_id"], messages[1]["event_id"]);
    // Relayed rows leave the outbox.
    let (left,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM outbox WHERE stream <> 'cache:invalidate'")
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(left, 0);
    let _: () = redis.del("unused").await.expect("redis still fine");
}

#[tokio::test]
async fn an_order_needs_the_buyers_session_and_cannot_be_placed_for_someone_else() {
    let app = TestApp::spawn().await;
    let buyer = app.create_user().await;
    let victim = app.create_user().await;
    let items = json!([{ "sku": "a", "quantity": 1 }]);
    let anonymous = app
        .post(
            "/api/orders",
            &json!({ "user_id": victim["id"], "items": items, "total": 1 }),
        )
        .await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let for_someone_else = app
        .send_as(
            &buyer,
            reqwest::Method::POST,
            "/api/orders",
            &json!({ "user_id": victim["id"], "items": items, "total": 1 }),
        )
        .await;
    assert_eq!(for_someone_else.status(), StatusCode::FORBIDDEN);
    let body: Value = for_someone_else.json().await.expect("json");
    assert_eq!(body["error"]["code"], "forbidden");
    let victim_id = victim["id"].as_i64().expect("id");
    let pool = app.primary(app.shard_of(victim_id)).await;
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders WHERE user_id = $1")
        .bind(victim_id)
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(count, 0, "nothing was placed for the victim");
    // Naming oneself is allowed (older clients send user_id).
    let own = app
        .send_as(
            &buyer,
            reqwest::Method::POST,
            "/api/orders",
            &json!({ "user_id": buyer["id"], "items": items, "total": 1 }),
        )
        .await;
    assert_eq!(own.status(), StatusCode::CREATED);
    assert_eq!(own.headers()["cache-control"], "private, no-store");
    let order: Value = own.json().await.expect("json");
    assert_eq!(order["user_id"], buyer["id"]);
}

#[tokio::test]
async fn invalid_orders_are_422_and_say_which_field_and_why() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let cases = [
        (
            json!({ "user_id": user["id"], "items": [], "total": 1 }),
            "items",
        ),
        (
            json!({ "user_id": user["id"], "items": [{ "sku": "a", "quantity": 0 }], "total": 1 }),
            "items[0].quantity",
        ),
        (
            json!({ "user_id": user["id"], "items": [{ "sku": "", "quantity": 1 }], "total": 1 }),
            "items[0].sku",
        ),
        (
            json!({ "user_id": user["id"], "items": [{ "sku": "a", "quantity": 1 }], "total": -5 }),
            "total",
        ),
        (
            json!({ "user_id": user["id"], "items": [{ "sku": "a", "quantity": 1 }], "total": 1.234 }),
            "total",
        ),
        (
            json!({ "user_id": -1, "items": [{ "sku": "a", "quantity": 1 }], "total": 1 }),
            "user_id",
        ),
    ];
    for (body, field) in cases {
        let response = app
            .send_as(&user, reqwest::Method::POST, "/api/orders", &body)
            .await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["error"]["field"], field, "{error}");
        assert!(
            !error["error"]["message"]
                .as_str()
                .expect("message")
                .is_empty()
        );
    }
}

#[tokio::test]
async fn each_buyers_orders_are_rate_limited_and_other_buyers_are_not() {
    let app = TestApp::spawn_tuned(
        |_| {},
        |settings| {
            settings.limits.orders = RoutePolicy {
                requests: 2,
                window: Duration::from_secs(60),
            };
        },
    )
    .await;
    let buyer = app.create_user().await;
    let other = app.create_user().await;
    let order = json!({ "items": [{ "sku": "a", "quantity": 1 }], "total": 1 });
    for _ in 0..2 {
        let placed = app
            .send_as(&buyer, reqwest::Method::POST, "/api/orders", &order)
            .await;
        assert_eq!(placed.status(), StatusCode::CREATED);
        assert!(placed.headers().contains_key("x-ratelimit-remaining"));
    }
    let refused = app
        .send_as(&buyer, reqwest::Method::POST, "/api/orders", &order)
        .await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "rate_limited");
    let buyer_id = buyer["id"].as_i64().expect("id");
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM orders WHERE user_id = $1")
        .bind(buyer_id)
        .fetch_one(&app.primary(app.shard_of(buyer_id)).await)
        .await
        .expect("count");
    assert_eq!(count, 2, "the refused order was not placed");
    assert_eq!(app.create_order(&other).await["user_id"], other["id"]);
}
