//! Probes: `/health` (liveness, touches nothing) and `/ready` (readiness).
//!
//! Readiness has two halves. A pod that has never reached Redis and every shard primary is not
//! ready: a signed-in write needs both, and a pod that joins the Service before its first
//! connection works turns a Ready ScaledApp into 503s (its first sign-ins fail while, for
//! example, the Redis name is still in a resolver's negative cache). Once it has reached them
//! all, one probe at a time, it stays ready while at least one shard primary answers: losing
//! Redis or a shard later degrades the routes that need them (503 with Retry-After) while the
//! rest keep serving, and pulling every pod out of the Service at once would turn a partial
//! outage into a total one.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde_json::{Value, json};

use super::AppState;

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether this process has once reached everything a signed-in write needs.
#[derive(Debug, Default)]
pub struct Readiness {
    reached: AtomicBool,
}

impl Readiness {
    /// True once one probe found Redis and every shard primary answering.
    pub fn has_reached_dependencies(&self) -> bool {
        self.reached.load(Ordering::Acquire)
    }

    fn mark_reached(&self) {
        self.reached.store(true, Ordering::Release);
    }
}

/// Probe routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/ready", get(ready))
}

async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let topology = state.cluster.topology();
    let probes = topology.shards.iter().map(|shard| async move {
        let query = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&shard.primary);
        let up = matches!(tokio::time::timeout(PROBE_TIMEOUT, query).await, Ok(Ok(_)));
        (shard.index, up)
    });
    // The same shared connection the session store, limiter and cache use: a PONG on it is
    // what a sign-in needs, not merely a name that resolves.
    let redis = async {
        let mut connection = state.redis.connection();
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut connection);
        state
            .redis
            .timed("ready_probe", PROBE_TIMEOUT, ping)
            .await
            .is_ok()
    };
    let (shards, redis_up) = futures::future::join(futures::future::join_all(probes), redis).await;
    let every_primary_up = shards.iter().all(|(_, up)| *up);
    let any_primary_up = shards.iter().any(|(_, up)| *up);
    if redis_up && every_primary_up {
        state.readiness.mark_reached();
    }
    let reached = state.readiness.has_reached_dependencies();
    let ready = reached && any_primary_up;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let up_or_down = |up: bool| if up { "up" } else { "down" };
    let body = json!({
        "status": if ready { "ready" } else if reached { "unavailable" } else { "starting" },
        "reachedDependencies": reached,
        "redis": up_or_down(redis_up),
        "shards": shards
            .iter()
            .map(|(index, up)| json!({ "index": index, "primary": up_or_down(*up) }))
            .collect::<Vec<_>>(),
    });
    (status, Json(body))
}
