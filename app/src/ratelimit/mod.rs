//! Sliding-window rate limiting, decided atomically in Redis.
//!
//! One Lua script trims the window, counts, and adds the request only if it is allowed, using
//! Redis's own clock (`TIME`) so pods with skewed clocks agree, and a member unique per request so
//! two requests in the same microsecond are both counted. Rejected requests are not recorded, so a
//! client hammering the limit does not extend its own lockout. Across any number of pods exactly
//! `limit` requests pass per window.
//!
//! Two limiters use it: [`RateLimiter`] counts requests per client ([`ClientKey`]: the signed-in
//! user, else the client's address), on `/api/data` with the configured limit and on the routes of
//! [`LimitedRoute`] with limits of their own, and [`AttemptLimiter`] counts failed sign-ins per
//! account and client, and per account. Keys are built only from a user id, a parsed and
//! normalised IP address, or a hash, so nothing a client sends becomes a Redis key as it is.
//!
//! Without Redis, request limits follow the configured `rateLimit.failureMode`, on every route
//! alike: `FailOpen` lets the request through, `FailClosed` answers 503, and `Local` has each
//! pod count each client itself (`local.rs`, in bounded memory) with the same keys, limits and
//! windows, recording only the requests it allows.
//!
//! The policy of `Local`, plainly: with N serving pods, a client can get up to N times the limit
//! per window while Redis is away, since each pod counts alone. That is the defensible trade:
//! one shared count needs a store every pod reaches, which is exactly what is missing, and
//! coordinating pods some other way would be a second Redis; N times the limit (N at most
//! `app.replicas.max`) is still a limit, where failing open is none and failing closed makes a
//! Redis outage an outage of every limited route. Every request asks Redis first, so as soon as
//! Redis answers again, counting returns to Redis. What the pods counted alone is not carried
//! over: a window spanning the outage's end may give a client the pods' share on top of
//! Redis's. Answers decided locally carry the same headers as Redis's (`X-RateLimit-*` when
//! allowed; 429 with `Retry-After` when not), describing the answering pod's count; fail open
//! sends none, as nothing was counted.
//!
//! Failed sign-ins are never counted without Redis, whatever the mode: an attempt is refused
//! with 503 (fail closed), which costs nothing, since a sign-in cannot open its session without
//! Redis either.

mod local;

use std::{
    net::IpAddr,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use redis::Script;
use scaled_contract::{FailureMode, RateLimitSettings};
use sha2::{Digest, Sha256};

use self::local::LocalWindows;
use crate::log_throttle::Throttle;
use crate::{
    config::{AttemptPolicy, RequestLimits, RoutePolicy},
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

/// The limiter's answer for one request. Under `FailureMode::Local` without Redis, the pod's
/// own count answers [`Decision::Allowed`] or [`Decision::Rejected`] as Redis would.
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
    /// Redis could not decide; the configured failure mode (open or closed) did.
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

    /// `user:<id>` or `ip:<address>`: the client's part of every key counting it.
    fn part(&self) -> String {
        match self {
            ClientKey::User(id) => format!("user:{id}"),
            ClientKey::Address(address) => format!("ip:{address}"),
        }
    }

    fn redis_key(&self) -> String {
        format!("ratelimit:{}", self.part())
    }
}

/// A route with a per-client limit of its own ([`RequestLimits`]), apart from `/api/data`'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitedRoute {
    /// `POST /api/sessions`.
    SignIn,
    /// `POST /api/users`.
    SignUp,
    /// `POST /api/orders`.
    Orders,
}

impl LimitedRoute {
    fn policy(self, limits: &RequestLimits) -> RoutePolicy {
        match self {
            LimitedRoute::SignIn => limits.sign_in,
            LimitedRoute::SignUp => limits.sign_up,
            LimitedRoute::Orders => limits.orders,
        }
    }

    fn redis_key(self, client: &ClientKey) -> String {
        let route = match self {
            LimitedRoute::SignIn => "signin",
            LimitedRoute::SignUp => "signup",
            LimitedRoute::Orders => "orders",
        };
        format!("ratelimit:{route}:{}", client.part())
    }
}

/// At most one notice per account and this interval about sign-ups with its address, so that
/// nobody can fill an inbox by signing up with someone else's address over and over.
pub const NOTICE_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// The per-client request limiter. Its settings (the limit of `/api/data` and the failure mode
/// of every route) can be replaced while it runs (config reload); the limits of the
/// [`LimitedRoute`]s are fixed at start-up.
#[derive(Clone)]
pub struct RateLimiter {
    window: SlidingWindow,
    /// This pod's own count, used only under `FailureMode::Local` while Redis is away.
    local: Arc<LocalWindows>,
    settings: Arc<RwLock<RateLimitSettings>>,
    routes: RequestLimits,
    metrics: Metrics,
}

impl RateLimiter {
    /// A limiter with `settings` and the route limits `routes`, giving Redis `budget` per
    /// decision.
    pub fn new(
        redis: RedisClient,
        settings: RateLimitSettings,
        routes: RequestLimits,
        budget: Duration,
        metrics: Metrics,
    ) -> Self {
        RateLimiter {
            window: SlidingWindow::new(redis, budget),
            local: Arc::new(LocalWindows::new()),
            settings: Arc::new(RwLock::new(settings)),
            routes,
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

    /// Counts one request of `client` to `/api/data` if the window has room.
    pub async fn check(&self, client: &ClientKey) -> Decision {
        let settings = self.settings();
        let policy = RoutePolicy {
            requests: settings.limit,
            window: Duration::from_secs(u64::from(settings.window_seconds)),
        };
        self.decide(&client.redis_key(), policy, settings.failure_mode)
            .await
    }

    /// Counts one request of `client` to `route` if that route's window has room. Without Redis
    /// the configured failure mode decides, as on `/api/data`.
    pub async fn check_route(&self, route: LimitedRoute, client: &ClientKey) -> Decision {
        let failure_mode = self.settings().failure_mode;
        self.decide(
            &route.redis_key(client),
            route.policy(&self.routes),
            failure_mode,
        )
        .await
    }

    /// Whether a notice about a sign-up with `user_id`'s address may go out now: true at most
    /// once per [`NOTICE_INTERVAL`]. Without Redis it says yes: the owner hearing twice is better
    /// than not hearing at all.
    pub async fn notice_due(&self, user_id: i64) -> bool {
        let key = format!("notice:signup:user:{user_id}");
        match self
            .window
            .take(&key, 1, NOTICE_INTERVAL, &new_member())
            .await
        {
            Ok(Taken::Yes { .. }) => true,
            Ok(Taken::No { .. }) => false,
            Err(error) => {
                tracing::warn!(%error, "sign-up notice sent without checking its interval");
                true
            }
        }
    }

    async fn decide(&self, key: &str, policy: RoutePolicy, failure_mode: FailureMode) -> Decision {
        let limit = policy.requests;
        let error = match self
            .window
            .take(key, limit, policy.window, &new_member())
            .await
        {
            Ok(taken) => return self.decision(limit, taken),
            Err(error) => error,
        };
        let (mode, decision) = match failure_mode {
            FailureMode::FailOpen => ("fail_open", Decision::Degraded { allowed: true }),
            FailureMode::FailClosed => ("fail_closed", Decision::Degraded { allowed: false }),
            FailureMode::Local => {
                let taken = self.local.take(key, limit, policy.window, Instant::now());
                ("local", self.decision(limit, taken))
            }
        };
        static WITHOUT_REDIS: Throttle = Throttle::new(Duration::from_secs(5));
        if let Some(left_out) = WITHOUT_REDIS.admit() {
            tracing::warn!(%error, mode, left_out, "rate limiter without Redis; applying the failure mode");
        }
        self.metrics
            .rate_limit_degraded
            .with_label_values(&[mode])
            .inc();
        decision
    }

    /// What a counted window (Redis's, or this pod's own) says, with refusals counted.
    fn decision(&self, limit: u32, taken: Taken) -> Decision {
        match taken {
            Taken::Yes {
                remaining,
                reset_seconds,
            } => Decision::Allowed {
                limit,
                remaining,
                reset_seconds,
            },
            Taken::No {
                retry_after_seconds,
            } => {
                self.metrics.rate_limit_rejections.inc();
                Decision::Rejected {
                    limit,
                    retry_after_seconds,
                }
            }
        }
    }
}

/// One sign-in attempt holding a place in its account's windows until it is known to succeed.
#[derive(Debug)]
pub struct Attempt {
    keys: [String; 2],
    member: String,
}

/// Counts failed sign-ins per account and client, and per account from all clients (see
/// [`AttemptPolicy`]). An attempt takes a place in both windows before the password is checked
/// (so concurrent guesses cannot all slip in before any failure is counted) and gives them back
/// on success, so only failures (and attempts in flight) count. A client refused by its own
/// window takes no place in the account's, so a guesser hammering one account does not use up
/// the backstop that the owner's clients share. The windows slide: nobody is locked out for
/// longer than the window after the last failure that filled it. Accounts are keyed by a hash of
/// the normalised email, known or not, so the limiter answers alike for accounts that do not
/// exist.
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

    /// Takes a place for an attempt by `client` on `email`'s account, or says how long until one
    /// is free.
    pub async fn begin(
        &self,
        email: &str,
        client: &ClientKey,
    ) -> Result<Result<Attempt, u64>, RedisCallError> {
        let account = format!(
            "signin:{}",
            hex::encode(Sha256::digest(
                crate::db::users::normalize_email(email).as_bytes()
            ))
        );
        let per_client = format!("{account}:{}", client.part());
        let member = new_member();
        let window = self.policy.window;
        if let Taken::No {
            retry_after_seconds,
        } = self
            .window
            .take(&per_client, self.policy.failures, window, &member)
            .await?
        {
            return Ok(Err(retry_after_seconds));
        }
        let keys = [per_client, account];
        match self
            .window
            .take(&keys[1], self.policy.account_failures, window, &member)
            .await
        {
            Ok(Taken::Yes { .. }) => Ok(Ok(Attempt { keys, member })),
            Ok(Taken::No {
                retry_after_seconds,
            }) => {
                // Refused by the backstop: the client's own window does not count this one.
                self.release(&keys[..1], &member).await;
                Ok(Err(retry_after_seconds))
            }
            Err(error) => Err(error),
        }
    }

    /// The attempt succeeded: it no longer counts. (A failed attempt is simply dropped.) If Redis
    /// cannot be reached the places stay taken until they leave the window.
    pub async fn succeeded(&self, attempt: Attempt) {
        self.release(&attempt.keys, &attempt.member).await;
    }

    async fn release(&self, keys: &[String], member: &str) {
        if let Err(error) = self.window.remove(keys, member).await {
            tracing::warn!(%error, "a sign-in attempt still counts");
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

    /// Removes `member` from every window of `keys`, in one round trip.
    async fn remove(&self, keys: &[String], member: &str) -> Result<(), RedisCallError> {
        let mut pipeline = redis::pipe();
        for key in keys {
            pipeline.zrem(key, member).ignore();
        }
        let mut connection = self.redis.connection();
        self.redis
            .timed(
                "rate_limit_release",
                self.budget,
                pipeline.query_async::<()>(&mut connection),
            )
            .await
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

    #[test]
    fn each_limited_route_counts_a_client_apart_from_the_others_and_from_api_data() {
        let client = ClientKey::address("192.0.2.7".parse().expect("an address"));
        let keys: std::collections::HashSet<String> = [
            LimitedRoute::SignIn,
            LimitedRoute::SignUp,
            LimitedRoute::Orders,
        ]
        .into_iter()
        .map(|route| route.redis_key(&client))
        .chain([client.redis_key()])
        .collect();
        assert_eq!(keys.len(), 4);
        assert_eq!(
            LimitedRoute::SignUp.redis_key(&ClientKey::User(42)),
            "ratelimit:signup:user:42"
        );
    }
}
