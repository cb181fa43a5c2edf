//! Workers driven step by step: effects, deduplication, dead letters, reclaiming.

use std::time::Duration;

use redis::AsyncCommands;
use scaled_app::{
    queue::{ANALYTICS_STREAM, EMAIL_STREAM, dead_letter_stream},
    worker::{FaultInjection, Outcome, Worker},
};
use serde_json::json;

use crate::support::{TestApp, eventually};

async fn worker(app: &TestApp, stream: &str, consumer: &str) -> Worker {
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

async fn step_until_idle(worker: &mut Worker) -> usize {
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
