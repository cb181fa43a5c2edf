//! The outbox relay, fed rows directly: batches, a row Redis refuses, and replicas that must
//! confirm.

use std::time::Duration;

use redis::AsyncCommands;

use crate::support::{RedisPair, RedisServer, TestApp, eventually};

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

/// Rows on the outbox of shard 0 of `app`, one `email:send` message each, with event ids
/// `<prefix>-1` .. `<prefix>-<count>`.
async fn insert_rows(app: &TestApp, prefix: &str, count: i32) {
    sqlx::query(
        "INSERT INTO outbox (stream, payload) \
         SELECT 'email:send', jsonb_build_object('event_id', $1 || '-' || n) \
         FROM generate_series(1, $2) AS n",
    )
    .bind(prefix)
    .bind(count)
    .execute(&app.primary(0).await)
    .await
    .expect("outbox rows");
    app.state.relay_wake.notify_one();
}

async fn outbox_rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.primary(0).await)
        .await
        .expect("count the outbox")
}

/// The event ids in `email:send` on `server` (database 1), in stream order.
async fn sent_events(server: &RedisServer) -> Vec<String> {
    let mut redis = redis::Client::open(server.url(1))
        .expect("a redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let sent: redis::streams::StreamRangeReply =
        redis.xrange_all("email:send").await.expect("xrange");
    sent.ids
        .iter()
        .filter_map(|entry| entry.get::<String>("payload"))
        .map(|payload| {
            let message: serde_json::Value = serde_json::from_str(&payload).expect("json");
            message["event_id"].as_str().expect("event id").to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_replica_required_outbox_rows_go_only_once_it_holds_them_and_are_resent_after_its_outage()
 {
    let pair = RedisPair::start();
    let app = TestApp::spawn_with(|config| {
        config.redis.url = pair.primary.url(1);
        config.redis.confirm_replicas = 1;
    })
    .await;
    let waits = |result: &'static str| {
        let app = &app;
        async move {
            app.metric(
                "redis_replication_waits_total",
                &[
                    r#"operation="outbox_relay""#,
                    &format!(r#"result="{result}""#),
                ],
            )
            .await
        }
    };

    // The replica acknowledges: the rows go, and the replica holds every message.
    insert_rows(&app, "evt-up", 5).await;
    eventually("the outbox to empty", Duration::from_secs(10), || async {
        (outbox_rows(&app).await == 0).then_some(())
    })
    .await;
    // Each event at least once, not exactly once: on a loaded machine (CI saw it) a 500 ms
    // `WAIT` or the 2 s send can time out with the replica up, and then the batch is kept and
    // sent again; delivery is at least once and the consumer dedups by event id.
    let mut on_replica = sent_events(&pair.replica).await;
    on_replica.sort();
    on_replica.dedup();
    assert_eq!(
        on_replica.len(),
        5,
        "every event reached the replica: {on_replica:?}"
    );
    assert!(waits("confirmed").await >= 1.0);
    let unconfirmed_before = waits("unconfirmed").await;

    // No replica: the primary takes the messages, but the rows stay.
    pair.replica.stop();
    insert_rows(&app, "evt-down", 5).await;
    eventually(
        "a batch the replicas did not confirm",
        Duration::from_secs(10),
        || async { (waits("unconfirmed").await > unconfirmed_before).then_some(()) },
    )
    .await;
    // Orders keep ringing the relay meanwhile; it backs off all the same (0.5 s, 1 s, 2 s, ...),
    // so in 4 s the batch goes at most four times more, not every poll or every ring.
    let ringing = tokio::time::Instant::now();
    while ringing.elapsed() < Duration::from_secs(4) {
        app.state.relay_wake.notify_one();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(outbox_rows(&app).await, 5, "unconfirmed rows are kept");
    let on_primary = sent_events(&pair.primary).await;
    let copies = on_primary
        .iter()
        .filter(|id| id.starts_with("evt-down"))
        .count();
    assert!(
        (5..=25).contains(&copies),
        "the unconfirmed batch was sent {copies} times over"
    );
    let unconfirmed = waits("unconfirmed").await - unconfirmed_before;
    assert!(
        unconfirmed <= 5.0,
        "{unconfirmed} unconfirmed passes in 4 s"
    );

    // The replica is back: the rows are sent again, this time confirmed, and then deleted.
    pair.replica.start();
    pair.replica.replicate(&pair.primary);
    eventually(
        "the kept rows to go once the replica is back",
        Duration::from_secs(40),
        || async { (outbox_rows(&app).await == 0).then_some(()) },
    )
    .await;
    let mut on_replica = sent_events(&pair.replica).await;
    assert!(on_replica.len() >= 10, "{on_replica:?}");
    on_replica.sort();
    on_replica.dedup();
    assert_eq!(
        on_replica.len(),
        10,
        "every message, each event at least once: {on_replica:?}"
    );
}
