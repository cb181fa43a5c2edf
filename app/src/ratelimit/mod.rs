//! Per-client sliding-window rate limiting, decided atomically in Redis.
//!
//! One Lua script trims the window, counts, and adds the request only if it is allowed, using
//! Redis's own clock (`TIME`) so pods with skewed clocks agree, and a member unique per request so
//! two requests in the same microsecond are both counted. Rejected requests are not recorded, so a
//! client hammering the limit does not extend its own lockout. Across any number of pods exactly
//! `limit` requests pass per window.

use std::time::Duration;

use redis::Script;
use scaled_contract::{FailureMode, RateLimitSettings};

use crate::{metrics::Metrics, redis_client::RedisClient};

const SLIDING_WINDOW: &str = r"
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local limit = tonumber(ARGV[1])
local window_us = tonumber(ARGV[2]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_us - window_us)
local count = redis.call('ZCARD', KEYS[1])
if count < limit then
  redis.call('ZADD', KEYS[1], now_us, now_us .. ':' .. ARGV[3])
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

/// The limiter.
#[derive(Clone)]
pub struct RateLimiter {
    redis: RedisClient,
    settings: RateLimitSettings,
    budget: Duration,
    metrics: Metrics,
    script: Script,
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
            redis,
            settings,
            budget,
            metrics,
            script: Script::new(SLIDING_WINDOW),
        }
    }

    /// Counts one request of `client` if the window has room.
    pub async fn check(&self, client: &str) -> Decision {
        let limit = self.settings.limit;
        let mut connection = self.redis.connection();
        let mut invocation = self.script.key(format!("ratelimit:{client}"));
        invocation
            .arg(limit)
            .arg(u64::from(self.settings.window_seconds) * 1000)
            .arg(hex::encode(rand::random::<[u8; 8]>()));
        let answer: Result<(i64, i64, i64), _> = self
            .redis
            .timed(
                "rate_limit",
                self.budget,
                invocation.invoke_async(&mut connection),
            )
            .await;
        match answer {
            Ok((1, remaining, reset_us)) => Decision::Allowed {
                limit,
                remaining: u32::try_from(remaining).unwrap_or(0),
                reset_seconds: ceil_seconds(reset_us),
            },
            Ok((_, _, retry_us)) => {
                self.metrics.rate_limit_rejections.inc();
                Decision::Rejected {
                    limit,
                    retry_after_seconds: ceil_seconds(retry_us).max(1),
                }
            }
            Err(error) => {
                let allowed = self.settings.failure_mode == FailureMode::FailOpen;
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

fn ceil_seconds(microseconds: i64) -> u64 {
    u64::try_from(microseconds.max(0))
        .unwrap_or(0)
        .div_ceil(1_000_000)
}
