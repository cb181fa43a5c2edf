//! What every reconcile shares: the clients, the event recorder, metrics, the operator's
//! defaults, the memory of last applies, and per-object retry backoff.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::apply::AppliedCache;
use crate::metrics::Metrics;
use crate::names::MANAGER;
use crate::validate::Defaults;

/// Shared reconcile state.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Publishes Events on ScaledApps.
    pub recorder: Recorder,
    /// Operator metrics.
    pub metrics: Metrics,
    /// What was last applied to each child.
    pub applied: AppliedCache,
    /// Retry delays of failing ScaledApps.
    pub backoff: Backoff,
    /// What the operator fills in that a ScaledApp does not say (images).
    pub defaults: Defaults,
    /// Reads the Postgres instance managers' `/status`.
    pub http: reqwest::Client,
    /// Since when each shard's recorded primary has looked unhealthy.
    pub primaries: PrimaryWatch,
}

/// Since when each shard's recorded primary has looked unhealthy, per ScaledApp. Kept in memory:
/// a restarted operator starts counting again, which delays a failover by at most the delay.
#[derive(Debug, Default)]
pub struct PrimaryWatch {
    since: Mutex<HashMap<(String, u32), Unhealthy>>,
}

/// A shard's recorded primary since it was first seen unhealthy.
#[derive(Debug)]
struct Unhealthy {
    pod: String,
    first: Instant,
    incarnation: Option<String>,
    went_down: bool,
}

/// How a shard's recorded primary looked this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimarySeen {
    /// Shard number.
    pub shard: u32,
    /// The recorded primary.
    pub pod: String,
    /// A ready primary.
    pub healthy: bool,
    /// Missing or not running.
    pub down: bool,
    /// [`crate::instances::PodObservation::incarnation`].
    pub incarnation: Option<String>,
}

impl PrimaryWatch {
    /// Records this pass's health of each shard's recorded primary; returns how long each has
    /// been unhealthy, and which were down or restarted meanwhile (see
    /// [`crate::instances::Inputs::restarted`]).
    pub fn observe(
        &self,
        key: &str,
        primaries: impl IntoIterator<Item = PrimarySeen>,
    ) -> (BTreeMap<u32, Duration>, BTreeSet<u32>) {
        let now = Instant::now();
        let mut since = self.since.lock().expect("watch lock is never poisoned");
        let mut unhealthy_for = BTreeMap::new();
        let mut restarted = BTreeSet::new();
        for seen in primaries {
            let entry = (key.to_string(), seen.shard);
            if seen.healthy {
                since.remove(&entry);
                continue;
            }
            let watch = since.entry(entry).or_insert_with(|| Unhealthy {
                pod: seen.pod.clone(),
                first: now,
                incarnation: seen.incarnation.clone(),
                went_down: false,
            });
            if watch.pod != seen.pod {
                // Another pod is primary now: its own clock starts.
                *watch = Unhealthy {
                    pod: seen.pod.clone(),
                    first: now,
                    incarnation: seen.incarnation.clone(),
                    went_down: false,
                };
            }
            if seen.down || (seen.incarnation.is_some() && seen.incarnation != watch.incarnation) {
                watch.went_down = true;
            }
            if watch.went_down {
                restarted.insert(seen.shard);
            }
            unhealthy_for.insert(seen.shard, now.duration_since(watch.first));
        }
        (unhealthy_for, restarted)
    }
}

impl Context {
    /// A context for `client`, reporting Events as `instance`.
    pub fn new(
        client: Client,
        metrics: Metrics,
        instance: Option<String>,
        defaults: Defaults,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            applied: AppliedCache::default(),
            backoff: Backoff::default(),
            primaries: PrimaryWatch::default(),
            defaults,
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(1))
                // Pod IPs only: a proxy from the environment must never see them.
                .no_proxy()
                .build()
                .expect("a plain HTTP client always builds"),
        }
    }
}

/// Exponential backoff per object: 1 s, 2 s, 4 s ... capped at 5 minutes; reset on success.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    const CAP: Duration = Duration::from_secs(300);

    /// Delay before the next attempt for `key`, counting this failure.
    pub fn next(&self, key: &str) -> Duration {
        let mut failures = self
            .failures
            .lock()
            .expect("backoff lock is never poisoned");
        let count = failures.entry(key.to_string()).or_insert(0);
        let delay = Duration::from_secs(1u64 << (*count).min(9));
        *count = count.saturating_add(1);
        delay.min(Self::CAP)
    }

    /// Forgets the failures of `key`.
    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .expect("backoff lock is never poisoned")
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(pod: &str, healthy: bool, down: bool, incarnation: &str) -> PrimarySeen {
        PrimarySeen {
            shard: 0,
            pod: pod.into(),
            healthy,
            down,
            incarnation: Some(incarnation.into()),
        }
    }

    #[test]
    fn a_primary_seen_down_or_reincarnated_while_unhealthy_counts_as_restarted_until_healthy() {
        let watch = PrimaryWatch::default();
        // Unanswering but the same process: maybe a partition.
        let (unhealthy, restarted) = watch.observe("ns/a", [seen("p-0", false, false, "u1/0")]);
        assert!(unhealthy.contains_key(&0));
        assert!(restarted.is_empty());
        // Its container restarted: the process that might take writes is gone, and that is
        // remembered while it stays unhealthy.
        let (_, restarted) = watch.observe("ns/a", [seen("p-0", false, false, "u1/1")]);
        assert!(restarted.contains(&0));
        let (_, restarted) = watch.observe("ns/a", [seen("p-0", false, false, "u1/1")]);
        assert!(restarted.contains(&0));
        // Healthy again: forgotten.
        watch.observe("ns/a", [seen("p-0", true, false, "u1/1")]);
        let (_, restarted) = watch.observe("ns/a", [seen("p-0", false, false, "u1/1")]);
        assert!(restarted.is_empty());
        // Seen not running (deleted, being recreated).
        let (_, restarted) = watch.observe("ns/a", [seen("p-0", false, true, "u2/0")]);
        assert!(restarted.contains(&0));
        // Another recorded primary starts afresh.
        let (_, restarted) = watch.observe("ns/a", [seen("p-1", false, false, "u3/0")]);
        assert!(restarted.is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes_and_resets_on_success() {
        let backoff = Backoff::default();
        let delays: Vec<u64> = (0..11).map(|_| backoff.next("ns/app").as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff.next("ns/other").as_secs(), 1, "per object");
        backoff.reset("ns/app");
        assert_eq!(backoff.next("ns/app").as_secs(), 1);
    }
}
