//! Pure arithmetic on measurements: latency summaries from kernel histograms.
//!
//! Percentiles come from log-linear buckets (8 per power of two): each reported percentile is
//! the upper bound of the bucket holding it, capped at the exact maximum, so it is never below
//! the true value and at most [`RELATIVE_ERROR`] above it.

use cleanroom_common::{HIST_BUCKETS, Histogram, hist_bucket_low};
use serde::{Deserialize, Serialize};

/// Bound on how far above the true value a reported percentile can be (one bucket width).
pub const RELATIVE_ERROR: f64 = 0.125;

/// One non-empty bucket: values in `[ge_ns, lt_ns)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Lower bound, inclusive.
    pub ge_ns: u64,
    /// Upper bound, exclusive.
    pub lt_ns: u64,
    /// Values in it.
    pub count: u64,
}

/// What a report shows of a latency histogram.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of latencies.
    pub count: u64,
    /// Their sum, ns.
    pub sum_ns: u64,
    /// Median, ns (upper bound of its bucket).
    pub p50_ns: u64,
    /// 90th percentile, ns.
    pub p90_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// Largest, ns (exact).
    pub max_ns: u64,
    /// Percentiles are at most this fraction above the true value.
    pub relative_error: f64,
    /// The non-empty buckets.
    pub buckets: Vec<Bucket>,
}

/// Adds two histograms (e.g. of two cgroups).
pub fn merge(a: &Histogram, b: &Histogram) -> Histogram {
    let mut out = *a;
    for (o, v) in out.buckets.iter_mut().zip(b.buckets.iter()) {
        *o = o.wrapping_add(*v);
    }
    out.count = a.count.wrapping_add(b.count);
    out.sum = a.sum.wrapping_add(b.sum);
    out.max = a.max.max(b.max);
    out
}

/// An empty histogram.
pub fn empty_histogram() -> Histogram {
    Histogram {
        buckets: [0; HIST_BUCKETS],
        count: 0,
        sum: 0,
        max: 0,
    }
}

/// Exclusive upper bound of bucket `i`.
fn bucket_high(i: usize) -> u64 {
    if i + 1 < HIST_BUCKETS {
        hist_bucket_low(i + 1)
    } else {
        u64::MAX
    }
}

/// The `q`-quantile (0 < q ≤ 1): the upper bound of the bucket holding the value of rank
/// ⌈q·n⌉, capped at the maximum. `None` for an empty histogram.
pub fn percentile(h: &Histogram, q: f64) -> Option<u64> {
    let total: u64 = h.buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, c) in h.buckets.iter().enumerate() {
        seen += c;
        if seen >= rank {
            let upper = bucket_high(i).saturating_sub(1);
            return Some(if h.max > 0 { upper.min(h.max) } else { upper });
        }
    }
    None
}

/// The summary of a histogram for a report.
pub fn summarize(h: &Histogram) -> LatencySummary {
    let p = |q| percentile(h, q).unwrap_or(0);
    LatencySummary {
        count: h.count,
        sum_ns: h.sum,
        p50_ns: p(0.50),
        p90_ns: p(0.90),
        p99_ns: p(0.99),
        max_ns: h.max,
        relative_error: RELATIVE_ERROR,
        buckets: h
            .buckets
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| Bucket {
                ge_ns: hist_bucket_low(i),
                lt_ns: bucket_high(i),
                count: *c,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use cleanroom_common::hist_bucket;

    use super::*;

    fn histogram_of(values: &[u64]) -> Histogram {
        let mut h = empty_histogram();
        for v in values {
            h.buckets[hist_bucket(*v)] += 1;
            h.count += 1;
            h.sum += v;
            h.max = h.max.max(*v);
        }
        h
    }

    /// The exact nearest-rank percentile.
    fn exact(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    #[test]
    fn percentiles_are_within_the_stated_error_of_the_truth() {
        // A spread of latencies from 1 µs to about 1 s, deterministic.
        let mut values: Vec<u64> = (0..10_000u64)
            .map(|i| 1_000 + (i * i * 7_919) % 1_000_000_000)
            .collect();
        let h = histogram_of(&values);
        values.sort_unstable();
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            let truth = exact(&values, q);
            let got = percentile(&h, q).unwrap();
            assert!(got >= truth, "p{q}: {got} below the true {truth}");
            assert!(
                got as f64 <= truth as f64 * (1.0 + RELATIVE_ERROR),
                "p{q}: {got} more than {RELATIVE_ERROR} above the true {truth}"
            );
        }
        assert_eq!(
            percentile(&h, 1.0),
            Some(*values.last().unwrap()),
            "p100 is the exact max"
        );
    }

    #[test]
    fn small_values_are_exact_and_empty_has_none() {
        let h = histogram_of(&[1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(percentile(&h, 0.5), Some(4));
        assert_eq!(percentile(&empty_histogram(), 0.5), None);
        let s = summarize(&h);
        assert_eq!(s.count, 7);
        assert_eq!(s.buckets.len(), 7);
        assert_eq!(s.buckets.iter().map(|b| b.count).sum::<u64>(), 7);
    }

    #[test]
    fn merge_adds_counts_and_keeps_the_larger_max() {
        let a = histogram_of(&[10, 20]);
        let b = histogram_of(&[30_000]);
        let m = merge(&a, &b);
        assert_eq!(m.count, 3);
        assert_eq!(m.max, 30_000);
        assert_eq!(m.sum, 30_030);
        assert_eq!(m.buckets.iter().sum::<u64>(), 3);
    }
}
