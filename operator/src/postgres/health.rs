//! How a shard's recorded primary is doing, read off one pass's observation.

use scaled_contract::instance::InstanceRole;

use super::observation::ShardObservation;

/// How a shard's recorded primary is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Ready and primary.
    Healthy,
    /// The pod is missing, not running, or being deleted: it accepts no writes.
    Gone(String),
    /// The pod runs, but its instance manager does not answer: it may still accept writes (a
    /// partition), until it fences itself.
    Unresponsive(String),
    /// Its instance manager answers and says it is not a ready primary.
    Failing(String),
    /// The pod was recreated under the primary's name: the process that took writes is gone,
    /// and the new one waits for the operator to confirm it or to name another pod.
    Recreated(String),
}

impl Health {
    pub(super) fn describe(&self) -> Option<&str> {
        match self {
            Health::Healthy => None,
            Health::Gone(why)
            | Health::Unresponsive(why)
            | Health::Failing(why)
            | Health::Recreated(why) => Some(why),
        }
    }
}

/// How the recorded primary `primary` of `shard` is doing.
pub fn primary_health(shard: &ShardObservation, primary: &str, uid: Option<&str>) -> Health {
    let Some(pod) = shard.pods.iter().find(|pod| pod.name == primary) else {
        return Health::Gone(format!("pod {primary} does not exist"));
    };
    if !pod.running {
        return Health::Gone(format!("pod {primary} is not running"));
    }
    if let (Some(confirmed), Some(now)) = (uid, pod.uid.as_deref())
        && confirmed != now
    {
        return Health::Recreated(format!(
            "pod {primary} was recreated and waits to be confirmed as primary or to follow a \
             replica that takes over"
        ));
    }
    match &pod.instance {
        None => Health::Unresponsive(format!("the instance manager of {primary} does not answer")),
        Some(instance) if instance.role == InstanceRole::Primary && instance.ready => {
            Health::Healthy
        }
        Some(instance) => Health::Failing(format!(
            "{primary} reports {}{}",
            instance.role,
            if instance.ready { "" } else { ", not ready" }
        )),
    }
}
