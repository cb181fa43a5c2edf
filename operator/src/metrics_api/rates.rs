//! Requests per second and p95 latency of one pod over the window between two scrapes: the
//! counter's increase divided by the window, and the 95th percentile of the histogram's bucket
//! increases, interpolated linearly inside the bucket that holds it (PromQL's
//! `histogram_quantile` over `increase(...[window])`). A counter that went backwards means the
//! process restarted; the newer sample then counts from zero, as PromQL's `increase` does.

use std::time::Duration;

use super::exposition::Sample;

/// The quantile served as "p95".
pub const P95: f64 = 0.95;

/// A pod's figures over one window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    /// Requests per second.
    pub requests_per_second: f64,
    /// 95th percentile of the request duration in seconds; 0 when the window saw no request
    /// (an idle pod is not slow, and a missing value would block the HPA's scale-down).
    pub response_time_p95: f64,
}

/// The figures between `previous` and `latest`, taken `window` apart; `None` for an empty window.
pub fn rates(previous: &Sample, latest: &Sample, window: Duration) -> Option<Rates> {
    let seconds = window.as_secs_f64();
    if seconds <= 0.0 {
        return None;
    }
    let requests = if latest.requests >= previous.requests {
        latest.requests - previous.requests
    } else {
        latest.requests
    };
    let buckets = bucket_increase(&previous.buckets, &latest.buckets);
    Some(Rates {
        requests_per_second: requests / seconds,
        response_time_p95: quantile(P95, &buckets).unwrap_or(0.0),
    })
}

/// Per-bucket increase; the newer buckets alone after a restart or a change of layout.
fn bucket_increase(previous: &[(f64, f64)], latest: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let same_layout = previous.len() == latest.len()
        && previous
            .iter()
            .zip(latest)
            .all(|(old, new)| old.0 == new.0 && new.1 >= old.1);
    if !same_layout {
        return latest.to_vec();
    }
    previous
        .iter()
        .zip(latest)
        .map(|(old, new)| (new.0, new.1 - old.1))
        .collect()
}

/// The `q` quantile of cumulative `(le, count)` buckets ordered by `le` and ending with `+Inf`;
/// `None` when there are no observations or no `+Inf` bucket. A rank in the `+Inf` bucket
/// answers the highest finite bound (nothing better is known).
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let (last_bound, total) = *buckets.last()?;
    if last_bound != f64::INFINITY || total <= 0.0 || buckets.len() < 2 {
        return None;
    }
    let rank = q * total;
    let index = buckets.iter().position(|(_, count)| *count >= rank)?;
    let (upper, count) = buckets[index];
    if upper == f64::INFINITY {
        return Some(buckets[index - 1].0);
    }
    let (lower, below) = match index {
        0 if upper <= 0.0 => return Some(upper),
        0 => (0.0, 0.0),
        _ => buckets[index - 1],
    };
    let in_bucket = count - below;
    if in_bucket <= 0.0 {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below) / in_bucket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(requests: f64, buckets: &[(f64, f64)]) -> Sample {
        Sample {
            requests,
            buckets: buckets.to_vec(),
        }
    }

    const INF: f64 = f64::INFINITY;

    #[test]
    fn the_rate_is_the_increase_over_the_window() {
        let before = sample(1000.0, &[]);
        let after = sample(16000.0, &[]);
        let rates = rates(&before, &after, Duration::from_secs(15)).expect("a window");
        assert_eq!(rates.requests_per_second, 1000.0);
        assert_eq!(rates.response_time_p95, 0.0, "no observations: not slow");
    }

    #[test]
    fn a_restarted_pod_counts_from_zero() {
        let before = sample(5000.0, &[(0.1, 5000.0), (INF, 5000.0)]);
        let after = sample(30.0, &[(0.1, 0.0), (INF, 30.0)]);
        let rates = rates(&before, &after, Duration::from_secs(10)).expect("a window");
        assert_eq!(rates.requests_per_second, 3.0);
        assert_eq!(
            rates.response_time_p95, 0.1,
            "all 30 above the last finite bound"
        );
    }

    #[test]
    fn p95_interpolates_inside_the_bucket_of_the_window_only() {
        // Before: 1000 fast requests. In the window: 100 more, 90 under 0.1 s, 10 in (0.1, 0.5].
        let before = sample(1000.0, &[(0.1, 1000.0), (0.5, 1000.0), (INF, 1000.0)]);
        let after = sample(1100.0, &[(0.1, 1090.0), (0.5, 1100.0), (INF, 1100.0)]);
        let rates = rates(&before, &after, Duration::from_secs(15)).expect("a window");
        // Rank 95 of 100: 5 of the 10 in (0.1, 0.5] -> halfway: 0.3 s.
        assert!((rates.response_time_p95 - 0.3).abs() < 1e-9, "{rates:?}");
        // Over the whole life it would be under 0.1 s: the window matters.
        assert!(quantile(P95, &after.buckets).expect("some") < 0.1);
    }

    #[test]
    fn quantiles_follow_histogram_quantile() {
        let buckets = [(0.5, 50.0), (1.0, 100.0), (INF, 100.0)];
        assert_eq!(quantile(0.5, &buckets), Some(0.5));
        assert_eq!(
            quantile(0.25, &buckets),
            Some(0.25),
            "from 0 in the first bucket"
        );
        assert_eq!(quantile(0.75, &buckets), Some(0.75));
        assert_eq!(quantile(0.95, &[(1.0, 0.0), (INF, 0.0)]), None);
        assert_eq!(quantile(0.95, &[(1.0, 5.0)]), None, "no +Inf bucket");
        assert_eq!(quantile(0.95, &[(1.0, 1.0), (INF, 100.0)]), Some(1.0));
    }

    #[test]
    fn an_empty_window_has_no_rate() {
        let same = sample(1.0, &[]);
        assert_eq!(rates(&same, &same, Duration::ZERO), None);
    }
}
