//! The transactional outbox: messages written in the same transaction as the change that causes
//! them, and taken out again by the relay once Redis has them.

use sqlx::PgConnection;

/// Outbox topic that is not a queue: "invalidate the cached user in the payload". Written with
/// every user change so a change made while Redis is unreachable still reaches the cache later.
pub const CACHE_INVALIDATION: &str = "cache:invalidate";

/// `type` of the email message telling an account's owner that someone tried to sign up with its
/// address (written here, rendered by the email worker).
pub const SIGN_UP_NOTICE: &str = "sign_up_notice";

/// A random 128-bit event id, by which the message's handler deduplicates.
pub fn new_event_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// One outbox row.
#[derive(Debug, sqlx::FromRow)]
pub struct OutboxRow {
    /// Row id (per shard).
    pub id: i64,
    /// Target stream, or [`CACHE_INVALIDATION`].
    pub stream: String,
    /// Message body: JSON text, passed on to Redis as it is (not parsed and printed again).
    pub payload: String,
}

/// Adds a cache invalidation for `user_id` to the caller's transaction.
pub async fn enqueue_invalidation(
    connection: &mut PgConnection,
    user_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO outbox (stream, payload) VALUES ($1, jsonb_build_object('user_id', $2::bigint))")
        .bind(CACHE_INVALIDATION)
        .bind(user_id)
        .execute(connection)
        .await
        .map(|_| ())
}

/// Adds a [`SIGN_UP_NOTICE`] for `user_id` to `stream` (the email queue), on the user's shard.
pub async fn enqueue_sign_up_notice(
    connection: &mut PgConnection,
    stream: &str,
    user_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO outbox (stream, payload) VALUES ($1, jsonb_build_object('event_id', $2::text, \
         'type', $3::text, 'user_id', $4::bigint))",
    )
    .bind(stream)
    .bind(new_event_id())
    .bind(SIGN_UP_NOTICE)
    .bind(user_id)
    .execute(connection)
    .await
    .map(|_| ())
}

/// Locks up to `limit` rows no other relay holds (`SKIP LOCKED`), oldest first. The relay takes
/// them in batches, so one transaction (one commit) moves many messages.
pub async fn lock_batch(
    connection: &mut PgConnection,
    limit: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, stream, payload::text AS payload FROM outbox ORDER BY id LIMIT $1 \
         FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(connection)
    .await
}

/// Removes relayed (or dead-lettered) rows, in the transaction that locked them.
pub async fn delete(connection: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(connection)
        .await
        .map(|_| ())
}

/// The current WAL position: every row this transaction can see was committed at or before it.
pub async fn current_lsn(connection: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let lsn: i64 = sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0')::bigint")
        .fetch_one(connection)
        .await?;
    Ok(u64::try_from(lsn).unwrap_or(0))
}
