//! Warnings that would repeat for every request or row while a dependency is away (the rate
//! limiter without Redis, the relay's refused rows): logged at most once per interval per call
//! site, with how many were left out since the last one, so an outage does not bury the log (and
//! the node's disk) in copies of one line. Metrics still count every occurrence.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One call site's throttle; a `static` beside the warning.
pub struct Throttle {
    every: Duration,
    /// Milliseconds since [`epoch`] of the last warning logged, plus one (0: none yet).
    last: AtomicU64,
    /// Warnings left out since the last one logged.
    skipped: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Throttle {
    /// At most one warning per `every`.
    pub const fn new(every: Duration) -> Self {
        Throttle {
            every,
            last: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// Whether to log this occurrence: `Some(n)` with the `n` occurrences left out since the
    /// last one logged, `None` to leave it out.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(epoch().elapsed())
    }

    fn admit_at(&self, now: Duration) -> Option<u64> {
        let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let every_ms = u64::try_from(self.every.as_millis()).unwrap_or(u64::MAX);
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= every_ms;
        // One caller wins the slot; the others count as left out.
        if due
            && self
                .last
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.skipped.swap(0, Ordering::Relaxed));
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_interval_then_the_count_of_those_left_out() {
        let throttle = Throttle::new(Duration::from_secs(5));
        let at = Duration::from_secs;
        assert_eq!(throttle.admit_at(at(100)), Some(0), "the first is logged");
        for second in 101..105 {
            assert_eq!(throttle.admit_at(at(second)), None);
        }
        assert_eq!(
            throttle.admit_at(at(105)),
            Some(4),
            "the next, five seconds on, says four were left out"
        );
        assert_eq!(throttle.admit_at(at(106)), None);
        assert_eq!(throttle.admit_at(at(200)), Some(1));
    }
}
