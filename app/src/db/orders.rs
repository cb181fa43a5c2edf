//! Orders, stored on their user's shard together with the outbox messages they cause.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;

use super::{Cluster, DbError, ids, is_unique_violation, outbox::new_event_id};

/// Queue names the order messages go to.
#[derive(Clone, Copy, Debug)]
pub struct OrderStreams<'a> {
    /// Stream of the confirmation email.
    pub email: &'a str,
    /// Stream of the analytics event.
    pub analytics: &'a str,
}

/// A stored order.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Order {
    /// Order id.
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// Line items as sent.
    pub items: Json<Value>,
    /// Total in cents.
    pub total_cents: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Result of [`place`].
#[derive(Debug)]
pub enum Placed {
    /// Stored, with its messages in the outbox.
    Order(Order),
    /// The user does not exist.
    UserNotFound,
}

/// Stores an order and its two outbox messages in one statement (so one implicit transaction,
/// one round trip). Each message carries its own event id, by which handlers deduplicate.
pub async fn place(
    cluster: &Cluster,
    user_id: i64,
    items: &Value,
    total_cents: i64,
    streams: OrderStreams<'_>,
) -> Result<Placed, DbError> {
    const OPERATION: &str = "place an order";
    let shard = cluster.shard_for_user(user_id);
    loop {
        // Boxed: the driver's future is large, and unboxed it would make every order request's
        // future that large, copied in full whenever it moves.
        let placed = Box::pin(sqlx::query_as::<_, Order>(
            "WITH new_order AS ( \
                 INSERT INTO orders (id, user_id, items, total_cents) VALUES ($1, $2, $3, $4) \
                 RETURNING id, user_id, items, total_cents, created_at \
             ), queued AS ( \
                 INSERT INTO outbox (stream, payload) \
                 SELECT $5, jsonb_build_object('event_id', $6::text, 'type', 'order_confirmation', \
                                               'order_id', id, 'user_id', user_id) FROM new_order \
                 UNION ALL \
                 SELECT $7, jsonb_build_object('event_id', $8::text, 'event', 'order_created', \
                                               'order_id', id, 'user_id', user_id, 'total_cents', total_cents) \
                 FROM new_order \
             ) \
             SELECT id, user_id, items, total_cents, created_at FROM new_order",
        )
        .bind(ids::new_id())
        .bind(user_id)
        .bind(Json(items))
        .bind(total_cents)
        .bind(streams.email)
        .bind(new_event_id())
        .bind(streams.analytics)
        .bind(new_event_id())
        .fetch_one(&shard.primary))
        .await;
        return match placed {
            Ok(order) => Ok(Placed::Order(order)),
            // 23503: the user row the foreign key points at does not exist.
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("23503") => {
                Ok(Placed::UserNotFound)
            }
            Err(error) if is_unique_violation(&error) => continue,
            Err(error) => Err(shard.primary_error(OPERATION, error)),
        };
    }
}
