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

/// Exclusive upper bound of bucket `i` (ns): the next bucket's lower bound, or `u64::MAX` for
/// the last bucket, which also holds every larger value.
pub fn bucket_high(i: usize) -> u64 {
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

/// One interval of the time series: when it ended and each figure over it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// End of the interval, ns since the command started.
    pub t_ns: u64,
    /// Length of the interval, ns.
    pub interval_ns: u64,
    /// Figures by name: `cpu_percent` (of one core), `memory_current_bytes`, and for every
    /// counter `<name>_per_sec`, plus `block_bytes_per_sec` and `net_bytes_per_sec`. For a
    /// point that stands for several intervals (see [`Series`]), their time-weighted average.
    pub values: std::collections::BTreeMap<String, f64>,
    /// For a point that stands for several intervals: the smallest interval value of each
    /// figure. Empty for a single interval.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub min: std::collections::BTreeMap<String, f64>,
    /// For a point that stands for several intervals: the largest interval value of each
    /// figure. Empty for a single interval.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub max: std::collections::BTreeMap<String, f64>,
}

impl SeriesPoint {
    /// The smallest interval value of `name` this point stands for.
    pub fn low(&self, name: &str) -> Option<f64> {
        self.min
            .get(name)
            .or_else(|| self.values.get(name))
            .copied()
    }

    /// The largest interval value of `name` this point stands for.
    pub fn high(&self, name: &str) -> Option<f64> {
        self.max
            .get(name)
            .or_else(|| self.values.get(name))
            .copied()
    }

    /// One point for two consecutive ones: ends when `later` ends, averages weighted by
    /// interval length, min and max kept. [`Series`] merges its packed points the same way,
    /// bit for bit (`Packed::merge`); the tests hold it to this.
    #[cfg(test)]
    fn merge(earlier: &Self, later: &Self) -> Self {
        let interval_ns = earlier.interval_ns.saturating_add(later.interval_ns);
        let (we, wl) = if interval_ns == 0 {
            (0.5, 0.5)
        } else {
            (
                earlier.interval_ns as f64 / interval_ns as f64,
                later.interval_ns as f64 / interval_ns as f64,
            )
        };
        let mut out = Self {
            t_ns: later.t_ns,
            interval_ns,
            values: Default::default(),
            min: Default::default(),
            max: Default::default(),
        };
        let names: std::collections::BTreeSet<&String> =
            earlier.values.keys().chain(later.values.keys()).collect();
        for name in names {
            let (e, l) = (earlier.values.get(name), later.values.get(name));
            let avg = match (e, l) {
                (Some(e), Some(l)) => e * we + l * wl,
                (Some(v), None) | (None, Some(v)) => *v,
                (None, None) => continue,
            };
            out.values.insert(name.clone(), avg);
            let lows = [earlier.low(name), later.low(name)];
            let highs = [earlier.high(name), later.high(name)];
            let low = lows.into_iter().flatten().fold(f64::INFINITY, f64::min);
            let high = highs
                .into_iter()
                .flatten()
                .fold(f64::NEG_INFINITY, f64::max);
            out.min.insert(name.clone(), low);
            out.max.insert(name.clone(), high);
        }
        out
    }
}

/// Most points a run's series keeps, whatever its length.
pub const MAX_SERIES_POINTS: usize = 2048;

/// How a report's series was kept: every interval, or older ones merged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesResolution {
    /// Intervals sampled.
    pub intervals: u64,
    /// Points in the series.
    pub points: u64,
    /// The most points a series keeps.
    pub max_points: u64,
    /// The longest interval one point stands for, ns.
    pub coarsest_interval_ns: u64,
    /// How points were merged, in words.
    pub method: String,
}

/// How older points are merged, as reports state it, for a series of at most `max_points`.
pub fn series_method(max_points: usize) -> String {
    format!(
        "every interval is kept until the series holds {max_points} points; then the older half \
         is merged pairwise (values: time-weighted average; min and max: the extremes of the \
         merged intervals), so recent intervals keep full resolution and memory stays bounded \
         however long the run"
    )
}

/// A run's time series with bounded memory: at most [`MAX_SERIES_POINTS`] points. Once full,
/// the older half is merged pairwise, so resolution falls with age and the newest intervals
/// stay as sampled.
///
/// Points are kept packed: the names once per series (`names`, in the order first seen), and
/// per point only its figures, each in its name's slot. A [`SeriesPoint`] is made again when
/// asked for ([`Series::points`], [`Series::last`]), with exactly the names it had.
#[derive(Clone, Debug)]
pub struct Series {
    names: Vec<String>,
    points: Vec<Packed>,
    intervals: u64,
    max_points: usize,
}

/// A [`SeriesPoint`] as a [`Series`] keeps it: each figure in the slot of its name in the
/// series' `names` ([`ABSENT`] where the point has no such name; slots past the end are absent
/// too). `min` and `max` are `None` where the point's are empty.
#[derive(Clone, Debug)]
struct Packed {
    t_ns: u64,
    interval_ns: u64,
    values: Box<[f64]>,
    min: Option<Box<[f64]>>,
    max: Option<Box<[f64]>>,
}

impl Packed {
    /// [`SeriesPoint::merge`] on packed points, slot by slot: the same figures, bit for bit.
    fn merge(earlier: &Self, later: &Self) -> Self {
        let interval_ns = earlier.interval_ns.saturating_add(later.interval_ns);
        let (we, wl) = if interval_ns == 0 {
            (0.5, 0.5)
        } else {
            (
                earlier.interval_ns as f64 / interval_ns as f64,
                later.interval_ns as f64 / interval_ns as f64,
            )
        };
        let get = |slots: &[f64], i: usize| slots.get(i).copied().filter(|v| !is_absent(*v));
        let low = |p: &Self, i: usize| {
            p.min
                .as_deref()
                .and_then(|m| get(m, i))
                .or_else(|| get(&p.values, i))
        };
        let high = |p: &Self, i: usize| {
            p.max
                .as_deref()
                .and_then(|m| get(m, i))
                .or_else(|| get(&p.values, i))
        };
        let len = earlier.values.len().max(later.values.len());
        let absent = f64::from_bits(ABSENT);
        let (mut values, mut min, mut max) =
            (vec![absent; len], vec![absent; len], vec![absent; len]);
        for i in 0..len {
            let avg = match (get(&earlier.values, i), get(&later.values, i)) {
                (Some(e), Some(l)) => e * we + l * wl,
                (Some(v), None) | (None, Some(v)) => v,
                (None, None) => continue,
            };
            let lows = [low(earlier, i), low(later, i)];
            let highs = [high(earlier, i), high(later, i)];
            values[i] = figure(avg);
            min[i] = figure(lows.into_iter().flatten().fold(f64::INFINITY, f64::min));
            max[i] = figure(
                highs
                    .into_iter()
                    .flatten()
                    .fold(f64::NEG_INFINITY, f64::max),
            );
        }
        // As packing a point would: no slots past the last figure, and empty min and max as
        // none.
        let used = values
            .iter()
            .rposition(|v| !is_absent(*v))
            .map_or(0, |i| i + 1);
        for column in [&mut values, &mut min, &mut max] {
            column.truncate(used);
        }
        Self {
            t_ns: later.t_ns,
            interval_ns,
            values: values.into_boxed_slice(),
            min: (used > 0).then(|| min.into_boxed_slice()),
            max: (used > 0).then(|| max.into_boxed_slice()),
        }
    }
}

/// Whether a slot holds no figure.
fn is_absent(slot: f64) -> bool {
    slot.to_bits() == ABSENT
}

/// `value` as a slot holds it: [`ABSENT`]'s bits as `f64::NAN`.
fn figure(value: f64) -> f64 {
    if is_absent(value) { f64::NAN } else { value }
}

/// The bits of a slot whose name the point does not have: a quiet NaN with a payload no
/// arithmetic makes. A figure that happens to have exactly these bits is kept as `f64::NAN`.
const ABSENT: u64 = 0x7ff8_a85e_47ab_5e47;

impl Default for Series {
    fn default() -> Self {
        Self::with_max_points(MAX_SERIES_POINTS)
    }
}

impl Series {
    /// An empty series that keeps at most `max_points` (at least 2).
    pub fn with_max_points(max_points: usize) -> Self {
        Self {
            names: Vec::new(),
            points: Vec::new(),
            intervals: 0,
            max_points: max_points.max(2),
        }
    }

    /// Adds the newest interval.
    pub fn push(&mut self, point: SeriesPoint) {
        self.intervals += 1;
        let packed = self.pack(&point);
        if self.points.len() == self.points.capacity() {
            // Grow as a Vec would, but not past what the series holds at most (just before a
            // merge) where that can be helped.
            let want = (self.points.capacity() * 2)
                .max(4)
                .min(self.max_points + 1)
                .max(self.points.len() + 1);
            self.points.reserve_exact(want - self.points.len());
        }
        self.points.push(packed);
        if self.points.len() > self.max_points {
            let half = self.points.len() / 2;
            let older: Vec<Packed> = self.points.drain(..half).collect();
            let merged: Vec<Packed> = older
                .chunks(2)
                .map(|pair| match pair {
                    [a, b] => Packed::merge(a, b),
                    [a] => a.clone(),
                    _ => unreachable!("chunks(2) yields one or two"),
                })
                .collect();
            self.points.splice(0..0, merged);
        }
    }

    /// The points, oldest first.
    pub fn points(&self) -> Vec<SeriesPoint> {
        self.points.iter().map(|p| self.unpack(p)).collect()
    }

    /// The newest point.
    pub fn last(&self) -> Option<SeriesPoint> {
        self.points.last().map(|p| self.unpack(p))
    }

    /// How many points the series holds.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the series holds no point.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// How the series was kept.
    pub fn resolution(&self) -> SeriesResolution {
        SeriesResolution {
            intervals: self.intervals,
            points: self.points.len() as u64,
            max_points: self.max_points as u64,
            coarsest_interval_ns: self.points.iter().map(|p| p.interval_ns).max().unwrap_or(0),
            method: series_method(self.max_points),
        }
    }

    /// How many intervals were pushed, merged ones included.
    pub fn intervals(&self) -> u64 {
        self.intervals
    }

    /// The points, for the report.
    pub fn into_points(self) -> Vec<SeriesPoint> {
        self.points()
    }

    fn pack(&mut self, point: &SeriesPoint) -> Packed {
        Packed {
            t_ns: point.t_ns,
            interval_ns: point.interval_ns,
            values: self.pack_figures(&point.values),
            min: (!point.min.is_empty()).then(|| self.pack_figures(&point.min)),
            max: (!point.max.is_empty()).then(|| self.pack_figures(&point.max)),
        }
    }

    /// `figures` in their names' slots, the names not seen before added to `names`. The slice
    /// ends at the last slot `figures` fills.
    fn pack_figures(&mut self, figures: &std::collections::BTreeMap<String, f64>) -> Box<[f64]> {
        // Points mostly have the names of the one before, in the same order: try the slot after
        // the last one first.
        let mut next = 0;
        let slots: Vec<usize> = figures
            .keys()
            .map(|name| {
                let slot = if self.names.get(next) == Some(name) {
                    next
                } else if let Some(slot) = self.names.iter().position(|n| n == name) {
                    slot
                } else {
                    self.names.push(name.clone());
                    self.names.len() - 1
                };
                next = slot + 1;
                slot
            })
            .collect();
        if self.names.len() < self.names.capacity() {
            // New names came (rarely, mostly with the first point): hold no spare room.
            self.names.shrink_to_fit();
        }
        let len = slots.iter().max().map_or(0, |s| s + 1);
        let mut packed = vec![f64::from_bits(ABSENT); len].into_boxed_slice();
        for (slot, value) in slots.into_iter().zip(figures.values()) {
            packed[slot] = figure(*value);
        }
        packed
    }

    fn unpack(&self, packed: &Packed) -> SeriesPoint {
        SeriesPoint {
            t_ns: packed.t_ns,
            interval_ns: packed.interval_ns,
            values: self.unpack_figures(&packed.values),
            min: packed
                .min
                .as_deref()
                .map(|m| self.unpack_figures(m))
                .unwrap_or_default(),
            max: packed
                .max
                .as_deref()
                .map(|m| self.unpack_figures(m))
                .unwrap_or_default(),
        }
    }

    fn unpack_figures(&self, slots: &[f64]) -> std::collections::BTreeMap<String, f64> {
        self.names
            .iter()
            .zip(slots)
            .filter(|(_, v)| !is_absent(**v))
            .map(|(name, v)| (name.clone(), *v))
            .collect()
    }
}

/// Counters at one instant, as the series needs them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    /// ns since the command started.
    pub t_ns: u64,
    /// Counter values by metric name (cumulative).
    pub counters: std::collections::BTreeMap<String, u64>,
    /// Memory charged now, when known.
    pub memory_current_bytes: Option<u64>,
}

/// The interval between two readings. Counters that went backwards (a reset) give no rate.
pub fn interval(prev: &Reading, now: &Reading) -> Option<SeriesPoint> {
    let dt_ns = now.t_ns.checked_sub(prev.t_ns).filter(|d| *d > 0)?;
    let dt = dt_ns as f64 / 1e9;
    let mut values = std::collections::BTreeMap::new();
    for (name, v) in &now.counters {
        let Some(delta) = prev.counters.get(name).and_then(|p| v.checked_sub(*p)) else {
            continue;
        };
        if name == "cpu_time_ns" {
            values.insert(
                "cpu_percent".to_owned(),
                delta as f64 / dt_ns as f64 * 100.0,
            );
        }
        values.insert(format!("{name}_per_sec"), delta as f64 / dt);
    }
    for (total, a, b) in [
        (
            "block_bytes_per_sec",
            "block_read_bytes_per_sec",
            "block_write_bytes_per_sec",
        ),
        (
            "net_bytes_per_sec",
            "net_rx_bytes_per_sec",
            "net_tx_bytes_per_sec",
        ),
    ] {
        if let (Some(x), Some(y)) = (values.get(a), values.get(b)) {
            let v = x + y;
            values.insert(total.to_owned(), v);
        }
    }
    if let Some(m) = now.memory_current_bytes {
        values.insert("memory_current_bytes".to_owned(), m as f64);
    }
    Some(SeriesPoint {
        min: Default::default(),
        max: Default::default(),
        t_ns: now.t_ns,
        interval_ns: dt_ns,
        values,
    })
}

/// What a series of interval values comes to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Mean of the interval values.
    pub avg: f64,
    /// Smallest interval value.
    pub min: f64,
    /// Largest interval value.
    pub peak: f64,
    /// When the peak interval ended, ns since start.
    pub peak_at_ns: u64,
    /// Median of the interval values (nearest rank).
    pub p50: f64,
    /// 90th percentile of the interval values.
    pub p90: f64,
    /// 99th percentile of the interval values.
    pub p99: f64,
    /// Least-squares slope over the run, in units per second.
    pub trend_per_sec: f64,
    /// Number of intervals.
    pub intervals: usize,
}

/// Aggregates of every series name in `points`.
pub fn aggregate(points: &[SeriesPoint]) -> std::collections::BTreeMap<String, Aggregate> {
    let mut names: std::collections::BTreeSet<&String> = std::collections::BTreeSet::new();
    for p in points {
        names.extend(p.values.keys());
    }
    names
        .into_iter()
        .filter_map(|name| {
            let xs: Vec<(u64, f64)> = points
                .iter()
                .filter_map(|p| Some((p.t_ns, *p.values.get(name)?)))
                .collect();
            let mut agg = aggregate_one(&xs)?;
            // A merged point keeps its intervals' extremes: the peak and minimum come from
            // them, not from its average.
            for p in points {
                if let Some(high) = p.high(name).filter(|h| *h > agg.peak) {
                    agg.peak = high;
                    agg.peak_at_ns = p.t_ns;
                }
                if let Some(low) = p.low(name) {
                    agg.min = agg.min.min(low);
                }
            }
            Some((name.clone(), agg))
        })
        .collect()
}

/// Aggregate of one series of (time ns, value).
pub fn aggregate_one(xs: &[(u64, f64)]) -> Option<Aggregate> {
    if xs.is_empty() {
        return None;
    }
    let n = xs.len() as f64;
    let avg = xs.iter().map(|(_, v)| v).sum::<f64>() / n;
    let (peak_at_ns, peak) = xs
        .iter()
        .copied()
        .fold((0, f64::MIN), |best, x| if x.1 > best.1 { x } else { best });
    let min = xs.iter().map(|(_, v)| *v).fold(f64::MAX, f64::min);
    let mut sorted: Vec<f64> = xs.iter().map(|(_, v)| *v).collect();
    sorted.sort_by(f64::total_cmp);
    let rank = |q: f64| sorted[((q * n).ceil() as usize).clamp(1, sorted.len()) - 1];
    Some(Aggregate {
        avg,
        min,
        peak,
        peak_at_ns,
        p50: rank(0.5),
        p90: rank(0.9),
        p99: rank(0.99),
        trend_per_sec: slope(xs),
        intervals: xs.len(),
    })
}

/// Least-squares slope of value over time, per second (0 with fewer than two points).
pub fn slope(xs: &[(u64, f64)]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let n = xs.len() as f64;
    let t: Vec<f64> = xs.iter().map(|(t, _)| *t as f64 / 1e9).collect();
    let mt = t.iter().sum::<f64>() / n;
    let mv = xs.iter().map(|(_, v)| v).sum::<f64>() / n;
    let cov: f64 = t
        .iter()
        .zip(xs)
        .map(|(t, (_, v))| (t - mt) * (v - mv))
        .sum();
    let var: f64 = t.iter().map(|t| (t - mt).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
}

#[cfg(test)]
mod series_tests {
    use std::collections::BTreeMap;

    use super::*;

    fn reading(t_s: u64, cpu_ns: u64, rx: u64, mem: u64) -> Reading {
        Reading {
            t_ns: t_s * 1_000_000_000,
            counters: BTreeMap::from([
                ("cpu_time_ns".to_owned(), cpu_ns),
                ("net_rx_bytes".to_owned(), rx),
                ("net_tx_bytes".to_owned(), 0),
            ]),
            memory_current_bytes: Some(mem),
        }
    }

    #[test]
    fn intervals_give_rates_and_cpu_percent() {
        let p = interval(&reading(1, 0, 0, 10), &reading(3, 3_000_000_000, 4_000, 20)).unwrap();
        assert_eq!(p.interval_ns, 2_000_000_000);
        assert!((p.values["cpu_percent"] - 150.0).abs() < 1e-9, "{p:?}");
        assert!((p.values["net_rx_bytes_per_sec"] - 2_000.0).abs() < 1e-9);
        assert!((p.values["net_bytes_per_sec"] - 2_000.0).abs() < 1e-9);
        assert_eq!(p.values["memory_current_bytes"], 20.0);
    }

    #[test]
    fn a_counter_that_went_back_gives_no_rate() {
        let p = interval(&reading(1, 500, 100, 0), &reading(2, 400, 200, 0)).unwrap();
        assert!(!p.values.contains_key("cpu_percent"), "{p:?}");
        assert!(p.values.contains_key("net_rx_bytes_per_sec"));
        assert!(interval(&reading(2, 0, 0, 0), &reading(2, 0, 0, 0)).is_none());
    }

    #[test]
    fn aggregates_find_peak_percentiles_and_trend() {
        // value = 2 t + 1 at t = 1..=10 s, except a spike at t = 7.
        let xs: Vec<(u64, f64)> = (1..=10u64)
            .map(|t| {
                (
                    t * 1_000_000_000,
                    if t == 7 { 100.0 } else { 2.0 * t as f64 + 1.0 },
                )
            })
            .collect();
        let a = aggregate_one(&xs).unwrap();
        assert_eq!(a.peak, 100.0);
        assert_eq!(a.peak_at_ns, 7_000_000_000);
        assert_eq!(a.min, 3.0);
        assert_eq!(a.intervals, 10);
        assert_eq!(a.p50, 11.0);
        let clean: Vec<(u64, f64)> = (1..=10u64)
            .map(|t| (t * 1_000_000_000, 2.0 * t as f64 + 1.0))
            .collect();
        assert!(
            (slope(&clean) - 2.0).abs() < 1e-9,
            "slope {}",
            slope(&clean)
        );
        assert_eq!(slope(&clean[..1]), 0.0);
        assert!(aggregate_one(&[]).is_none());
    }
}

#[cfg(test)]
mod bounded_series_tests {
    use super::*;

    fn point(i: u64, cpu: f64) -> SeriesPoint {
        SeriesPoint {
            t_ns: (i + 1) * 10_000_000,
            interval_ns: 10_000_000,
            values: [("cpu_percent".to_owned(), cpu)].into(),
            min: Default::default(),
            max: Default::default(),
        }
    }

    #[test]
    fn a_long_series_stays_bounded_and_keeps_its_extremes() {
        let mut s = Series::default();
        let n = 100_000u64;
        for i in 0..n {
            // One spike early on, long since merged.
            let cpu = if i == 10 { 900.0 } else { (i % 7) as f64 };
            s.push(point(i, cpu));
            assert!(s.len() <= MAX_SERIES_POINTS, "{} points", s.len());
        }
        let r = s.resolution();
        assert_eq!(r.intervals, n);
        assert!(r.coarsest_interval_ns > 10_000_000, "{r:?}");
        let pts = s.points();
        // Time is covered without gaps or overlaps.
        let covered: u64 = pts.iter().map(|p| p.interval_ns).sum();
        assert_eq!(covered, n * 10_000_000);
        assert!(pts.windows(2).all(|w| w[0].t_ns < w[1].t_ns));
        // The newest intervals are as sampled.
        assert_eq!(pts.last().unwrap(), &point(n - 1, ((n - 1) % 7) as f64));
        let agg = aggregate(&pts);
        let cpu = &agg["cpu_percent"];
        assert_eq!(cpu.peak, 900.0, "the spike survives merging");
        assert_eq!(cpu.min, 0.0);
        // The average over the run is kept by time-weighted merging.
        let exact = ((0..n)
            .map(|i| if i == 10 { 900.0 } else { (i % 7) as f64 })
            .sum::<f64>())
            / n as f64;
        let weighted: f64 = pts
            .iter()
            .map(|p| p.values["cpu_percent"] * p.interval_ns as f64)
            .sum::<f64>()
            / covered as f64;
        assert!((weighted - exact).abs() < 1e-9, "{weighted} vs {exact}");
    }

    /// A point whose names depend on `i`: some come and go, one is new late on.
    fn varied(i: u64) -> SeriesPoint {
        let mut values: std::collections::BTreeMap<String, f64> = Default::default();
        values.insert("cpu_percent".into(), (i % 5) as f64 * 10.0 + 0.25);
        if !i.is_multiple_of(3) {
            values.insert("memory_current_bytes".into(), (1000 + i * 7) as f64);
        }
        if i % 4 == 1 {
            values.insert("block_bytes_per_sec".into(), (i * 4096) as f64);
        }
        if i > 20 {
            values.insert("a_late_name_per_sec".into(), i as f64 / 3.0);
        }
        SeriesPoint {
            t_ns: (i + 1) * 10_000_000,
            // Uneven intervals, so merging weights them.
            interval_ns: 10_000_000 + (i % 3) * 1_000_000,
            values,
            min: Default::default(),
            max: Default::default(),
        }
    }

    #[test]
    fn packed_points_come_back_with_exactly_their_names_and_figures() {
        let mut originals = vec![
            // No figures at all.
            SeriesPoint {
                t_ns: 1,
                interval_ns: 1,
                values: Default::default(),
                min: Default::default(),
                max: Default::default(),
            },
            // A NaN and infinities are figures like any other.
            SeriesPoint {
                t_ns: 2,
                interval_ns: 1,
                values: [
                    ("z_nan".to_owned(), f64::NAN),
                    ("a_inf".to_owned(), f64::INFINITY),
                    ("m_neg".to_owned(), -0.0),
                ]
                .into(),
                min: Default::default(),
                max: Default::default(),
            },
            // min and max with names of their own, apart from the values'.
            SeriesPoint {
                t_ns: 3,
                interval_ns: 1,
                values: [("cpu_percent".to_owned(), 5.0)].into(),
                min: [("only_min".to_owned(), 1.0)].into(),
                max: [
                    ("cpu_percent".to_owned(), 9.0),
                    ("only_max".to_owned(), 2.0),
                ]
                .into(),
            },
        ];
        originals.extend((0..30).map(varied));
        // Merged points, of pairs with differing names, and of merged points.
        let m1 = SeriesPoint::merge(&varied(3), &varied(4));
        let m2 = SeriesPoint::merge(&varied(21), &varied(22));
        let m3 = SeriesPoint::merge(&m1, &SeriesPoint::merge(&varied(5), &varied(6)));
        assert!(!m1.min.is_empty() && !m1.max.is_empty());
        originals.extend([m1, m2, m3]);
        for (i, p) in originals.iter_mut().enumerate() {
            p.t_ns = i as u64 + 1;
        }
        let mut s = Series::with_max_points(originals.len());
        assert!(s.is_empty() && s.last().is_none());
        for p in &originals {
            s.push(p.clone());
            assert_eq!(
                s.last().as_ref().map(|l| format!("{l:?}")),
                Some(format!("{p:?}"))
            );
        }
        assert_eq!(s.len(), originals.len());
        // Debug output, as NaN is not equal to itself; the bits of every figure besides.
        let bits = |p: &SeriesPoint| {
            [&p.values, &p.min, &p.max].map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.to_bits()))
                    .collect::<Vec<_>>()
            })
        };
        let back = s.points();
        assert_eq!(back.len(), originals.len());
        for (b, o) in back.iter().zip(&originals) {
            assert_eq!(format!("{b:?}"), format!("{o:?}"));
            assert_eq!(bits(b), bits(o));
            assert_eq!((b.t_ns, b.interval_ns), (o.t_ns, o.interval_ns));
        }
        assert_eq!(format!("{:?}", s.into_points()), format!("{originals:?}"));
    }

    /// The series as it was kept before points were packed.
    struct Unpacked {
        points: Vec<SeriesPoint>,
        max_points: usize,
    }

    impl Unpacked {
        fn push(&mut self, point: SeriesPoint) {
            self.points.push(point);
            if self.points.len() > self.max_points {
                let half = self.points.len() / 2;
                let older: Vec<SeriesPoint> = self.points.drain(..half).collect();
                let merged: Vec<SeriesPoint> = older
                    .chunks(2)
                    .map(|pair| match pair {
                        [a, b] => SeriesPoint::merge(a, b),
                        [a] => a.clone(),
                        _ => unreachable!(),
                    })
                    .collect();
                self.points.splice(0..0, merged);
            }
        }
    }

    /// [`varied`], some points merged already, some with min or max names of their own.
    fn varied_more(i: u64) -> SeriesPoint {
        let mut p = if i % 10 == 7 {
            let mut m = SeriesPoint::merge(&varied(i + 1000), &varied(i + 1001));
            m.t_ns = varied(i).t_ns;
            m
        } else {
            varied(i)
        };
        if i % 13 == 5 {
            p.min.insert("only_min".into(), -(i as f64));
            p.max.insert("cpu_percent".into(), 1e9);
        }
        if i == 40 {
            p.values.clear();
        }
        p
    }

    #[test]
    fn packed_merging_gives_what_merging_whole_points_gave() {
        for max_points in [2, 3, 5, 8, 64] {
            let mut s = Series::with_max_points(max_points);
            let mut reference = Unpacked {
                points: Vec::new(),
                max_points,
            };
            for i in 0..500 {
                s.push(varied_more(i));
                reference.push(varied_more(i));
                assert_eq!(s.points(), reference.points, "max {max_points}, push {i}");
                assert_eq!(s.last().as_ref(), reference.points.last());
                assert_eq!(s.len(), reference.points.len());
                assert!(s.points.capacity() <= (max_points + 1).max(4));
            }
            let r = s.resolution();
            assert_eq!(r.points as usize, reference.points.len());
            assert_eq!(
                r.coarsest_interval_ns,
                reference
                    .points
                    .iter()
                    .map(|p| p.interval_ns)
                    .max()
                    .unwrap()
            );
        }
    }
}
