//! The Redis stage of a reconcile: which Redis pod is the primary, and what the operator does
//! about it, in the pipeline's three parts like the Postgres stage:
//!
//! - [`read`] (I/O, reads only): every Redis pod and what its server says of its replication.
//! - [`decide`] (pure): the primary, the role labels to move, the `REPLICAOF` commands to send,
//!   a failover to the most up-to-date server when the primary is lost, and a switchover
//!   (`FAILOVER TO`, no write lost) when a user asks for one.
//! - [`enact`] sends the commands, in the apply step beside the applier's writes (which move the
//!   labels); status records the primary; Events tell the failovers.
//!
//! The decision is recorded in one place, `status.redisReplication.primaryPod`.

mod decide;
mod enact;
mod observation;
mod observe;
mod switchover_request;

#[cfg(test)]
mod tests;

pub use decide::{
    Action, Command, Inputs, RedisDecision, SWITCHOVER_GIVE_UP, UNANSWERED_DELAY, decide,
};
pub use enact::{CommandError, HAND_OVER_TIMEOUT, enact};
pub use observation::{FENCE_HOST, FENCE_PORT, RedisPod, Replication, Report};
pub use observe::{RedisObserveError, RedisReads, read};
pub use switchover_request::{
    REDIS_SWITCHOVER_ANNOTATION, RedisSwitchoverRequest, pending_redis_switchover,
};
