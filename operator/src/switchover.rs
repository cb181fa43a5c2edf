//! `scaledapp-operator switchover`: asks the operator, through the API, to move a shard's primary
//! (like `kubectl cnpg promote`) or the Redis primary (`--redis`), then follows the ScaledApp's
//! status until the new primary accepts writes.
//!
//! The request is the annotation [`SWITCHOVER_ANNOTATION`] (or [`REDIS_SWITCHOVER_ANNOTATION`])
//! with a fresh id; the operator acts on each id once and records it in
//! `status.lastSwitchoverRequest` (`status.redisReplication.lastSwitchoverRequest`). Nothing here
//! writes status: the operator stays the only writer of the primary record.

use std::time::{Duration, Instant};

use kube::{Api, Client};

use crate::annotation_request::{RequestError, annotate, fresh_id, read};
use crate::crd::SWITCHOVER;
use crate::crd::ScaledApp;
use crate::postgres::{SWITCHOVER_ANNOTATION, SwitchoverRequest};
use crate::redis::{REDIS_SWITCHOVER_ANNOTATION, RedisSwitchoverRequest};

/// Why a switchover request failed or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    /// Writing the request or reading the ScaledApp failed.
    #[error(transparent)]
    Api(#[from] RequestError),
    /// The operator refused the request.
    #[error(
        "the operator refused the switchover (see `kubectl describe scaledapp {name}` for why)"
    )]
    Refused {
        /// ScaledApp.
        name: String,
    },
    /// The operator did not finish in time.
    #[error(
        "the switchover did not finish within {0:?}; it may still complete: watch `kubectl get sapp -o wide`"
    )]
    Timeout(Duration),
}

/// Asks for a switchover of `shard` (to `to`, or the most caught-up replica) and waits up to
/// `wait` for it to complete; prints progress lines to `out`.
pub async fn request(
    client: Client,
    namespace: &str,
    name: &str,
    shard: u32,
    to: Option<String>,
    wait: Duration,
    out: &mut impl std::io::Write,
) -> Result<(), SwitchoverError> {
    let apps: Api<ScaledApp> = Api::namespaced(client, namespace);
    let request = SwitchoverRequest {
        shard,
        to,
        id: fresh_id("switchover"),
    };
    annotate(&apps, namespace, name, SWITCHOVER_ANNOTATION, &request).await?;
    let _ = writeln!(out, "requested {} (shard {shard})", request.id);
    let started = Instant::now();
    let mut last_line = String::new();
    while started.elapsed() < wait {
        let status = read(&apps, namespace, name)
            .await?
            .status
            .unwrap_or_default();
        let shard_status = status.shards.iter().find(|s| s.index == shard as i32);
        let acted_on = status.last_switchover_request.as_deref() == Some(request.id.as_str());
        let ours = |reason: &str| reason.contains(&request.id);
        if let Some(done) = shard_status
            .and_then(|s| s.last_failover.as_ref())
            .filter(|done| done.kind == SWITCHOVER && ours(&done.reason))
        {
            let seconds = done
                .completed_at
                .as_ref()
                .map(|completed| completed.0.duration_since(done.started_at.0).as_secs_f64())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "done: {} is the primary of shard {shard} (was {}), timeline {}, {seconds:.1}s",
                done.to,
                done.from,
                done.timeline.map_or("?".into(), |t| t.to_string())
            );
            return Ok(());
        }
        let in_progress = shard_status
            .and_then(|s| s.failover.as_ref())
            .filter(|progress| ours(&progress.reason));
        if acted_on && in_progress.is_none() {
            return Err(SwitchoverError::Refused {
                name: name.to_string(),
            });
        }
        let line = match in_progress {
            Some(progress) => format!("promoting {} (was {})", progress.to, progress.from),
            None => "waiting for the operator".to_string(),
        };
        if line != last_line {
            let _ = writeln!(out, "{line}");
            last_line = line;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(SwitchoverError::Timeout(wait))
}

/// Asks for a switchover of the Redis primary (to `to`, or the most caught-up replica in sync)
/// and waits up to `wait` for it to complete; prints progress lines to `out`.
pub async fn request_redis(
    client: Client,
    namespace: &str,
    name: &str,
    to: Option<String>,
    wait: Duration,
    out: &mut impl std::io::Write,
) -> Result<(), SwitchoverError> {
    let apps: Api<ScaledApp> = Api::namespaced(client, namespace);
    let request = RedisSwitchoverRequest {
        to,
        id: fresh_id("switchover"),
    };
    annotate(
        &apps,
        namespace,
        name,
        REDIS_SWITCHOVER_ANNOTATION,
        &request,
    )
    .await?;
    let _ = writeln!(out, "requested {} (Redis)", request.id);
    let started = Instant::now();
    let mut last_line = String::new();
    while started.elapsed() < wait {
        let status = read(&apps, namespace, name)
            .await?
            .status
            .unwrap_or_default();
        let redis = status.redis_replication.unwrap_or_default();
        let ours = |reason: &str| reason.contains(&request.id);
        if let Some(done) = redis
            .last_failover
            .as_ref()
            .filter(|done| done.kind == SWITCHOVER && ours(&done.reason))
        {
            let seconds = done
                .completed_at
                .as_ref()
                .map(|completed| completed.0.duration_since(done.started_at.0).as_secs_f64())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "done: {} is the Redis primary (was {}), {seconds:.1}s",
                done.to, done.from
            );
            return Ok(());
        }
        let in_progress = redis
            .switchover
            .as_ref()
            .filter(|progress| ours(&progress.reason));
        let acted_on = redis.last_switchover_request.as_deref() == Some(request.id.as_str());
        if acted_on && in_progress.is_none() {
            // Refused, or handed over too slowly and given up (the Events say which).
            return Err(SwitchoverError::Refused {
                name: name.to_string(),
            });
        }
        let line = match in_progress {
            Some(progress) => format!("handing over to {} (was {})", progress.to, progress.from),
            None => "waiting for the operator".to_string(),
        };
        if line != last_line {
            let _ = writeln!(out, "{line}");
            last_line = line;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(SwitchoverError::Timeout(wait))
}
