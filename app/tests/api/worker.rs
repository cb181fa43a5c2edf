//! Workers driven step by step: effects, deduplication, dead letters, reclaiming.

use std::time::Duration;

use redis::AsyncCommands;
use scaled_app::{
    queue::{ANALYTICS_STREAM, EMAIL_STREAM, dead_letter_stream},
    worker::{FaultInjection, Outcome, Worker},
};
use serde_json::json;

use crate::support::{TestApp, eventually};

/// A worker of `stream` on `app`'s Redis and shards, driven by the test.
pub(crate) async fn worker(app: &TestApp, stream: &str, consumer: &str) -> Worker {
    Worker::new(
        app.state.redis.clone(),
        app.state.cluster.clone(),
        stream,
        consumer,
        app.config.queues.clone(),
        app.state.metrics.clone(),
        FaultInjection::default(),
    )
    .await
    .expect("a worker")
}

/// Steps until nothing arrives; the deliveries handled.
pub(crate) async fn step_until_idle(worker: &mut Worker) -> usize {
    let mut handled = 0;
    loop {
        match worker.step().await.expect("a step") {
            Outcome::Idle => return handled,
            Outcome::Handled(count) => handled += count,
        }
    }
}

async fn count(app: &TestApp, shard: u32, sql: &'static str) -> i64 {
    let pool = app.primary(shard).await;
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(&pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn an_order_confirmation_is_rendered_once_and_the_analytics_counter_moves_once() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let user_id = user["id"].as_i64().expect("id");
    let shard = app.shard_of(user_id);
    let order = app.create_order(&user).await;
    let mut redis = app.redis().await;
    eventually(
        "the relay to move both messages",
        Duration::from_secs(10),
        || {
            let mut redis = redis.clone();
            async move {
                let email: u64 = redis.xlen(EMAIL_STREAM).await.ok()?;
                let analytics: u64 = redis.xlen(ANALYTICS_STREAM).await.ok()?;
                (email == 1 && analytics == 1).then_some(())
            }
        },
    )
    .await;
    let mut email = worker(&app, EMAIL_STREAM, "test-email").await;
    let mut analytics = worker(&app, ANALYTICS_STREAM, "test-analytics").await;
    assert_eq!(step_until_idle(&mut email).await, 1);
    assert_eq!(step_until_idle(&mut analytics).await, 1);

    let pool = app.primary(shard).await;
    let (subject, body): (String, String) =
        sqlx::query_as("SELECT subject, body FROM sent_emails WHERE order_id = $1")
            .bind(order["id"].as_i64().expect("id"))
            .fetch_one(&pool)
            .await
            .expect("the confirmation was written");
    assert!(subject.contains(&order["id"].to_string()), "{subject}");
    assert!(body.contains("19.98"), "{body}");
    assert_eq!(
        count(
            &app,
            shard,
            "SELECT COALESCE(sum(count), 0)::bigint FROM analytics_counters"
        )
        .await,
        1
    );
    // Acknowledged and removed.
    let length: u64 = redis.xlen(EMAIL_STREAM).await.expect("xlen");
    assert_eq!(length, 0);
}

#[tokio::test]
async fn a_redelivered_message_is_acknowledged_without_a_second_effect() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let user_id = user["id"].as_i64().expect("id");
    let shard = app.shard_of(user_id);
    let mut redis = app.redis().await;
    let message = json!({ "event_id": "evt-dup-1", "event": "order_created", "order_id": 1, "user_id": user_id });
    for _ in 0..3 {
        let _: String = redis
            .xadd(ANALYTICS_STREAM, "*", &[("payload", message.to_string())])
            .await
            .expect("xadd");
    }
    let mut analytics = worker(&app, ANALYTICS_STREAM, "dedupe").await;
    assert_eq!(step_until_idle(&mut analytics).await, 3);
    assert_eq!(
        count(
            &app,
            shard,
            "SELECT COALESCE(sum(count), 0)::bigint FROM analytics_counters"
        )
        .await,
        1
    );
    assert_eq!(
        app.metric("queue_messages_total", &[r#"outcome="duplicate""#])
            .await,
        2.0
    );
    let pending: redis::streams::StreamPendingReply = redis
        .xpending(ANALYTICS_STREAM, "scaled-workers")
        .await
        .expect("xpending");
    assert_eq!(pending.count(), 0);
}

#[tokio::test]
async fn a_malformed_message_goes_to_the_dead_letter_stream_with_its_reason() {
    let app = TestApp::spawn().await;
    let mut redis = app.redis().await;
    let _: String = redis
        .xadd(EMAIL_STREAM, "*", &[("payload", "{not json")])
        .await
        .expect("xadd");
    let mut email = worker(&app, EMAIL_STREAM, "poison").await;
    step_until_idle(&mut email).await;
    let dead: redis::streams::StreamRangeReply = redis
        .xrange_all(dead_letter_stream(EMAIL_STREAM))
        .await
        .expect("xrange");
    assert_eq!(dead.ids.len(), 1);
    assert_eq!(
        dead.ids[0].get::<String>("payload").as_deref(),
        Some("{not json")
    );
    assert!(
        dead.ids[0]
            .get::<String>("reason")
            .expect("reason")
            .contains("malformed")
    );
    let length: u64 = redis.xlen(EMAIL_STREAM).await.expect("xlen");
    assert_eq!(length, 0);
}

#[tokio::test]
async fn a_message_whose_consumers_keep_dying_is_dead_lettered_after_max_attempts() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let mut redis = app.redis().await;
    // Create the group, then let a "consumer" take the message max_attempts times and never ack
    // (as if it crashed each time).
    let mut email = worker(&app, EMAIL_STREAM, "survivor").await;
    let message = json!({ "event_id": "evt-crashy", "type": "order_confirmation", "order_id": 1, "user_id": user["id"] });
    let id: String = redis
        .xadd(EMAIL_STREAM, "*", &[("payload", message.to_string())])
        .await
        .expect("xadd");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(
            &[
                "GROUP",
                "scaled-workers",
                "crasher",
                "COUNT",
                "1",
                "STREAMS",
                EMAIL_STREAM,
                ">",
            ][..],
        )
        .query_async(&mut redis)
        .await
        .expect("first delivery");
    for _ in 1..app.config.queues.max_attempts {
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(&[EMAIL_STREAM, "scaled-workers", "crasher", "0", id.as_str()][..])
            .query_async(&mut redis)
            .await
            .expect("another delivery");
    }
    // After claimIdleMs the survivor reclaims it, sees the attempts used up, and dead-letters it.
    tokio::time::sleep(Duration::from_millis(app.config.queues.claim_idle_ms + 100)).await;
    step_until_idle(&mut email).await;
    let dead: redis::streams::StreamRangeReply = redis
        .xrange_all(dead_letter_stream(EMAIL_STREAM))
        .await
        .expect("xrange");
    assert_eq!(dead.ids.len(), 1);
    assert_eq!(
        dead.ids[0].get::<String>("reason").as_deref(),
        Some("too many attempts")
    );
    let pending: redis::streams::StreamPendingReply = redis
        .xpending(EMAIL_STREAM, "scaled-workers")
        .await
        .expect("xpending");
    assert_eq!(pending.count(), 0);
}

/// `sql` (a count) summed over both shards.
async fn total(app: &TestApp, sql: &'static str) -> i64 {
    count(app, 0, sql).await + count(app, 1, sql).await
}

/// An order written straight into its user's shard (the worker, not the API, is under test).
async fn insert_order(app: &TestApp, user_id: i64) -> i64 {
    let order_id = i64::from(rand::random::<u32>()) + 1;
    sqlx::query(
        "INSERT INTO orders (id, user_id, items, total_cents) \
         VALUES ($1, $2, '[{\"sku\":\"a\",\"quantity\":1}]', 500)",
    )
    .bind(order_id)
    .bind(user_id)
    .execute(&app.primary(app.shard_of(user_id)).await)
    .await
    .expect("insert an order");
    order_id
}

/// Steps until `done` holds (retries need their backoff to pass, so this also waits).
async fn step_until(worker: &mut Worker, mut done: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not finish"
        );
        worker.step().await.expect("a step");
    }
}

async fn dead_letters(app: &TestApp, stream: &str) -> Vec<(String, String)> {
    let dead: redis::streams::StreamRangeReply = app
        .redis()
        .await
        .xrange_all(dead_letter_stream(stream))
        .await
        .expect("xrange");
    dead.ids
        .iter()
        .map(|entry| {
            (
                entry.get::<String>("payload").unwrap_or_default(),
                entry.get::<String>("reason").unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_batch_of_confirmations_applies_each_once_and_dead_letters_the_malformed_and_the_orphaned()
 {
    let app = TestApp::spawn().await;
    let mut redis = app.redis().await;
    let mut email = worker(&app, EMAIL_STREAM, "batch-email").await;
    let run = crate::support::hex_token();
    let mut messages = Vec::new();
    let mut orders = Vec::new();
    for index in 0..6 {
        let user = app.create_user().await;
        let user_id = user["id"].as_i64().expect("id");
        let order_id = insert_order(&app, user_id).await;
        orders.push(order_id);
        messages.push(json!({ "event_id": format!("evt-{run}-{index}"), "type": "order_confirmation", "order_id": order_id, "user_id": user_id }).to_string());
    }
    // The same message twice in one batch, one that is not JSON, one whose order does not exist.
    messages.push(messages[1].clone());
    messages.push("{not json".to_string());
    let orphan_user = app.create_user().await["id"].as_i64().expect("id");
    messages.push(json!({ "event_id": format!("evt-{run}-orphan"), "type": "order_confirmation", "order_id": 1, "user_id": orphan_user }).to_string());
    for payload in &messages {
        let _: String = redis
            .xadd(EMAIL_STREAM, "*", &[("payload", payload)])
            .await
            .expect("xadd");
    }
    // One step takes them all.
    assert_eq!(
        email.step().await.expect("a step"),
        Outcome::Handled(messages.len())
    );

    assert_eq!(total(&app, "SELECT count(*) FROM sent_emails").await, 6);
    assert_eq!(
        total(&app, "SELECT count(DISTINCT order_id) FROM sent_emails").await,
        6
    );
    let dead = dead_letters(&app, EMAIL_STREAM).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        dead.iter()
            .any(|(payload, reason)| payload == "{not json" && reason.contains("malformed"))
    );
    assert!(dead.iter().any(
        |(payload, reason)| payload.contains("orphan") && reason == "referenced data not found"
    ));
    assert_eq!(
        app.metric("queue_messages_total", &[r#"outcome="processed""#])
            .await,
        6.0
    );
    assert_eq!(
        app.metric("queue_messages_total", &[r#"outcome="duplicate""#])
            .await,
        1.0
    );
    let length: u64 = redis.xlen(EMAIL_STREAM).await.expect("xlen");
    assert_eq!(length, 0);

    // Delivered again (a relay that sent twice): acknowledged, no second email.
    for payload in &messages[..6] {
        let _: String = redis
            .xadd(EMAIL_STREAM, "*", &[("payload", payload)])
            .await
            .expect("xadd");
    }
    assert_eq!(step_until_idle(&mut email).await, 6);
    assert_eq!(total(&app, "SELECT count(*) FROM sent_emails").await, 6);
    let _ = orders;
}

#[tokio::test]
async fn a_batch_of_analytics_events_with_one_the_database_rejects_counts_the_others_once_and_dead_letters_it()
 {
    let app = TestApp::spawn().await;
    let mut redis = app.redis().await;
    let mut analytics = worker(&app, ANALYTICS_STREAM, "batch-analytics").await;
    let run = crate::support::hex_token();
    // Users on both shards; the counters live on each user's shard.
    let mut messages: Vec<String> = (1..=8)
        .map(|user_id| json!({ "event_id": format!("evt-{run}-{user_id}"), "event": "order_created", "user_id": user_id }).to_string())
        .collect();
    messages.push(messages[2].clone());
    // Postgres text cannot hold a NUL character: this message fails inside the database, and so
    // does, at first, the batch that carries it.
    messages.push(json!({ "event_id": format!("evt-{run}-poison"), "event": "order\u{0}created", "user_id": 3 }).to_string());
    for payload in &messages {
        let _: String = redis
            .xadd(ANALYTICS_STREAM, "*", &[("payload", payload)])
            .await
            .expect("xadd");
    }
    step_until(&mut analytics, async || {
        let pending: redis::streams::StreamPendingReply = app
            .redis()
            .await
            .xpending(ANALYTICS_STREAM, "scaled-workers")
            .await
            .expect("xpending");
        pending.count() == 0 && !dead_letters(&app, ANALYTICS_STREAM).await.is_empty()
    })
    .await;

    assert_eq!(
        total(
            &app,
            "SELECT COALESCE(sum(count), 0)::bigint FROM analytics_counters"
        )
        .await,
        8
    );
    assert_eq!(
        total(&app, "SELECT count(*) FROM processed_messages").await,
        8
    );
    let dead = dead_letters(&app, ANALYTICS_STREAM).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].0.contains("poison"), "{dead:?}");
    assert_eq!(dead[0].1, "too many attempts");
    assert_eq!(
        app.metric("queue_messages_total", &[r#"outcome="processed""#])
            .await,
        8.0
    );
    assert_eq!(
        app.metric("queue_messages_total", &[r#"outcome="duplicate""#])
            .await,
        1.0
    );
    let length: u64 = redis.xlen(ANALYTICS_STREAM).await.expect("xlen");
    assert_eq!(length, 0);
}
