//! One-time password-set tokens: how an account without a password (created before passwords
//! existed) gets its first one, and how an operator helps a user who lost theirs.
//!
//! A token is issued out of band by someone who can run `scaled-app password-token` in the
//! cluster (that access is the credential), handed to the user, and redeemed once with
//! `PUT /api/users/{id}/password {"token": .., "password": ..}`. Tokens are 256 random bits, valid
//! for [`TOKEN_TTL`], bound to one user, and stored like session ids: Redis holds only a keyed
//! hash of the token, so a dump of Redis yields no usable token.

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
    budget: Duration,
}

impl PasswordTokens {
    /// A store keyed with `secret` (the session secret), giving Redis `budget` per call.
    pub fn new(redis: RedisClient, secret: Secret, budget: Duration) -> Self {
        PasswordTokens {
            redis,
            secret,
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
                connection.set_ex::<_, _, ()>(self.key(&token), user_id, TOKEN_TTL.as_secs()),
            )
            .await?;
        Ok(token)
    }

    /// Whether `token` was issued for `user_id`; a token of the right user is used up by this
    /// call (`GETDEL`), so two concurrent redemptions cannot both succeed. Tokens of another shape
    /// never reach Redis.
    pub async fn redeem(&self, token: &str, user_id: i64) -> Result<bool, RedisCallError> {
        if !crate::sessions::is_well_formed(token) {
            return Ok(false);
        }
        let mut connection = self.redis.connection();
        let owner: Option<i64> = self
            .redis
            .timed(
                "password_token_redeem",
                self.budget,
                connection.get_del(self.key(token)),
            )
            .await?;
        Ok(owner == Some(user_id))
    }

    fn key(&self, token: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.secret.expose().as_bytes());
        hasher.update(b"password-token:");
        hasher.update(token.as_bytes());
        format!("password-token:{}", hex::encode(hasher.finalize()))
    }
}
