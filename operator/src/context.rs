//! What every reconcile shares: the clients, the event recorder, metrics, the operator's
//! defaults, the memory of last applies and failover clocks, and per-object retry backoff.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::apply::AppliedCache;
use crate::metrics::Metrics;
use crate::names::MANAGER;
use crate::postgres::Clocks;
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
    /// The failover clocks this process computed last (status holds them too).
    pub clocks: Clocks,
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
            clocks: Clocks::default(),
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
