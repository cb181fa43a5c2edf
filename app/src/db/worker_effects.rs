//! The database effects of queue handlers. Each records the message's event id in
//! `processed_messages` in the same transaction as its effect, so a redelivered message (after a
//! crash between commit and ack) is recognised and has no second effect.
//!
//! Workers apply messages in batches: one transaction (one commit) per shard for every message of
//! a batch, still deduplicated per event id. A batch whose transaction fails for a reason other
//! than an unavailable shard is applied again message by message, so one message the database
//! rejects (say, text it cannot store) fails alone and the others still apply once.

use std::collections::HashMap;

use sqlx::Connection;

use super::{Cluster, DbError, Shard};

/// What a handler's transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The effect is committed now.
    Applied,
    /// The event was processed before; nothing was done.
    Duplicate,
    /// The data the message refers to does not exist (a permanent failure).
    Missing,
}

/// Renders the order confirmation and stores it as sent.
pub async fn send_order_confirmation(
    cluster: &Cluster,
    stream: &str,
    event_id: &str,
    order_id: i64,
    user_id: i64,
) -> Result<Effect, DbError> {
    const OPERATION: &str = "record an order confirmation";
    let shard = cluster.shard_for_user(user_id);
    let mut connection = shard.acquire_primary(OPERATION).await?;
    let mut transaction = connection
        .begin()
        .await
        .map_err(|error| shard.primary_error(OPERATION, error))?;
    if !claim_event(&mut transaction, stream, event_id)
        .await
        .map_err(|error| shard.primary_error(OPERATION, error))?
    {
        return Ok(Effect::Duplicate);
    }
    let order: Option<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT u.email, u.name, o.total_cents, jsonb_array_length(o.items)::bigint \
         FROM orders o JOIN users u ON u.id = o.user_id WHERE o.id = $1 AND o.user_id = $2",
    )
    .bind(order_id)
    .bind(user_id)
    .fetch_optional(&mut *transaction)
    .await
    .map_err(|error| shard.primary_error(OPERATION, error))?;
    let Some((recipient, name, total_cents, item_count)) = order else {
        return Ok(Effect::Missing);
    };
    let (subject, body) = render_confirmation(order_id, &name, total_cents, item_count);
    sqlx::query(
        "INSERT INTO sent_emails (event_id, order_id, user_id, recipient, subject, body) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event_id)
    .bind(order_id)
    .bind(user_id)
    .bind(&recipient)
    .bind(&subject)
    .bind(&body)
    .execute(&mut *transaction)
    .await
    .map_err(|error| shard.primary_error(OPERATION, error))?;
    transaction
        .commit()
        .await
        .map_err(|error| shard.primary_error(OPERATION, error))?;
    Ok(Effect::Applied)
}

/// Adds one to today's counter of `event` on the user's shard.
pub async fn count_event(
    cluster: &Cluster,
    stream: &str,
    event_id: &str,
    event: &str,
    user_id: i64,
) -> Result<Effect, DbError> {
    const OPERATION: &str = "count an analytics event";
    let shard = cluster.shard_for_user(user_id);
    let mut connection = shard.acquire_primary(OPERATION).await?;
    let mut transaction = connection
        .begin()
        .await
        .map_err(|error| shard.primary_error(OPERATION, error))?;
    if !claim_event(&mut transaction, stream, event_id)
        .await
        .map_err(|error| shard.primary_error(OPERATION, error))?
    {
        return Ok(Effect::Duplicate);
    }
    sqlx::query(
        "INSERT INTO analytics_counters (event, day, count) VALUES ($1, current_date, 1) \
         ON CONFLICT (event, day) DO UPDATE SET count = analytics_counters.count + 1",
    )
    .bind(event)
    .execute(&mut *transaction)
    .await
    .map_err(|error| shard.primary_error(OPERATION, error))?;
    transaction
        .commit()
        .await
        .map_err(|error| shard.primary_error(OPERATION, error))?;
    Ok(Effect::Applied)
}

/// Inserts the event id; false if it was already there. A concurrent duplicate waits on the
/// first one's row lock and then sees the conflict, so two deliveries never both apply.
async fn claim_event(
    connection: &mut sqlx::PgConnection,
    stream: &str,
    event_id: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO processed_messages (event_id, stream) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(event_id)
    .bind(stream)
    .execute(connection)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// One order confirmation to send.
#[derive(Clone, Copy, Debug)]
pub struct Confirmation<'a> {
    /// Deduplication key.
    pub event_id: &'a str,
    /// The order.
    pub order_id: i64,
    /// Its owner (decides the shard).
    pub user_id: i64,
}

/// One sign-up notice to send.
#[derive(Clone, Copy, Debug)]
pub struct Notice<'a> {
    /// Deduplication key.
    pub event_id: &'a str,
    /// The account whose address someone tried to sign up with (decides the shard).
    pub user_id: i64,
}

/// Renders the notices that someone tried to sign up with an account's address and stores them
/// as sent (without an order), each once. Notices are rare (one per account and hour at most),
/// so each is its own transaction. The results are in the order of `batch`.
pub async fn send_sign_up_notices(
    cluster: &Cluster,
    stream: &str,
    batch: &[Notice<'_>],
) -> Vec<Result<Effect, DbError>> {
    let mut outcomes = Vec::with_capacity(batch.len());
    for notice in batch {
        outcomes.push(send_sign_up_notice(cluster, stream, notice).await);
    }
    outcomes
}

async fn send_sign_up_notice(
    cluster: &Cluster,
    stream: &str,
    notice: &Notice<'_>,
) -> Result<Effect, DbError> {
    const OPERATION: &str = "record a sign-up notice";
    let shard = cluster.shard_for_user(notice.user_id);
    let failed = |error| shard.primary_error(OPERATION, error);
    let mut connection = shard.acquire_primary(OPERATION).await?;
    let mut transaction = connection.begin().await.map_err(failed)?;
    if !claim_event(&mut transaction, stream, notice.event_id)
        .await
        .map_err(failed)?
    {
        return Ok(Effect::Duplicate);
    }
    let account: Option<(String, String)> =
        sqlx::query_as("SELECT email, name FROM users WHERE id = $1")
            .bind(notice.user_id)
            .fetch_optional(&mut *transaction)
            .await
            .map_err(failed)?;
    // Dropped without a commit: the claim goes too.
    let Some((recipient, name)) = account else {
        return Ok(Effect::Missing);
    };
    let (subject, body) = render_sign_up_notice(&name);
    sqlx::query(
        "INSERT INTO sent_emails (event_id, order_id, user_id, recipient, subject, body) \
         VALUES ($1, NULL, $2, $3, $4, $5)",
    )
    .bind(notice.event_id)
    .bind(notice.user_id)
    .bind(&recipient)
    .bind(&subject)
    .bind(&body)
    .execute(&mut *transaction)
    .await
    .map_err(failed)?;
    transaction.commit().await.map_err(failed)?;
    Ok(Effect::Applied)
}

/// One analytics event to count.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    /// Deduplication key.
    pub event_id: &'a str,
    /// Counter name.
    pub event: &'a str,
    /// The user it is about (decides the shard).
    pub user_id: i64,
}

/// [`send_order_confirmation`] for many messages: one transaction per shard. The results are in
/// the order of `batch`.
pub async fn send_order_confirmations(
    cluster: &Cluster,
    stream: &str,
    batch: &[Confirmation<'_>],
) -> Vec<Result<Effect, DbError>> {
    let groups = by_shard(
        cluster,
        batch
            .iter()
            .map(|message| (message.event_id, message.user_id)),
    );
    let mut results = vec![None; batch.len()];
    for (shard, indexes) in groups {
        let messages: Vec<Confirmation> = indexes.iter().map(|index| batch[*index]).collect();
        let outcomes = match confirm_on_shard(&shard, stream, &messages).await {
            Ok(outcomes) => outcomes,
            Err(error @ DbError::Unavailable { .. }) => vec![Err(error); messages.len()],
            Err(error) => {
                tracing::warn!(%error, shard = shard.index, "batch of confirmations failed; applying them one by one");
                let mut outcomes = Vec::with_capacity(messages.len());
                for message in &messages {
                    outcomes.push(
                        send_order_confirmation(
                            cluster,
                            stream,
                            message.event_id,
                            message.order_id,
                            message.user_id,
                        )
                        .await,
                    );
                }
                outcomes
            }
        };
        for (index, outcome) in indexes.into_iter().zip(outcomes) {
            results[index] = Some(outcome);
        }
    }
    finish(results, batch.iter().map(|message| message.event_id))
}

/// [`count_event`] for many messages: one statement (one commit) per shard, one counter update
/// per event name. The results are in the order of `batch`.
pub async fn count_events(
    cluster: &Cluster,
    stream: &str,
    batch: &[Event<'_>],
) -> Vec<Result<Effect, DbError>> {
    let groups = by_shard(
        cluster,
        batch
            .iter()
            .map(|message| (message.event_id, message.user_id)),
    );
    let mut results = vec![None; batch.len()];
    for (shard, indexes) in groups {
        let messages: Vec<Event> = indexes.iter().map(|index| batch[*index]).collect();
        let outcomes = match count_on_shard(&shard, stream, &messages).await {
            Ok(outcomes) => outcomes,
            Err(error @ DbError::Unavailable { .. }) => vec![Err(error); messages.len()],
            Err(error) => {
                tracing::warn!(%error, shard = shard.index, "batch of analytics events failed; applying them one by one");
                let mut outcomes = Vec::with_capacity(messages.len());
                for message in &messages {
                    outcomes.push(
                        count_event(
                            cluster,
                            stream,
                            message.event_id,
                            message.event,
                            message.user_id,
                        )
                        .await,
                    );
                }
                outcomes
            }
        };
        for (index, outcome) in indexes.into_iter().zip(outcomes) {
            results[index] = Some(outcome);
        }
    }
    finish(results, batch.iter().map(|message| message.event_id))
}

/// Groups the indexes of a batch by shard. A repeated event id (the same message delivered twice
/// within one batch) is left out here and gets its first copy's outcome in [`finish`].
fn by_shard<'a>(
    cluster: &Cluster,
    messages: impl Iterator<Item = (&'a str, i64)>,
) -> Vec<(std::sync::Arc<Shard>, Vec<usize>)> {
    let topology = cluster.topology();
    let mut seen = std::collections::HashSet::new();
    let mut groups: Vec<(std::sync::Arc<Shard>, Vec<usize>)> = Vec::new();
    for (index, (event_id, user_id)) in messages.enumerate() {
        if !seen.insert(event_id) {
            continue;
        }
        let shard = topology.shard_for_key(&user_id.to_string());
        match groups
            .iter_mut()
            .find(|(known, _)| known.index == shard.index)
        {
            Some((_, indexes)) => indexes.push(index),
            None => groups.push((shard, vec![index])),
        }
    }
    groups
}

/// Fills in the outcome of repeated event ids: the first copy's, except that only one copy can
/// have applied the effect (the others are duplicates).
fn finish<'a>(
    results: Vec<Option<Result<Effect, DbError>>>,
    event_ids: impl Iterator<Item = &'a str>,
) -> Vec<Result<Effect, DbError>> {
    let mut outcomes: Vec<Result<Effect, DbError>> = Vec::with_capacity(results.len());
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (index, (event_id, result)) in event_ids.zip(results).enumerate() {
        let outcome = match result {
            Some(outcome) => {
                first.insert(event_id, index);
                outcome
            }
            None => {
                let original = first
                    .get(event_id)
                    .map(|first| &outcomes[*first])
                    .expect("by_shard keeps the first copy of every event id, which comes first");
                match original {
                    Ok(Effect::Applied | Effect::Duplicate) => Ok(Effect::Duplicate),
                    other => other.clone(),
                }
            }
        };
        outcomes.push(outcome);
    }
    outcomes
}

/// What a confirmation needs from its order, for a message whose order exists.
#[derive(sqlx::FromRow)]
struct OrderToConfirm {
    event_id: String,
    /// False: processed before (a duplicate).
    claimed: bool,
    recipient: String,
    name: String,
    total_cents: i64,
    item_count: i64,
}

/// Columns of `sent_emails` for one insert of many rows.
#[derive(Default)]
struct SentEmails<'a> {
    event_ids: Vec<&'a str>,
    order_ids: Vec<i64>,
    user_ids: Vec<i64>,
    recipients: Vec<&'a str>,
    subjects: Vec<String>,
    bodies: Vec<String>,
}

/// Claims and renders the confirmations of one shard in one transaction: one statement claims the
/// event ids whose order exists and returns what the emails need, a second stores the rendered
/// emails.
async fn confirm_on_shard(
    shard: &Shard,
    stream: &str,
    messages: &[Confirmation<'_>],
) -> Result<Vec<Result<Effect, DbError>>, DbError> {
    const OPERATION: &str = "record order confirmations";
    let failed = |error| shard.primary_error(OPERATION, error);
    let event_ids: Vec<&str> = messages.iter().map(|message| message.event_id).collect();
    let order_ids: Vec<i64> = messages.iter().map(|message| message.order_id).collect();
    let user_ids: Vec<i64> = messages.iter().map(|message| message.user_id).collect();
    let mut connection = shard.acquire_primary(OPERATION).await?;
    let mut transaction = connection.begin().await.map_err(failed)?;
    // Event ids are claimed in a fixed order, so two batches sharing some (a redelivery) wait for
    // each other instead of deadlocking.
    let rows: Vec<OrderToConfirm> = sqlx::query_as(
        "WITH batch AS ( \
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS m(event_id, order_id, user_id) \
         ), found AS ( \
             SELECT b.event_id, u.email AS recipient, u.name, o.total_cents, \
                    jsonb_array_length(o.items)::bigint AS item_count \
             FROM batch b JOIN orders o ON o.id = b.order_id AND o.user_id = b.user_id \
             JOIN users u ON u.id = o.user_id \
         ), claimed AS ( \
             INSERT INTO processed_messages (event_id, stream) \
             SELECT event_id, $4 FROM found ORDER BY event_id \
             ON CONFLICT DO NOTHING RETURNING event_id \
         ) \
         SELECT f.event_id, c.event_id IS NOT NULL AS claimed, f.recipient, f.name, \
                f.total_cents, f.item_count \
         FROM found f LEFT JOIN claimed c USING (event_id)",
    )
    .bind(&event_ids)
    .bind(&order_ids)
    .bind(&user_ids)
    .bind(stream)
    .fetch_all(&mut *transaction)
    .await
    .map_err(failed)?;
    let found: HashMap<&str, &OrderToConfirm> = rows
        .iter()
        .map(|row| (row.event_id.as_str(), row))
        .collect();
    let mut outcomes = Vec::with_capacity(messages.len());
    let mut sent = SentEmails::default();
    for message in messages {
        outcomes.push(Ok(match found.get(message.event_id) {
            None => Effect::Missing,
            Some(order) if !order.claimed => Effect::Duplicate,
            Some(order) => {
                let (subject, body) = render_confirmation(
                    message.order_id,
                    &order.name,
                    order.total_cents,
                    order.item_count,
                );
                sent.event_ids.push(message.event_id);
                sent.order_ids.push(message.order_id);
                sent.user_ids.push(message.user_id);
                sent.recipients.push(&order.recipient);
                sent.subjects.push(subject);
                sent.bodies.push(body);
                Effect::Applied
            }
        }));
    }
    if !sent.event_ids.is_empty() {
        sqlx::query(
            "INSERT INTO sent_emails (event_id, order_id, user_id, recipient, subject, body) \
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[])",
        )
        .bind(&sent.event_ids)
        .bind(&sent.order_ids)
        .bind(&sent.user_ids)
        .bind(&sent.recipients)
        .bind(&sent.subjects)
        .bind(&sent.bodies)
        .execute(&mut *transaction)
        .await
        .map_err(failed)?;
    }
    transaction.commit().await.map_err(failed)?;
    Ok(outcomes)
}

/// Claims the event ids of one shard and adds the new ones to their counters, all in one
/// statement (its own transaction).
async fn count_on_shard(
    shard: &Shard,
    stream: &str,
    messages: &[Event<'_>],
) -> Result<Vec<Result<Effect, DbError>>, DbError> {
    const OPERATION: &str = "count analytics events";
    let event_ids: Vec<&str> = messages.iter().map(|message| message.event_id).collect();
    let events: Vec<&str> = messages.iter().map(|message| message.event).collect();
    // Claims in event-id order and counters in event order: concurrent batches take their locks
    // in the same order and wait instead of deadlocking.
    let claimed: Vec<String> = sqlx::query_scalar(
        "WITH batch AS ( \
             SELECT * FROM unnest($1::text[], $2::text[]) AS m(event_id, event) \
         ), claimed AS ( \
             INSERT INTO processed_messages (event_id, stream) \
             SELECT event_id, $3 FROM batch ORDER BY event_id \
             ON CONFLICT DO NOTHING RETURNING event_id \
         ), counted AS ( \
             INSERT INTO analytics_counters (event, day, count) \
             SELECT b.event, current_date, count(*) FROM batch b JOIN claimed c USING (event_id) \
             GROUP BY b.event ORDER BY b.event \
             ON CONFLICT (event, day) DO UPDATE SET count = analytics_counters.count + EXCLUDED.count \
         ) \
         SELECT event_id FROM claimed",
    )
    .bind(&event_ids)
    .bind(&events)
    .bind(stream)
    .fetch_all(&shard.primary)
    .await
    .map_err(|error| shard.primary_error(OPERATION, error))?;
    let claimed: std::collections::HashSet<&str> = claimed.iter().map(String::as_str).collect();
    Ok(messages
        .iter()
        .map(|message| {
            Ok(if claimed.contains(message.event_id) {
                Effect::Applied
            } else {
                Effect::Duplicate
            })
        })
        .collect())
}

/// Subject and body of a sign-up notice.
fn render_sign_up_notice(name: &str) -> (String, String) {
    let subject = "Someone tried to sign up with your address".to_string();
    let body = format!(
        "Hi {name},\n\nsomeone tried to create an account with this address, which already has \
         one: yours. Nothing was changed. If it was you, sign in instead; if you forgot your \
         password, ask for a password-set token.\n"
    );
    (subject, body)
}

/// Subject and body of an order confirmation.
fn render_confirmation(
    order_id: i64,
    name: &str,
    total_cents: i64,
    item_count: i64,
) -> (String, String) {
    let subject = format!("Your order {order_id} is confirmed");
    let body = format!(
        "Hi {name},\n\nthank you for your order {order_id}: {item_count} item(s), total {}.{:02}.\n",
        total_cents / 100,
        total_cents % 100
    );
    (subject, body)
}
