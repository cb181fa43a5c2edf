//! Sliding-window rate limiting, decided atomically in Redis.
//!
//! One Lua script trims the window, counts, and adds the request only if it is allowed, using
//! Redis's own clock (`TIME`) so pods with skewed clocks agree, and a member unique per request so
//! two requests in the same microsecond are both counted. Rejected requests are not recorded, so a
//! client hammering the limit does not extend its own lockout. Across any number of pods exactly
//! `limit` requests pass per window.
//!
//! Two limiters use it: [`RateLimiter`] counts requests per client ([`ClientKey`]: the signed-in
//! user, else the client's address), and [`AttemptLimiter`] counts failed sign-ins per account.
//! Keys are built only from a user id, a parsed and normalised IP address, or a hash, so nothing a
//! client sends becomes a Redis key as it is.

use std::{
    net::IpAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use redis::Script;
use scaled_contract::{FailureMode, RateLimitSettings};
use sha2::{Digest, Sha256};

use crate::{
    config::AttemptPolicy,
    metrics::Metrics,
    redis_client::{RedisCallError, RedisClient},
};

const SLIDING_WINDOW: &str = r"
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local limit = tonumber(ARGV[1])
local window_us = tonumber(ARGV[2]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_us - window_us)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now_us, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {1, limit - count - 1, tonumber(oldest[2]) + window_us - now_us}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, 0, tonumber(oldest[2]) + window_us - now_us}
";

/// The limiter's answer for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allowed {
        /// Requests per window.
        limit: u32,
        /// Requests left in the current window.
        remaining: u32,
        /// Seconds until the oldest counted request leaves the window.
        reset_seconds: u64,
    },
    /// Over the limit.
    Rejected {
        /// Requests per window.
        limit: u32,
        /// Seconds until a request would be allowed.
        retry_after_seconds: u64,
    },
    /// Redis could not decide; the configured failure mode did.
    Degraded {
        /// Whether the request may proceed.
        allowed: bool,
    },
}

/// Who a request is counted against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKey {
    /// A signed-in user, wherever its requests come from.
    User(i64),
    /// A client without a session, by address (see [`ClientKey::address`]).
    Address(IpAddr),
}

impl ClientKey {
    /// The key of a client address: IPv4 (also when written IPv4-mapped, `::ffff:a.b.c.d`) as it
    /// is, IPv6 by its /64 prefix, the block one subscriber gets, so a host cannot step through
    /// the 2^64 addresses of its own network to reset its count.
    pub fn address(address: IpAddr) -> Self {
        match address.to_canonical() {
            IpAddr::V4(v4) => ClientKey::Address(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                ClientKey::Address(IpAddr::V6(prefix.into()))
            }
        }
    }

    fn redis_key(&self) -> String {
        match self {
            ClientKey::User(id) => format!("ratelimit:user:{id}"),
            ClientKey::Address(address) => format!("ratelimit:ip:{address}"),
        }
    }
}

/// The per-client request limiter. Its settings can be replaced while it runs (config reload).
#[derive(Clone)]
pub struct RateLimiter {
    window: SlidingWindow,
    settings: Arc<RwLock<RateLimitSettings>>,
    metrics: Metrics,
}

impl RateLimiter {
    /// A limiter with `settings`, giving Redis `budget` per decision.
    pub fn new(
        redis: RedisClient,
        settings: RateLimitSettings,
        budget: Duration,
        metrics: Metrics,
    ) -> Self {
        RateLimiter {
            window: SlidingWindow::new(redis, budget),
            settings: Arc::new(RwLock::new(settings)),
            metrics,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> RateLimitSettings {
        self.settings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts `settings` in force for the next decision. Requests already counted stay counted: a
    /// lower limit applies to the current window at once, a higher one lets more through at once.
    pub fn replace_settings(&self, settings: RateLimitSettings) {
        *self
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = settings;
    }

    /// Counts one request of `client` if the window has room.
    pub async fn check(&self, client: &ClientKey) -> Decision {
        let settings = self.settings();
        let limit = settings.limit;
        let window = Duration::from_secs(u64::from(settings.window_seconds));
        match self
            .window
            .take(&client.redis_key(), limit, window, &new_member())
            .await
        {
            Ok(Taken::Yes {
                remaining,
                reset_seconds,
            }) => Decision::Allowed {
                limit,
                remaining,
                reset_seconds,
            },
            Ok(Taken::No {
                retry_after_seconds,
            }) => {
                self.metrics.rate_limit_rejections.inc();
                Decision::Rejected {
                    limit,
                    retry_after_seconds,
                }
            }
            Err(error) => {
                let allowed = settings.failure_mode == FailureMode::FailOpen;
                tracing::warn!(%error, allowed, "rate limiter without Redis; applying the failure mode");
                let mode = if allowed { "fail_open" } else { "fail_closed" };
                self.metrics
                    .rate_limit_degraded
                    .with_label_values(&[mode])
                    .inc();
                Decision::Degraded { allowed }
            }
        }
    }
}

/// One sign-in attempt holding a place in its account's window until it is known to succeed.
#[derive(Debug)]
pub struct Attempt {
    key: String,
    member: String,
}

/// Counts failed sign-ins per account. An attempt takes a place in the account's window before
/// the password is checked (so concurrent guesses cannot all slip in before any failure is
/// counted) and gives it back on success, so only failures (and attempts in flight) count. The
/// window slides: nobody is locked out for longer than the window after the last failure that
/// filled it. Accounts are keyed by a hash of the normalised email, known or not, so the limiter
/// answers alike for accounts that do not exist.
#[derive(Clone)]
pub struct AttemptLimiter {
    window: SlidingWindow,
    policy: AttemptPolicy,
}

impl AttemptLimiter {
    /// A limiter with `policy`, giving Redis `budget` per call.
    pub fn new(redis: RedisClient, policy: AttemptPolicy, budget: Duration) -> Self {
        AttemptLimiter {
            window: SlidingWindow::new(redis, budget),
            policy,
        }
    }

    /// Takes a place for an attempt on `email`'s account, or says how long until one is free.
    pub async fn begin(&self, email: &str) -> Result<Result<Attempt, u64>, RedisCallError> {
        let key = format!(
            "signin:{}",
            hex::encode(Sha256::digest(
                crate::db::users::normalize_email(email).as_bytes()
            ))
        );
        let member = new_member();
        let taken = self
            .window
            .take(&key, self.policy.failures, self.policy.window, &member)
            .await?;
        Ok(match taken {
            Taken::Yes { .. } => Ok(Attempt { key, member }),
            Taken::No {
                retry_after_seconds,
            } => Err(retry_after_seconds),
        })
    }

    /// The attempt succeeded: it no longer counts. (A failed attempt is simply dropped.) If Redis
    /// cannot be reached the place stays taken until it leaves the window.
    pub async fn succeeded(&self, attempt: Attempt) {
        if let Err(error) = self.window.remove(&attempt.key, &attempt.member).await {
            tracing::warn!(%error, "a successful sign-in still counts as an attempt");
        }
    }
}

enum Taken {
    Yes { remaining: u32, reset_seconds: u64 },
    No { retry_after_seconds: u64 },
}

/// The script and the connection both limiters share.
#[derive(Clone)]
struct SlidingWindow {
    redis: RedisClient,
    budget: Duration,
    script: Script,
}

impl SlidingWindow {
    fn new(redis: RedisClient, budget: Duration) -> Self {
        SlidingWindow {
            redis,
            budget,
            script: Script::new(SLIDING_WINDOW),
        }
    }

    async fn take(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
        member: &str,
    ) -> Result<Taken, RedisCallError> {
        let mut connection = self.redis.connection();
        let mut invocation = self.script.key(key);
        invocation
            .arg(limit)
            .arg(u64::try_from(window.as_millis()).unwrap_or(u64::MAX))
            .arg(member);
        let (allowed, remaining, microseconds): (i64, i64, i64) = self
            .redis
            .timed(
                "rate_limit",
                self.budget,
                invocation.invoke_async(&mut connection),
            )
            .await?;
        Ok(if allowed == 1 {
            Taken::Yes {
                remaining: u32::try_from(remaining).unwrap_or(0),
                reset_seconds: ceil_seconds(microseconds),
            }
        } else {
            Taken::No {
                retry_after_seconds: ceil_seconds(microseconds).max(1),
            }
        })
    }

    async fn remove(&self, key: &str, member: &str) -> Result<(), RedisCallError> {
        let mut connection = self.redis.connection();
        self.redis
            .timed(
                "rate_limit_release",
                self.budget,
                redis::cmd("ZREM")
                    .arg(key)
                    .arg(member)
                    .query_async::<i64>(&mut connection),
            )
            .await
            .map(|_| ())
    }
}

/// A member unique per request (two in the same microsecond must both count).
fn new_member() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn ceil_seconds(microseconds: i64) -> u64 {
    u64::try_from(microseconds.max(0))
        .unwrap_or(0)
        .div_ceil(1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_keyed_normalised() {
        let key = |text: &str| ClientKey::address(text.parse().expect("an address")).redis_key();
        assert_eq!(key("192.0.2.7"), "ratelimit:ip:192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "ratelimit:ip:192.0.2.7");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "ratelimit:ip:2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:ffff:1:2:3"), key("2001:db8:1:2::9"));
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        assert_eq!(ClientKey::User(42).redis_key(), "ratelimit:user:42");
    }
}
