//! The ScaledApp service. A request flows
//! `http` (router, errors, who is signed in) -> `cache` (L1 moka, L2 Redis) -> `db` (slot ->
//! shard, replica or primary); writes commit data and outbox rows together, `relay` moves the
//! outbox into Redis Streams, and `worker` applies each message once in effect. Sign-in checks
//! `passwords` (argon2id) and opens a session in `sessions`; `ratelimit` counts requests per
//! user or address and failed sign-ins per account. `startup` wires the three modes (`serve`,
//! `worker`, `migrate`) from `config`.

pub mod cache;
pub mod config;
pub mod db;
pub mod http;
pub mod log_throttle;
pub mod metrics;
pub mod password_tokens;
pub mod passwords;
pub mod queue;
pub mod ratelimit;
pub mod redis_client;
pub mod relay;
pub mod sessions;
pub mod startup;
pub mod telemetry;
pub mod worker;
