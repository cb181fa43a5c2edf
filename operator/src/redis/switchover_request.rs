//! A user's request to move the Redis primary to a replica: the [`REDIS_SWITCHOVER_ANNOTATION`]
//! on the ScaledApp (written by `scaledapp-operator switchover --redis`), acted on once per id.

use crate::annotation_request::{Request, pending};
use crate::crd::ScaledApp;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RedisSwitchoverRequest {
    /// Pod to promote; the most caught-up replica in sync when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Unique per request, so each one is acted on once.
    pub id: String,
}

impl Request for RedisSwitchoverRequest {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Annotation on a ScaledApp asking for a Redis switchover.
pub const REDIS_SWITCHOVER_ANNOTATION: &str = "scaled.dev/redis-switchover";

/// The Redis switchover asked for, unless it was acted on already
/// (`status.redisReplication.lastSwitchoverRequest`); one that cannot be read comes back as
/// `Err((id, why))`, refused once with the reason.
pub fn pending_redis_switchover(
    app: &ScaledApp,
) -> Option<Result<RedisSwitchoverRequest, (String, String)>> {
    let done = app
        .status
        .as_ref()
        .and_then(|status| status.redis_replication.as_ref())
        .and_then(|redis| redis.last_switchover_request.as_deref());
    pending(
        app,
        REDIS_SWITCHOVER_ANNOTATION,
        done,
        "scaledapp-operator switchover --redis",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{RedisReplicationStatus, ScaledAppStatus};
    use crate::test_support::example;

    #[test]
    fn a_request_is_pending_until_status_records_its_id_and_garbage_is_refused_by_its_text() {
        let mut app = example("shop");
        assert!(pending_redis_switchover(&app).is_none(), "no annotation");
        app.metadata.annotations = Some(
            [(
                REDIS_SWITCHOVER_ANNOTATION.to_string(),
                r#"{"to":"shop-redis-1","id":"sw-7"}"#.to_string(),
            )]
            .into(),
        );
        let request = pending_redis_switchover(&app)
            .expect("pending")
            .expect("valid");
        assert_eq!(
            (request.to.as_deref(), request.id.as_str()),
            (Some("shop-redis-1"), "sw-7")
        );
        app.status = Some(ScaledAppStatus {
            redis_replication: Some(RedisReplicationStatus {
                last_switchover_request: Some("sw-7".into()),
                ..RedisReplicationStatus::default()
            }),
            ..ScaledAppStatus::default()
        });
        assert!(pending_redis_switchover(&app).is_none(), "acted on once");
        app.metadata.annotations = Some(
            [(
                REDIS_SWITCHOVER_ANNOTATION.to_string(),
                "now please".to_string(),
            )]
            .into(),
        );
        let (id, why) = pending_redis_switchover(&app)
            .expect("pending")
            .expect_err("not a request");
        assert_eq!(id, "now please");
        assert!(
            why.contains("scaledapp-operator switchover --redis"),
            "{why}"
        );
    }
}
