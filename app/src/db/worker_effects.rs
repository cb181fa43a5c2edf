//! The database effects of queue handlers. Each records the message's event id in
//! `processed_messages` in the same transaction as its effect, so a redelivered message (after a
//! crash between commit and ack) is recognised and has no second effect.

use sqlx::Connection;

use super::{Cluster, DbError};

/// What a handler's transaction did.
#[derive(Debug, PartialEq, Eq)]
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
    let subject = format!("Your order {order_id} is confirmed");
    let body = format!(
        "Hi {name},\n\nthank you for your order {order_id}: {item_count} item(s), total {}.{:02}.\n",
        total_cents / 100,
        total_cents % 100
    );
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
