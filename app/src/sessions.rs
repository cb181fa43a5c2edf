//! Sessions kept in Redis with a sliding TTL, so any pod can serve any request.
//!
//! Ids are 256 random bits from a CSPRNG, new on every sign-in (no fixation). Redis stores only a
//! keyed hash of the id (`SHA-256(secret || id)`), so a dump of Redis yields no usable cookie.
//!
//! Every user has a session generation (`session-generation:<user id>`, 0 until first set), and a
//! session carries the generation it was opened under: a password change bumps it, which voids
//! every session of that user at once, wherever it is used.
//!
//! Sessions are opened only by a sign-in with a password, and by the hidden `open-sessions`
//! benchmark command, which needs the session secret and the store itself (whoever has both can
//! forge sessions anyway). Versions before that opened a session for any user id without a
//! credential; those sessions were stored under `session:<hash>`, and this store reads and writes
//! `session:v2:<hash>` only, so none of them is honoured.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{
    redis_client::{RedisCallError, RedisClient},
    secret::Secret,
};

/// Failures of the session store.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Redis could not be used.
    #[error("failed to reach the session store")]
    Unavailable(#[from] RedisCallError),
    /// A stored session is not valid JSON (written by something else).
    #[error("failed to decode a stored session")]
    Corrupt(#[source] serde_json::Error),
}

/// The session store.
#[derive(Clone)]
pub struct SessionStore {
    redis: RedisClient,
    secret: Secret,
    ttl: Duration,
    budget: Duration,
}

impl SessionStore {
    /// A store whose sessions live `ttl` since their last use.
    pub fn new(redis: RedisClient, secret: Secret, ttl: Duration, budget: Duration) -> Self {
        SessionStore {
            redis,
            secret,
            ttl,
            budget,
        }
    }

    /// Session lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Stores `data` under a fresh id and returns the id; `replaces` (the caller's previous
    /// session, if any) is deleted in the same round trip.
    pub async fn create(
        &self,
        data: &Value,
        replaces: Option<&str>,
    ) -> Result<String, SessionError> {
        let id = hex::encode(rand::random::<[u8; 32]>());
        let mut pipeline = redis::pipe();
        pipeline
            .set_ex(self.key(&id), data.to_string(), self.ttl.as_secs())
            .ignore();
        if let Some(old) = replaces {
            pipeline.del(self.key(old)).ignore();
        }
        let mut connection = self.redis.connection();
        self.redis
            .timed(
                "session_create",
                self.budget,
                pipeline.query_async::<()>(&mut connection),
            )
            .await?;
        Ok(id)
    }

    /// Opens a session of `user_id` under the user's current generation (what a sign-in does once
    /// the password matched) and returns its id and data; `replaces` is ended as in
    /// [`SessionStore::create`].
    pub async fn open(
        &self,
        user_id: i64,
        replaces: Option<&str>,
    ) -> Result<(String, Value), SessionError> {
        let generation = self.generation(user_id).await?;
        let data = new_data(user_id, generation);
        let id = self.create(&data, replaces).await?;
        Ok((id, data))
    }

    /// The current session generation of `user_id`.
    pub async fn generation(&self, user_id: i64) -> Result<u64, SessionError> {
        let mut connection = self.redis.connection();
        let generation: Option<u64> = self
            .redis
            .timed(
                "session_generation",
                self.budget,
                connection.get(generation_key(user_id)),
            )
            .await?;
        Ok(generation.unwrap_or(0))
    }

    /// Voids every session of `user_id` (a password change) and returns the new generation. The
    /// key has no TTL: it must outlive every session it voids (and `volatile-*` eviction never
    /// picks it).
    pub async fn end_all(&self, user_id: i64) -> Result<u64, SessionError> {
        let mut connection = self.redis.connection();
        Ok(self
            .redis
            .timed(
                "session_end_all",
                self.budget,
                connection.incr(generation_key(user_id), 1),
            )
            .await?)
    }

    /// The session's data, extending its lifetime; `None` if unknown or expired.
    pub async fn load(&self, id: &str) -> Result<Option<Value>, SessionError> {
        let mut connection = self.redis.connection();
        let raw: Option<String> = self
            .redis
            .timed(
                "session_load",
                self.budget,
                connection.get_ex(self.key(id), redis::Expiry::EX(self.ttl.as_secs())),
            )
            .await?;
        raw.map(|raw| serde_json::from_str(&raw).map_err(SessionError::Corrupt))
            .transpose()
    }

    /// Deletes the session; true if it existed.
    pub async fn delete(&self, id: &str) -> Result<bool, SessionError> {
        let mut connection = self.redis.connection();
        let removed: i64 = self
            .redis
            .timed("session_delete", self.budget, connection.del(self.key(id)))
            .await?;
        Ok(removed > 0)
    }

    fn key(&self, id: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.secret.expose().as_bytes());
        hasher.update(id.as_bytes());
        format!("session:v2:{}", hex::encode(hasher.finalize()))
    }
}

fn generation_key(user_id: i64) -> String {
    format!("session-generation:{user_id}")
}

/// The data of a new session of `user_id`, opened under `generation`.
pub fn new_data(user_id: i64, generation: u64) -> Value {
    serde_json::json!({
        "user_id": user_id,
        "generation": generation,
        "created_at": chrono::Utc::now(),
    })
}

/// The generation a session's data was opened under.
pub fn generation_of(data: &Value) -> u64 {
    data.get("generation").and_then(Value::as_u64).unwrap_or(0)
}

/// The signed-in user of a session's data.
pub fn user_of(data: &Value) -> Option<i64> {
    data.get("user_id")
        .and_then(Value::as_i64)
        .filter(|id| *id > 0)
}

/// `name=id`: the session cookie as a client sends it back in `Cookie` (and the start of the
/// `Set-Cookie` value that hands it out).
pub fn cookie_pair(cookie_name: &str, id: &str) -> String {
    format!("{cookie_name}={id}")
}

/// Whether `id` has the shape of an id this store issues (so junk never reaches Redis).
pub fn is_well_formed(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|byte| byte.is_ascii_hexdigit())
}
