//! The outbox relay, fed rows directly: batches, and a row Redis refuses.

use std::time::Duration;

use redis::AsyncCommands;

use crate::support::{TestApp, eventually};

#[tokio::test]
async fn a_relay_batch_with_a_row_redis_refuses_relays_the_others_once_and_dead_letters_that_row() {
    let app = TestApp::spawn().await;
    let mut redis = app.redis().await;
    // A key of another type where one row's stream would go: XADD to it fails, every time.
    let _: () = redis
        .set("poisoned:send", "not a stream")
        .await
        .expect("set");
    let pool = app.primary(0).await;
    // Committed together, so the relay finds them all at once.
    sqlx::query(
        "INSERT INTO outbox (stream, payload) \
         SELECT CASE WHEN n = 7 THEN 'poisoned:send' ELSE 'email:send' END, \
                jsonb_build_object('event_id', 'evt-relay-' || n) \
         FROM generate_series(1, 40) AS n",
    )
    .execute(&pool)
    .await
    .expect("outbox rows");
    app.state.relay_wake.notify_one();
    eventually(
        "the relay to empty the outbox",
        Duration::from_secs(10),
        || {
            let pool = pool.clone();
            async move {
                let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
                (left == 0).then_some(())
            }
        },
    )
    .await;
    // Give a second pass the chance to send something twice.
    app.state.relay_wake.notify_one();
    tokio::time::sleep(Duration::from_millis(700)).await;

    let sent: redis::streams::StreamRangeReply =
        redis.xrange_all("email:send").await.expect("xrange");
    let mut event_ids: Vec<String> = sent
        .ids
        .iter()
        .filter_map(|entry| entry.get::<String>("payload"))
        .map(|payload| {
            let message: serde_json::Value = serde_json::from_str(&payload).expect("json");
            message["event_id"].as_str().expect("event id").to_string()
        })
        .collect();
    assert_eq!(event_ids.len(), 39, "{event_ids:?}");
    event_ids.sort();
    event_ids.dedup();
    assert_eq!(event_ids.len(), 39, "a row was sent twice");

    let dead: redis::streams::StreamRangeReply = redis
        .xrange_all("poisoned:send:dead")
        .await
        .expect("xrange");
    assert_eq!(dead.ids.len(), 1);
    assert!(
        dead.ids[0]
            .get::<String>("payload")
            .is_some_and(|payload| payload.contains("evt-relay-7"))
    );
    assert!(
        dead.ids[0]
            .get::<String>("reason")
            .is_some_and(|reason| reason.contains("WRONGTYPE")),
        "{:?}",
        dead.ids[0].get::<String>("reason")
    );
}
