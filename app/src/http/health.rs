//! Probes: `/health` (liveness, touches nothing) and `/ready` (at least one shard primary answers;
//! a pod that can reach no primary cannot serve anything useful and leaves the rotation).

use std::time::Duration;

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde_json::{Value, json};

use super::AppState;

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

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
        json!({ "index": shard.index, "primary": if up { "up" } else { "down" } })
    });
    let shards = futures::future::join_all(probes).await;
    let any_up = shards.iter().any(|shard| shard["primary"] == "up");
    let status = if any_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "status": if any_up { "ready" } else { "unavailable" }, "shards": shards });
    (status, Json(body))
}
