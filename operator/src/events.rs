//! The Event step, the last of a reconcile: what the pass did and found that users should hear
//! about, computed purely from the [`Outcome`] ([`notes`]), then published ([`publish`]).
//! Events are best effort: a failed publish is logged and the reconcile goes on.

use kube::Resource;
use kube::runtime::events::{Event, EventType};
use scaled_contract::instance::InstanceRole;
use tracing::{info, warn};

use crate::context::Context;
use crate::crd::{ScaledApp, ScaledAppStatus};
use crate::postgres::ShardDecision;
use crate::status::{INSTANCES_FAILED, Outcome, REDIS_FAILED};

/// One Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Warning or Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// The stage that acted (`Validate`, `Apply`, `Observe`, `Failover`, `Switchover`,
    /// `SessionSecretRotation`).
    pub action: &'static str,
    /// What happened, naming the objects.
    pub text: String,
}

fn note(warning: bool, reason: &'static str, action: &'static str, text: String) -> Note {
    Note {
        warning,
        reason,
        action,
        text,
    }
}

/// The Events of one pass. A failure is told once, when the status changed to say so
/// (`written`); changes, one Event per kind of change naming the objects; what the instance
/// managers report that is new since `previous`; and the Postgres stage's news.
pub fn notes(outcome: &Outcome, previous: Option<&ScaledAppStatus>, written: bool) -> Vec<Note> {
    match outcome {
        Outcome::Invalid(invalid) if written => vec![note(
            true,
            invalid.reason(),
            "Validate",
            invalid.to_string(),
        )],
        Outcome::InstancesFailed(error) if written => {
            vec![note(true, INSTANCES_FAILED, "Instances", error.to_string())]
        }
        Outcome::ApplyFailed(error) if written => {
            vec![note(true, error.reason(), "Apply", error.to_string())]
        }
        Outcome::RedisFailed(error) if written => {
            vec![note(true, REDIS_FAILED, "Redis", error.to_string())]
        }
        Outcome::Applied {
            changes,
            topology,
            redis,
            session_rotation,
            ..
        } => {
            let mut notes: Vec<Note> = [
                ("Created", &changes.created),
                ("Updated", &changes.updated),
                ("Pruned", &changes.pruned),
            ]
            .into_iter()
            .filter(|(_, objects)| !objects.is_empty())
            .map(|(reason, objects)| note(false, reason, "Apply", objects.join(", ")))
            .collect();
            notes.extend(instance_news(previous, &topology.shards));
            notes.extend(topology.news.iter().map(|news| {
                let action = if news.reason.starts_with("Switchover") {
                    "Switchover"
                } else {
                    "Failover"
                };
                note(news.warning, news.reason, action, news.note.clone())
            }));
            if let Some(redis) = redis {
                notes.extend(
                    redis
                        .decision
                        .news
                        .iter()
                        .map(|news| note(news.warning, news.reason, "Failover", news.note.clone())),
                );
                if !redis.done.is_empty() {
                    notes.push(note(false, "RedisRoles", "Apply", redis.done.join(", ")));
                }
                notes.extend(
                    redis.failed.iter().map(|failed| {
                        note(true, "RedisCommandFailed", "Apply", failed.to_string())
                    }),
                );
            }
            notes.extend(session_rotation.news.iter().map(|news| {
                note(
                    news.warning,
                    news.reason,
                    "SessionSecretRotation",
                    news.note.clone(),
                )
            }));
            notes
        }
        _ => Vec::new(),
    }
}

/// What the instance managers report that is new since the last status: an instance that
/// refuses its data directory (once, naming the pod) and a replica that re-cloned.
fn instance_news(previous: Option<&ScaledAppStatus>, shards: &[ShardDecision]) -> Vec<Note> {
    let before = |pod: &str| {
        previous
            .into_iter()
            .flat_map(|status| status.shards.iter())
            .flat_map(|shard| shard.instances.iter())
            .find(|instance| instance.pod == pod)
    };
    let mut news = Vec::new();
    for instance in shards.iter().flat_map(|shard| shard.instances.iter()) {
        let earlier = before(&instance.pod);
        let problem = instance.problem.as_deref().unwrap_or("no reason given");
        let refused = InstanceRole::Refused.as_str();
        if instance.role == refused
            && earlier.is_none_or(|e| e.role != refused || e.problem != instance.problem)
        {
            news.push(note(
                true,
                "InstanceRefused",
                "Observe",
                format!("pod {} does not start Postgres: {problem}", instance.pod),
            ));
        }
        if instance.reclones > earlier.map_or(0, |e| e.reclones) {
            news.push(note(
                true,
                "ReplicaRecloned",
                "Observe",
                format!(
                    "pod {} could not follow its primary and cloned it again: {problem}",
                    instance.pod
                ),
            ));
        }
    }
    news
}

/// Publishes `notes` on the ScaledApp.
pub async fn publish(context: &Context, app: &ScaledApp, notes: Vec<Note>) {
    for note in notes {
        if note.action == "Apply" && !note.warning {
            info!(reason = note.reason, objects = %note.text, "children changed");
        }
        // Event notes are capped at 1 KiB by the API server.
        let text: String = note.text.chars().take(1000).collect();
        let event = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.into(),
            note: Some(text),
            action: note.action.into(),
            secondary: None,
        };
        context.metrics.record_write("Event");
        if let Err(error) = context.recorder.publish(&event, &app.object_ref(&())).await {
            warn!(%error, "failed to publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{InstanceSummary, ShardStatus};

    #[test]
    fn a_refusing_instance_and_a_reclone_are_announced_once() {
        let refused = InstanceSummary {
            pod: "shop-shard-0-1".into(),
            role: "Refused".into(),
            problem: Some("MajorVersionMismatch: data is 15, server 17".into()),
            ..InstanceSummary::default()
        };
        let recloned = InstanceSummary {
            pod: "shop-shard-0-2".into(),
            role: "Replica".into(),
            reclones: 1,
            problem: Some("slot shop_shard_0_2 was invalidated".into()),
            ..InstanceSummary::default()
        };
        let shards = vec![ShardDecision {
            index: 0,
            instances: vec![refused.clone(), recloned.clone()],
            ..ShardDecision::default()
        }];
        let news = instance_news(None, &shards);
        let reasons: Vec<_> = news.iter().map(|note| note.reason).collect();
        assert_eq!(reasons, vec!["InstanceRefused", "ReplicaRecloned"]);
        assert!(news[0].text.contains("shop-shard-0-1"), "{}", news[0].text);
        let previous = ScaledAppStatus {
            shards: vec![ShardStatus {
                instances: vec![refused, recloned],
                ..ShardStatus::default()
            }],
            ..ScaledAppStatus::default()
        };
        assert!(instance_news(Some(&previous), &shards).is_empty());
    }
}
