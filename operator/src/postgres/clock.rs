//! The failover clock: since when a shard's recorded primary has looked unhealthy, and whether
//! it went down meanwhile. A failover is due once the clock passes the ScaledApp's delay.
//!
//! The clock is part of the status ([`PrimaryUnhealthy`] in `status.shards[].primaryUnhealthy`),
//! so an operator that restarts, or a new leader, goes on counting where the last one stopped
//! instead of granting a lost primary another full delay. [`Clocks`] keeps the clocks this
//! process computed last, for the one case status cannot cover: a watch cache that has not yet
//! seen our own latest status write must not restart a clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

use crate::crd::{PrimaryUnhealthy, ScaledAppStatus};

/// The next state of a shard's clock, given the previous one (`None`: the primary was healthy)
/// and how the recorded primary `pod` looks now. Pure.
///
/// - Healthy: no clock.
/// - Unhealthy, and the clock was for another pod (a new primary was recorded): it starts now.
/// - Seen down (not running), or a new incarnation of the process (pod uid / restart count):
///   `wentDown` is set and stays set while the primary stays unhealthy. Whatever runs there
///   now started after the failure, so a manager that does not answer is restarting, not
///   behind a partition and still taking writes.
pub fn advance(
    previous: Option<&PrimaryUnhealthy>,
    pod: &str,
    healthy: bool,
    down: bool,
    incarnation: Option<&str>,
    now: &MicroTime,
) -> Option<PrimaryUnhealthy> {
    if healthy {
        return None;
    }
    let mut clock = match previous {
        Some(previous) if previous.pod == pod => previous.clone(),
        _ => PrimaryUnhealthy {
            pod: pod.to_string(),
            since: now.clone(),
            incarnation: incarnation.map(str::to_string),
            went_down: false,
        },
    };
    let reincarnated = incarnation.is_some() && incarnation != clock.incarnation.as_deref();
    if down || reincarnated {
        clock.went_down = true;
    }
    Some(clock)
}

/// How long a clock has run at `now` (zero when `now` is before its start: clocks of two
/// operator replicas may differ a little).
pub fn elapsed(clock: &PrimaryUnhealthy, now: &MicroTime) -> Duration {
    let signed = now.0.duration_since(clock.since.0);
    Duration::try_from(signed).unwrap_or(Duration::ZERO)
}

/// The clocks this process computed last, per ScaledApp and shard.
#[derive(Debug, Default)]
pub struct Clocks {
    last: Mutex<HashMap<String, BTreeMap<u32, PrimaryUnhealthy>>>,
}

impl Clocks {
    /// The clock each shard of ScaledApp `key` runs on: the one this process computed last, or
    /// else the one in `status` (after a restart, or when another replica led before).
    pub fn previous(
        &self,
        key: &str,
        status: Option<&ScaledAppStatus>,
    ) -> BTreeMap<u32, PrimaryUnhealthy> {
        let mut clocks: BTreeMap<u32, PrimaryUnhealthy> = status
            .into_iter()
            .flat_map(|status| status.shards.iter())
            .filter_map(|shard| {
                let clock = shard.primary_unhealthy.clone()?;
                Some((u32::try_from(shard.index).ok()?, clock))
            })
            .collect();
        let last = self.last.lock().expect("clock lock is never poisoned");
        if let Some(mine) = last.get(key) {
            // Ours are at least as new as any status the cache holds; a shard we know to be
            // healthy has no clock, whatever an older status says.
            clocks = mine.clone();
        }
        clocks
    }

    /// Remembers the clocks a pass computed for ScaledApp `key`.
    pub fn remember(&self, key: &str, clocks: BTreeMap<u32, PrimaryUnhealthy>) {
        self.last
            .lock()
            .expect("clock lock is never poisoned")
            .insert(key.to_string(), clocks);
    }

    /// Forgets ScaledApp `key` (it was deleted).
    pub fn forget(&self, key: &str) {
        self.last
            .lock()
            .expect("clock lock is never poisoned")
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ShardStatus;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> MicroTime {
        MicroTime(Timestamp::from_second(seconds).expect("valid"))
    }

    fn step(
        previous: Option<&PrimaryUnhealthy>,
        pod: &str,
        healthy: bool,
        down: bool,
        incarnation: &str,
        now: i64,
    ) -> Option<PrimaryUnhealthy> {
        advance(previous, pod, healthy, down, Some(incarnation), &at(now))
    }

    #[test]
    fn a_primary_seen_down_or_reincarnated_while_unhealthy_counts_as_went_down_until_healthy() {
        // Unanswering but the same process: maybe a partition.
        let clock = step(None, "p-0", false, false, "u1/0", 100).expect("unhealthy");
        assert!(!clock.went_down);
        assert_eq!(elapsed(&clock, &at(103)), Duration::from_secs(3));
        // Its container restarted: the process that might take writes is gone, and that is
        // remembered while it stays unhealthy; the clock keeps its start.
        let clock = step(Some(&clock), "p-0", false, false, "u1/1", 104).expect("unhealthy");
        assert!(clock.went_down);
        let clock = step(Some(&clock), "p-0", false, false, "u1/1", 105).expect("unhealthy");
        assert!(clock.went_down);
        assert_eq!(clock.since, at(100));
        // Healthy again: no clock.
        assert_eq!(step(Some(&clock), "p-0", true, false, "u1/1", 106), None);
        let clock = step(None, "p-0", false, false, "u1/1", 107).expect("unhealthy");
        assert!(!clock.went_down);
        // Seen not running (deleted, being recreated).
        let clock = step(Some(&clock), "p-0", false, true, "u2/0", 108).expect("unhealthy");
        assert!(clock.went_down);
        // Another recorded primary starts afresh.
        let clock = step(Some(&clock), "p-1", false, false, "u3/0", 109).expect("unhealthy");
        assert!(!clock.went_down);
        assert_eq!(clock.since, at(109));
        assert_eq!(elapsed(&clock, &at(100)), Duration::ZERO, "never negative");
    }

    #[test]
    fn a_restarted_operator_goes_on_with_the_clock_in_status_and_its_own_memory_wins_after() {
        let clock = step(None, "shop-shard-0-0", false, false, "u/0", 100).expect("unhealthy");
        let status = ScaledAppStatus {
            shards: vec![ShardStatus {
                index: 0,
                primary_unhealthy: Some(clock.clone()),
                ..ShardStatus::default()
            }],
            ..ScaledAppStatus::default()
        };
        let fresh = Clocks::default();
        assert_eq!(
            fresh.previous("ns/shop", Some(&status)).get(&0),
            Some(&clock)
        );
        // This process found it healthy since; a cached status that still shows the old clock
        // must not bring it back.
        fresh.remember("ns/shop", BTreeMap::new());
        assert!(fresh.previous("ns/shop", Some(&status)).is_empty());
        fresh.forget("ns/shop");
        assert_eq!(fresh.previous("ns/shop", Some(&status)).len(), 1);
    }
}
