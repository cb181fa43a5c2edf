//! The pod's own sliding-window limiter: what counts requests under `FailureMode::Local` while
//! Redis cannot be reached.
//!
//! It keeps the Redis script's rule in this process: a request is allowed if fewer than `limit`
//! requests of its key were allowed in the last `window`, and only then recorded, so rejected
//! requests never extend a lockout. Every allowed request is an entry of its own (a list, not a
//! set of timestamps), so two requests in the same instant both count. Keys are the Redis keys
//! (`ratelimit:...`), so a client is the same client here as in Redis.
//!
//! Memory is bounded, whatever clients send: at most [`MAX_CLIENTS`] keys and, across them, at
//! most [`MAX_REQUESTS`] recorded requests (8 bytes each, plus buffer slack), some tens of MiB
//! at worst. Past either bound the least recently seen key is forgotten first. A key whose
//! window has passed holds nothing worth keeping; one still inside its window starts afresh on
//! this pod if it comes back (so it may get up to `limit` more here): the price of the bound,
//! paid only when more clients than that reach one pod within one window. The key being decided
//! is never the one forgotten, so a single key always holds its whole window: its entries are
//! bounded by its limit, which is configuration, not client input.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use super::Taken;

/// Most keys (clients, per route) one pod tracks while it limits on its own.
pub const MAX_CLIENTS: usize = 50_000;
/// Most allowed requests one pod remembers across all keys; above the largest limit a
/// `ScaledApp` may set (1,000,000), so one client at that limit fits.
pub const MAX_REQUESTS: usize = 1 << 20;

/// A request buffer holding less than a quarter of its capacity (and more than this) is shrunk,
/// so a window that once held many requests does not keep their memory.
const SHRINK_ABOVE: usize = 16;

/// The per-key windows of one pod. Every decision takes one short lock, with no await inside.
pub(super) struct LocalWindows {
    state: Mutex<Windows>,
}

impl LocalWindows {
    /// Windows bounded by [`MAX_CLIENTS`] and [`MAX_REQUESTS`].
    pub(super) fn new() -> Self {
        Self::bounded(MAX_CLIENTS, MAX_REQUESTS)
    }

    fn bounded(max_clients: usize, max_requests: usize) -> Self {
        LocalWindows {
            state: Mutex::new(Windows {
                epoch: Instant::now(),
                max_clients,
                max_requests,
                keys: HashMap::new(),
                seen: BTreeMap::new(),
                next_seen: 0,
                requests: 0,
            }),
        }
    }

    /// Records a request of `key` at `now` if fewer than `limit` were allowed in the `window`
    /// before it; a refused request is not recorded.
    pub(super) fn take(&self, key: &str, limit: u32, window: Duration, now: Instant) -> Taken {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(key, limit, window, now)
    }

    /// How many keys and recorded requests are held.
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let windows = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let requests = windows.keys.values().map(|key| key.allowed.len()).sum();
        assert_eq!(requests, windows.requests, "the running total is exact");
        assert_eq!(
            windows.keys.len(),
            windows.seen.len(),
            "one recency per key"
        );
        (windows.keys.len(), requests)
    }
}

struct Windows {
    /// Times are kept as nanoseconds since this instant (8 bytes per request, not 16).
    epoch: Instant,
    max_clients: usize,
    max_requests: usize,
    keys: HashMap<String, Window>,
    /// Every key by when it was last seen: a sequence number, unique and increasing, so the
    /// first entry is the least recently seen key.
    seen: BTreeMap<u64, String>,
    next_seen: u64,
    /// Allowed requests held across all keys.
    requests: usize,
}

struct Window {
    /// When each allowed request came, oldest first.
    allowed: VecDeque<u64>,
    /// This key's entry in [`Windows::seen`].
    seen: u64,
}

impl Windows {
    fn take(&mut self, key: &str, limit: u32, window: Duration, now: Instant) -> Taken {
        let now = nanoseconds(now.saturating_duration_since(self.epoch));
        let window = nanoseconds(window);
        let seen = self.next_seen;
        self.next_seen += 1;
        match self.keys.get_mut(key) {
            Some(entry) => {
                self.seen.remove(&entry.seen);
                entry.seen = seen;
            }
            None => {
                while self.keys.len() >= self.max_clients && self.forget_least_recent() {}
                self.keys.insert(
                    key.to_owned(),
                    Window {
                        allowed: VecDeque::new(),
                        seen,
                    },
                );
            }
        }
        self.seen.insert(seen, key.to_owned());
        let entry = self.keys.get_mut(key).expect("the key was inserted above");

        // As the script's ZREMRANGEBYSCORE: a request `window` old or older has left.
        let held = entry.allowed.len();
        while entry
            .allowed
            .front()
            .is_some_and(|&at| now.saturating_sub(at) >= window)
        {
            entry.allowed.pop_front();
        }
        self.requests -= held - entry.allowed.len();
        let capacity = entry.allowed.capacity();
        if capacity > SHRINK_ABOVE && entry.allowed.len() < capacity / 4 {
            entry.allowed.shrink_to(entry.allowed.len() * 2);
        }

        let counted = u32::try_from(entry.allowed.len()).unwrap_or(u32::MAX);
        let taken = if counted < limit {
            entry.allowed.push_back(now);
            self.requests += 1;
            Taken::Yes {
                remaining: limit - counted - 1,
                reset_seconds: seconds_until_oldest_leaves(&entry.allowed, window, now),
            }
        } else {
            Taken::No {
                retry_after_seconds: seconds_until_oldest_leaves(&entry.allowed, window, now)
                    .max(1),
            }
        };
        // The key just decided is the most recently seen, so it is never forgotten here.
        while self.requests > self.max_requests && self.seen.len() > 1 {
            self.forget_least_recent();
        }
        taken
    }

    /// Forgets the least recently seen key; false when there is none.
    fn forget_least_recent(&mut self) -> bool {
        let Some((_, key)) = self.seen.pop_first() else {
            return false;
        };
        if let Some(window) = self.keys.remove(&key) {
            self.requests -= window.allowed.len();
        }
        true
    }
}

fn nanoseconds(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Whole seconds (rounded up) until the oldest allowed request leaves the window: when the next
/// request will be allowed, or the window be empty. A whole window when nothing is held.
fn seconds_until_oldest_leaves(allowed: &VecDeque<u64>, window: u64, now: u64) -> u64 {
    let leaves = allowed
        .front()
        .map_or(now.saturating_add(window), |&oldest| {
            oldest.saturating_add(window)
        });
    leaves.saturating_sub(now).div_ceil(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    fn allowed(taken: &Taken) -> bool {
        matches!(taken, Taken::Yes { .. })
    }

    #[test]
    fn requests_in_the_same_instant_are_each_counted() {
        let windows = LocalWindows::new();
        let now = Instant::now();
        let remaining: Vec<u32> = (0..3)
            .map(
                |_| match windows.take("ratelimit:ip:192.0.2.7", 3, WINDOW, now) {
                    Taken::Yes { remaining, .. } => remaining,
                    Taken::No { .. } => panic!("within the limit"),
                },
            )
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = windows.take("ratelimit:ip:192.0.2.7", 3, WINDOW, now);
        assert!(
            matches!(
                refused,
                Taken::No {
                    retry_after_seconds: 10
                }
            ),
            "the fourth in the same instant is refused until the window has passed"
        );
        assert_eq!(windows.held(), (1, 3));
    }

    #[test]
    fn refused_requests_do_not_extend_the_lockout() {
        let windows = LocalWindows::new();
        let start = Instant::now();
        let key = "ratelimit:user:42";
        for offset in [0, 1, 2] {
            let taken = windows.take(key, 3, WINDOW, start + Duration::from_secs(offset));
            assert!(allowed(&taken));
        }
        // Hammering through the whole window: every attempt refused, none recorded.
        for tenth in 21..100 {
            let at = start + Duration::from_millis(tenth * 100);
            match windows.take(key, 3, WINDOW, at) {
                Taken::No {
                    retry_after_seconds,
                } => assert!((1..=10).contains(&retry_after_seconds)),
                Taken::Yes { .. } => panic!("allowed at {tenth} tenths of a second"),
            }
        }
        assert_eq!(windows.held(), (1, 3));
        // The first request leaves the window at exactly 10 s (as in Redis), and one place is
        // free: the second and third still count until 11 s and 12 s.
        assert!(allowed(&windows.take(key, 3, WINDOW, start + WINDOW)));
        assert!(!allowed(&windows.take(
            key,
            3,
            WINDOW,
            start + WINDOW + Duration::from_millis(500)
        )));
        assert!(allowed(&windows.take(
            key,
            3,
            WINDOW,
            start + WINDOW + Duration::from_secs(1)
        )));
    }

    #[test]
    fn the_reset_is_when_the_oldest_counted_request_leaves() {
        let windows = LocalWindows::new();
        let start = Instant::now();
        let key = "ratelimit:ip:192.0.2.7";
        windows.take(key, 5, WINDOW, start);
        let later = windows.take(key, 5, WINDOW, start + Duration::from_millis(3_500));
        assert!(matches!(
            later,
            Taken::Yes {
                remaining: 3,
                reset_seconds: 7
            }
        ));
    }

    #[test]
    fn keys_are_limited_apart() {
        let windows = LocalWindows::new();
        let now = Instant::now();
        assert!(allowed(&windows.take(
            "ratelimit:ip:192.0.2.7",
            1,
            WINDOW,
            now
        )));
        assert!(!allowed(&windows.take(
            "ratelimit:ip:192.0.2.7",
            1,
            WINDOW,
            now
        )));
        assert!(allowed(&windows.take(
            "ratelimit:ip:192.0.2.8",
            1,
            WINDOW,
            now
        )));
        assert!(allowed(&windows.take(
            "ratelimit:signin:ip:192.0.2.7",
            1,
            WINDOW,
            now
        )));
    }

    #[test]
    fn no_more_keys_are_held_than_the_bound_and_the_least_recently_seen_goes_first() {
        let windows = LocalWindows::bounded(3, MAX_REQUESTS);
        let now = Instant::now();
        for key in ["a", "b", "c"] {
            windows.take(key, 1, WINDOW, now);
        }
        // `a` is seen again (refused: its window is full), so `b` is now the least recent.
        assert!(!allowed(&windows.take("a", 1, WINDOW, now)));
        windows.take("d", 1, WINDOW, now);
        assert_eq!(windows.held(), (3, 3));
        assert!(!allowed(&windows.take("a", 1, WINDOW, now)), "still held");
        assert!(allowed(&windows.take("b", 1, WINDOW, now)), "forgotten");
        // Ten thousand new clients later, still three keys.
        for index in 0..10_000 {
            windows.take(
                &format!("ratelimit:ip:10.0.{}.{}", index / 256, index % 256),
                1,
                WINDOW,
                now,
            );
            assert!(windows.held().0 <= 3);
        }
    }

    #[test]
    fn no_more_requests_are_held_than_the_bound_but_the_key_decided_keeps_its_window() {
        let windows = LocalWindows::bounded(MAX_CLIENTS, 10);
        let now = Instant::now();
        for key in ["a", "b", "c"] {
            for _ in 0..4 {
                assert!(allowed(&windows.take(key, 4, WINDOW, now)));
            }
            assert!(windows.held().1 <= 10);
        }
        // `a` (the least recently seen) went to make room for `c`'s requests.
        assert_eq!(windows.held(), (2, 8));
        assert!(!allowed(&windows.take("c", 4, WINDOW, now)));
        // A key whose limit exceeds the bound still holds its whole window.
        for _ in 0..20 {
            assert!(allowed(&windows.take("big", 20, WINDOW, now)));
        }
        assert!(!allowed(&windows.take("big", 20, WINDOW, now)));
        assert_eq!(windows.held(), (1, 20));
    }

    #[test]
    fn expired_requests_are_dropped_from_the_count() {
        let windows = LocalWindows::new();
        let start = Instant::now();
        for _ in 0..100 {
            windows.take("a", 100, WINDOW, start);
        }
        assert_eq!(windows.held(), (1, 100));
        windows.take("a", 100, WINDOW, start + WINDOW);
        assert_eq!(windows.held(), (1, 1));
    }
}
