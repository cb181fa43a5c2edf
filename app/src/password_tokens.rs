//! One-time password-set tokens: how an account without a password (created before passwords
//! existed) gets its first one, and how an operator helps a user who lost theirs.
//!
//! A token is issued out of band by someone who can run `scaled-app password-token` in the
//! cluster (that access is the credential), handed to the user, and redeemed once with
//! `PUT /api/users/{id}/password {"token": .., "password": ..}`. Tokens are 256 random bits, valid
//! for [`TOKEN_TTL`], bound to one user, and stored like session ids: Redis holds only a keyed
//! hash of the token, so a dump of Redis yields no usable token. The hash is keyed with the
//! session secret; after a rotation a token is also looked for under the previous secret's key
//! (in the same round trip), so tokens issued before it stay redeemable (see
//! [`crate::sessions`] on rotation).

use std::time::Duration;

use redis::AsyncCommands;
use scaled_contract::Secret;
use sha2::{Digest, Sha256};

use crate::redis_client::{RedisCallError, RedisClient};

/// How long an issued token can be redeemed.
pub const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Issues and redeems tokens.
#[derive(Clone)]
pub struct PasswordTokens {
    redis: RedisClient,
    secret: Secret,
    /// The session secret before the last rotation: redeems, never issues.
    previous: Option<Secret>,
    budget: Duration,
}

impl PasswordTokens {
    /// A store keyed with `secret` (the session secret) that still redeems tokens keyed with
    /// `previous`, giving Redis `budget` per call.
    pub fn new(
        redis: RedisClient,
        secret: Secret,
        previous: Option<Secret>,
        budget: Duration,
    ) -> Self {
        PasswordTokens {
            redis,
            secret,
            previous,
            budget,
        }
    }

    /// A new token for `user_id`; earlier tokens of the user stay valid until used or expired.
    pub async fn issue(&self, user_id: i64) -> Result<String, RedisCallError> {
        let token = hex::encode(rand::random::<[u8; 32]>());
        let mut connection = self.redis.connection();
        self.redis
            .timed(
                "password_token_issue",
                self.budget,
                connection.set_ex::<_, _, ()>(
                    key_under(&self.secret, &token),
                    user_id,
                    TOKEN_TTL.as_secs(),
                ),
            )
            .await?;
        Ok(token)
    }

    /// Whether `token` was issued for `user_id`; a token of the right user is used up by this
    /// call (`GETDEL`, under the key of every configured secret), so two concurrent redemptions
    /// cannot both succeed. Tokens of another shape never reach Redis.
    pub async fn redeem(&self, token: &str, user_id: i64) -> Result<bool, RedisCallError> {
        if !crate::sessions::is_well_formed(token) {
            return Ok(false);
        }
        let mut pipeline = redis::pipe();
        for secret in std::iter::once(&self.secret).chain(&self.previous) {
            pipeline.get_del(key_under(secret, token));
        }
        let mut connection = self.redis.connection();
        let owners: Vec<Option<i64>> = self
            .redis
            .timed(
                "password_token_redeem",
                self.budget,
                pipeline.query_async(&mut connection),
            )
            .await?;
        Ok(owners.contains(&Some(user_id)))
    }
}

/// `password-token:<SHA-256(secret || "password-token:" || token)>`.
fn key_under(secret: &Secret, token: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(secret.expose().as_bytes());
    hasher.update(b"password-token:");
    hasher.update(token.as_bytes());
    format!("password-token:{}", hex::encode(hasher.finalize()))
}
