//! Comparing runs: every metric and percentile of a base and a new run, with absolute and
//! relative change, and regressions flagged beyond a per-metric tolerance; and trends over the
//! last N runs of one name.
//!
//! Default tolerances are set with CI noise in mind: CPU time, bytes and fault counts are
//! steady between identical runs, wall time and latencies much less so.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::judge::verdict::{
    Change, Comparison, FunctionShift, RunLabel, StackChange, ToleranceSource,
};
use crate::{
    measure::collect::Total,
    metric::{Kind, Latency, Metric},
    output::report::Report,
    profile::Profile,
    units::{parse_percent, truncate_quote},
};

/// A run's figures by name, each with its kind.
pub type Figures = BTreeMap<String, (f64, Kind)>;

/// The unit of a figure of a comparison or trend, from the metric's declaration
/// ([`Metric::unit`]): `wall_time` and latency percentiles are times. A total this build does
/// not know (a report of a newer schema) is told by its suffix.
pub fn figure_kind(name: &str) -> Kind {
    if name == "wall_time" || Latency::ALL.iter().any(|l| name.starts_with(l.name())) {
        return Kind::Time;
    }
    match Metric::ALL.iter().find(|m| m.name() == name) {
        Some(m) => Kind::of(m.unit()),
        None if name.ends_with("_ns") => Kind::Time,
        None if name.ends_with("_bytes") => Kind::Bytes,
        None => Kind::Count,
    }
}

/// One figure of a run, by name, with its kind.
pub fn figures(report: &Report) -> Figures {
    let mut out = BTreeMap::new();
    out.insert(
        "wall_time".to_owned(),
        (report.wall_time_ns as f64, Kind::Time),
    );
    for (name, total) in &report.totals {
        match total {
            Total::Value(v) => {
                out.insert(name.clone(), (*v as f64, figure_kind(name)));
            }
            Total::Latency(l) if l.count > 0 => {
                for (suffix, v) in [
                    ("p50", l.p50_ns),
                    ("p90", l.p90_ns),
                    ("p99", l.p99_ns),
                    ("max", l.max_ns),
                ] {
                    out.insert(format!("{name}_{suffix}"), (v as f64, Kind::Time));
                }
            }
            Total::Latency(_) => {}
        }
    }
    out
}

/// The default tolerance (relative increase allowed) of a figure. The README's table of
/// default tolerances is checked against this function by a test: change both together.
pub fn default_tolerance(name: &str) -> f64 {
    let latency = Latency::ALL.iter().any(|l| name.starts_with(l.name()));
    match name {
        "cpu_time_ns" => 0.10,
        "wall_time" => 0.25,
        "memory_peak_bytes" | "memory_anon_peak_bytes" | "process_peak_rss_bytes" => 0.10,
        "memory_current_bytes" => 0.50,
        // Pages written back while a file is still being written are dirtied (and counted)
        // again: a few percent that depend on the flusher's timing (3.5% for a 250 MiB tar).
        _ if name.starts_with("io_") => 0.10,
        // How long runnable tasks wait depends on everything else the machine runs.
        _ if name.starts_with("runqueue_latency") => 3.0,
        _ if latency && name.ends_with("_max") => 2.0,
        _ if latency => 1.0,
        _ if name.starts_with("context_switches") => 0.50,
        _ if name.ends_with("_bytes") => 0.05,
        _ if name.starts_with("page_faults") => 0.10,
        _ => 0.25,
    }
}

/// The latency figures a comparison holds for each latency metric.
pub const LATENCY_FIGURES: &[&str] = &["p50", "p90", "p99", "max"];

/// Every figure name a comparison can hold: `wall_time`, each total, each latency percentile.
pub fn figure_names() -> impl Iterator<Item = String> {
    std::iter::once("wall_time".to_owned())
        .chain(Metric::ALL.iter().map(|m| m.name().to_owned()))
        .chain(Latency::ALL.iter().flat_map(|l| {
            LATENCY_FIGURES
                .iter()
                .map(move |suffix| format!("{}_{suffix}", l.name()))
        }))
}

/// The figure a tolerance is written for, by its name in a comparison or as SLOs spell it
/// (`cpu_time` for `cpu_time_ns`, `memory_peak` for `memory_peak_bytes`, `wall_time_ns`).
/// A name no comparison holds is an error: a tolerance for it would silently apply to nothing.
pub fn figure_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name == "wall_time_ns" {
        return Ok("wall_time".to_owned());
    }
    if let Some(full) = figure_names().find(|f| f == name) {
        return Ok(full);
    }
    Metric::ALL
        .iter()
        .map(|m| m.name())
        .find(|full| {
            full.strip_suffix("_ns")
                .or_else(|| full.strip_suffix("_bytes"))
                == Some(name)
        })
        .map(str::to_owned)
        .ok_or_else(|| {
            format!(
                "unknown metric {} for a tolerance; use a figure of a comparison: wall_time, a \
                 total (e.g. cpu_time_ns or cpu_time, memory_peak_bytes, page_faults_user) or \
                 a latency percentile (e.g. block_write_latency_p99, runqueue_latency_max)",
                truncate_quote(name, 40)
            )
        })
}

/// Parses `METRIC=PERCENT` (`--tolerance cpu_time=25%`): the figure's name (see
/// [`figure_name`]) and the tolerance as a fraction (0.25).
pub fn parse_tolerance(text: &str) -> Result<(String, f64), String> {
    let (metric, percent) = text
        .split_once('=')
        .ok_or_else(|| format!("{} is not METRIC=PERCENT", truncate_quote(text, 60)))?;
    Ok((figure_name(metric)?, parse_percent(percent)? / 100.0))
}

/// The smallest increase that can count as a regression, whatever the relative change: below
/// it, differences are scheduling noise (a 2 µs wakeup becoming 4 µs is +100% and means nothing).
pub fn noise_floor(name: &str, kind: Kind) -> f64 {
    match kind {
        Kind::Time if Latency::ALL.iter().any(|l| name.starts_with(l.name())) => 1e6, // 1 ms
        Kind::Time => 20e6,                                                           // 20 ms
        Kind::Bytes | Kind::BytesPerSec => (1u64 << 20) as f64,                       // 1 MiB
        _ => 100.0,
    }
}

/// How the spread of earlier runs widens a figure's default tolerance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// The relative spread of the figure across those runs (see [`history_spread`]).
    pub spread: f64,
    /// How many runs it rests on.
    pub runs: usize,
}

/// Tolerances that override the static defaults, by figure name, from each source.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tolerances {
    /// `--tolerance METRIC=PCT`.
    pub flag: BTreeMap<String, f64>,
    /// The configuration's `[comparison] tolerance` table.
    pub config: BTreeMap<String, f64>,
    /// The spread of each figure over earlier runs of the same name.
    pub history: BTreeMap<String, Spread>,
}

impl Tolerances {
    /// Flag tolerances alone.
    pub fn from_flags(flag: impl IntoIterator<Item = (String, f64)>) -> Self {
        Self {
            flag: flag.into_iter().collect(),
            ..Self::default()
        }
    }

    /// The tolerance of `name`, where it came from, and how many runs it rests on when it came
    /// from the history. The history widens the static default, never narrows it.
    pub fn pick(&self, name: &str) -> (f64, ToleranceSource, Option<usize>) {
        if let Some(t) = self.flag.get(name) {
            return (*t, ToleranceSource::Flag, None);
        }
        if let Some(t) = self.config.get(name) {
            return (*t, ToleranceSource::Config, None);
        }
        let default = default_tolerance(name);
        match self.history.get(name) {
            Some(h) if h.spread > default => (h.spread, ToleranceSource::History, Some(h.runs)),
            _ => (default, ToleranceSource::Default, None),
        }
    }
}

/// The fewest earlier runs whose spread can widen a default tolerance.
pub const HISTORY_MIN_RUNS: usize = 3;

/// The most earlier runs (the newest) whose spread is looked at.
pub const HISTORY_MAX_RUNS: usize = 10;

/// How far apart a figure has been across `values`, earlier runs of the same name: the
/// largest relative increase between any two of them, `max / min - 1`; `None` with fewer than
/// [`HISTORY_MIN_RUNS`] values or a smallest value of 0.
///
/// Why this measure: it is exactly the relative change a comparison would have computed had
/// the slowest of those runs been compared with the quickest, so a change no larger than what
/// identical runs already showed is not flagged. A robust scale (MAD / median) would ignore
/// one unusual run, but over 3 to 10 runs it rests on one or two values and is often near 0,
/// which is the false failure this is here to prevent (an identical test suite rerun using
/// 16.8% more CPU against a 10% default). The cost is that one outlier run widens the
/// tolerance until it ages out of the last [`HISTORY_MAX_RUNS`]; runs that failed or were
/// interrupted are left out by the caller for that reason.
pub fn history_spread(values: &[f64]) -> Option<f64> {
    if values.len() < HISTORY_MIN_RUNS || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // Computed as a comparison computes a relative change, so equal cases stay equal.
    (min > 0.0).then(|| (max - min) / min)
}

/// The spread of every figure over `runs` (earlier runs of one name, any order): each figure
/// present in at least [`HISTORY_MIN_RUNS`] of them.
pub fn history_tolerances(runs: &[Report]) -> BTreeMap<String, Spread> {
    let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in runs {
        for (name, (v, _)) in figures(r) {
            values.entry(name).or_default().push(v);
        }
    }
    values
        .into_iter()
        .filter_map(|(name, vs)| {
            let spread = history_spread(&vs)?;
            Some((
                name,
                Spread {
                    spread,
                    runs: vs.len(),
                },
            ))
        })
        .collect()
}

impl RunLabel {
    /// Labels `report` as `label`.
    pub fn of(label: &str, report: &Report) -> Self {
        Self {
            label: label.to_owned(),
            command: report.command_line(),
            started_at: report.started_at.clone(),
            git_commit: report.host.git_commit.clone(),
            runs: Vec::new(),
        }
    }
}

/// Pure: a report whose figures are the medians of `reports`' (wall time, each total every
/// report has, each latency percentile), the rest the first report's: a baseline of several
/// runs, steadier than one. `None` without reports.
pub fn median_report(reports: &[Report]) -> Option<Report> {
    fn median(mut v: Vec<u64>) -> u64 {
        v.sort_unstable();
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            v[n / 2 - 1] / 2 + v[n / 2] / 2 + (v[n / 2 - 1] % 2 + v[n / 2] % 2) / 2
        }
    }
    let mut out = reports.first()?.clone();
    out.wall_time_ns = median(reports.iter().map(|r| r.wall_time_ns).collect());
    out.totals = out
        .totals
        .iter()
        .filter_map(|(name, total)| {
            let all: Vec<&Total> = reports
                .iter()
                .map(|r| r.totals.get(name))
                .collect::<Option<_>>()?;
            let total = match total {
                Total::Value(_) => Total::Value(median(
                    all.iter()
                        .map(|t| match t {
                            Total::Value(v) => Some(*v),
                            Total::Latency(_) => None,
                        })
                        .collect::<Option<_>>()?,
                )),
                Total::Latency(first) => {
                    let ls: Vec<_> = all
                        .iter()
                        .map(|t| match t {
                            Total::Latency(l) => Some(l),
                            Total::Value(_) => None,
                        })
                        .collect::<Option<_>>()?;
                    let of = |f: fn(&crate::measure::model::LatencySummary) -> u64| {
                        median(ls.iter().map(|l| f(l)).collect())
                    };
                    Total::Latency(crate::measure::model::LatencySummary {
                        count: of(|l| l.count),
                        sum_ns: of(|l| l.sum_ns),
                        p50_ns: of(|l| l.p50_ns),
                        p90_ns: of(|l| l.p90_ns),
                        p99_ns: of(|l| l.p99_ns),
                        max_ns: of(|l| l.max_ns),
                        relative_error: first.relative_error,
                        // A median has no histogram of its own.
                        buckets: Vec::new(),
                    })
                }
            };
            Some((name.clone(), total))
        })
        .collect();
    Some(out)
}

/// Compares `new` against `base`, each figure with the tolerance [`Tolerances::pick`] gives it.
pub fn compare(base: (&str, &Report), new: (&str, &Report), tolerances: &Tolerances) -> Comparison {
    let b = figures(base.1);
    let n = figures(new.1);
    let changes: Vec<Change> = b
        .iter()
        .filter_map(|(name, (bv, kind))| {
            let (nv, _) = n.get(name)?;
            let (tolerance, tolerance_source, tolerance_runs) = tolerances.pick(name);
            let relative = (*bv != 0.0).then(|| (nv - bv) / bv);
            let floor = noise_floor(name, *kind);
            Some(Change {
                metric: name.clone(),
                base: *bv,
                new: *nv,
                absolute: nv - bv,
                relative,
                tolerance,
                tolerance_source,
                tolerance_runs,
                noise_floor: floor,
                regression: relative.is_some_and(|r| r > tolerance) && nv - bv >= floor,
                base_text: kind.format(*bv),
                new_text: kind.format(*nv),
            })
        })
        .collect();
    let (functions, stack_changes) = match (&base.1.profile, &new.1.profile) {
        (Some(b), Some(n)) => (
            function_shifts(b, n, FUNCTION_SHIFTS),
            stack_changes(b, n, STACK_CHANGES),
        ),
        _ => (Vec::new(), Vec::new()),
    };
    Comparison {
        base: RunLabel::of(base.0, base.1),
        new: RunLabel::of(new.0, new.1),
        regressions: changes.iter().filter(|c| c.regression).count(),
        changes,
        functions,
        stack_changes,
    }
}

/// Stacks a comparison keeps for its differential flame graph at most.
const STACK_CHANGES: usize = 5_000;

/// Each stack's CPU samples in `base` (scaled to `new`'s total, so widths compare shares) and
/// in `new`: the `n` with the most in either.
pub fn stack_changes(base: &Profile, new: &Profile, n: usize) -> Vec<StackChange> {
    let scale = if base.samples == 0 {
        0.0
    } else {
        new.samples as f64 / base.samples as f64
    };
    let mut both: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for s in &base.stacks {
        both.entry(&s.stack).or_default().0 += (s.samples as f64 * scale).round() as u64;
    }
    for s in &new.stacks {
        both.entry(&s.stack).or_default().1 += s.samples;
    }
    let mut out: Vec<StackChange> = both
        .into_iter()
        .filter(|(_, (b, n))| *b > 0 || *n > 0)
        .map(|(stack, (base, new))| StackChange {
            stack: stack.to_owned(),
            base,
            new,
        })
        .collect();
    out.sort_by(|a, b| {
        b.base
            .max(b.new)
            .cmp(&a.base.max(a.new))
            .then(a.stack.cmp(&b.stack))
    });
    out.truncate(n);
    out
}

/// Whether `shift` is more than [`MIN_SHIFT_Z`] standard errors, with `n1` and `n2` samples.
fn beyond_chance(shift: &FunctionShift, n1: u64, n2: u64) -> bool {
    let (n1, n2) = (n1 as f64, n2 as f64);
    if n1 == 0.0 || n2 == 0.0 {
        return false;
    }
    let pooled = (shift.base_share * n1 + shift.new_share * n2) / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    se > 0.0 && (shift.new_share - shift.base_share).abs() / se >= MIN_SHIFT_Z
}

/// Functions a comparison names at most.
const FUNCTION_SHIFTS: usize = 10;

/// A change of a function's share smaller than this (percentage points) is not named.
const MIN_SHIFT_POINTS: f64 = 1.0;

/// How many standard errors a change of share must be to be named: with few samples, a
/// function's share moves by chance (a two-proportion z-test, the shares pooled).
const MIN_SHIFT_Z: f64 = 3.0;

/// The `n` functions whose own share of the samples changed most between two profiles, by at
/// least [`MIN_SHIFT_POINTS`] and beyond chance ([`MIN_SHIFT_Z`]): those that grew first, the
/// most grown first, then those that shrank.
pub fn function_shifts(base: &Profile, new: &Profile, n: usize) -> Vec<FunctionShift> {
    let shares = |p: &Profile| -> BTreeMap<String, f64> {
        crate::profile::top_functions(&p.stacks, p.samples, usize::MAX)
            .into_iter()
            .filter(|f| f.self_samples > 0)
            .map(|f| (f.function, f.self_share))
            .collect()
    };
    let (b, nw) = (shares(base), shares(new));
    let mut shifts: Vec<FunctionShift> = b
        .keys()
        .chain(nw.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|f| FunctionShift {
            function: f.clone(),
            base_share: b.get(f).copied().unwrap_or(0.0),
            new_share: nw.get(f).copied().unwrap_or(0.0),
        })
        .filter(|s| s.change_points().abs() >= MIN_SHIFT_POINTS)
        .filter(|s| beyond_chance(s, base.samples, new.samples))
        .collect();
    // The grown ones first, then the shrunk ones; each the largest move first.
    shifts.sort_by(|x, y| {
        let (dx, dy) = (x.change_points(), y.change_points());
        (dx < 0.0)
            .cmp(&(dy < 0.0))
            .then(dy.abs().total_cmp(&dx.abs()))
    });
    shifts.truncate(n);
    shifts
}

impl Comparison {
    /// Where the tolerances came from, in one line: `tolerances: 20 default, 5 from the history
    /// of 7 runs, 1 from config, 1 from --tolerance`.
    pub fn tolerance_sources(&self) -> String {
        let count = |s: ToleranceSource| {
            self.changes
                .iter()
                .filter(|c| c.tolerance_source == s)
                .count()
        };
        let runs = self
            .changes
            .iter()
            .filter_map(|c| c.tolerance_runs)
            .max()
            .unwrap_or(0);
        let parts: Vec<String> = [
            (ToleranceSource::Default, "default".to_owned()),
            (
                ToleranceSource::History,
                format!("from the history of {runs} runs"),
            ),
            (ToleranceSource::Config, "from config".to_owned()),
            (ToleranceSource::Flag, "from --tolerance".to_owned()),
        ]
        .into_iter()
        .filter_map(|(s, text)| {
            let n = count(s);
            (n > 0).then(|| format!("{n} {text}"))
        })
        .collect();
        format!("tolerances: {}", parts.join(", "))
    }
}

/// One figure across runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrendLine {
    /// Figure name.
    pub metric: String,
    /// `(run id, value)`, oldest first.
    pub values: Vec<(i64, f64)>,
    /// Least-squares slope per run.
    pub slope_per_run: f64,
    /// The run where it changed most from the one before, and the relative change.
    pub biggest_change: Option<(i64, f64)>,
}

/// A trend report over the last runs of one name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trend {
    /// The name.
    pub name: String,
    /// Run ids, oldest first.
    pub runs: Vec<i64>,
    /// Each figure present in every run.
    pub lines: Vec<TrendLine>,
}

/// Each figure's series across `runs` (oldest first), its slope, and where it moved most.
pub fn trend(name: &str, runs: &[(i64, Report)]) -> Trend {
    let figs: Vec<(i64, Figures)> = runs.iter().map(|(id, r)| (*id, figures(r))).collect();
    let names: Vec<String> = figs
        .first()
        .map(|(_, f)| {
            f.keys()
                .filter(|k| figs.iter().all(|(_, g)| g.contains_key(*k)))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let lines = names
        .into_iter()
        .map(|metric| {
            let values: Vec<(i64, f64)> = figs.iter().map(|(id, f)| (*id, f[&metric].0)).collect();
            let xs: Vec<(u64, f64)> = values
                .iter()
                .enumerate()
                .map(|(i, (_, v))| (i as u64 * 1_000_000_000, *v))
                .collect();
            let biggest_change = values
                .windows(2)
                .filter(|w| w[0].1 != 0.0)
                .map(|w| (w[1].0, (w[1].1 - w[0].1) / w[0].1))
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()));
            TrendLine {
                metric,
                slope_per_run: crate::measure::model::slope(&xs),
                biggest_change,
                values,
            }
        })
        .collect();
    Trend {
        name: name.to_owned(),
        runs: runs.iter().map(|(id, _)| *id).collect(),
        lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(stacks: &[(&str, u64)]) -> Profile {
        let stacks: Vec<crate::profile::FoldedStack> = stacks
            .iter()
            .map(|(s, n)| crate::profile::FoldedStack {
                stack: (*s).to_owned(),
                samples: *n,
            })
            .collect();
        Profile {
            clock: "cpu-clock".into(),
            frequency_hz: 99,
            user_stack_bytes: 16_384,
            samples: stacks.iter().map(|s| s.samples).sum(),
            lost: 0,
            stacks_not_kept: 0,
            unwinding: Default::default(),
            top_functions: Vec::new(),
            stacks,
            off_cpu: None,
            faults: None,
            block: None,
            unavailable: Default::default(),
            modules: Vec::new(),
        }
    }

    #[test]
    fn the_functions_that_grew_come_first_and_small_moves_are_left_out() {
        let base = profile(&[("p;main;a", 700), ("p;main;b", 300)]);
        let new = profile(&[
            ("p;main;a", 400),
            ("p;main;b", 300),
            ("p;main;c", 250),
            ("p;main;d", 45),
            ("p;main;e", 5),
        ]);
        let shifts = function_shifts(&base, &new, 10);
        let names: Vec<&str> = shifts.iter().map(|s| s.function.as_str()).collect();
        // c grew 25 points, d 4.5 (beyond chance with 1,000 samples each), a shrank 30; b did
        // not move; e's 0.5 point is too small to name.
        assert_eq!(names, ["c", "d", "a"], "{shifts:#?}");
        assert!((shifts[0].change_points() - 25.0).abs() < 1e-9);
        assert!((shifts[2].change_points() + 30.0).abs() < 1e-9);
        assert_eq!(function_shifts(&base, &base, 10), vec![]);
        // With ten times fewer samples, d's 4 points are within chance.
        let small = |p: &Profile| {
            let stacks: Vec<(String, u64)> = p
                .stacks
                .iter()
                .map(|s| (s.stack.clone(), s.samples / 10))
                .collect();
            let refs: Vec<(&str, u64)> = stacks.iter().map(|(s, n)| (s.as_str(), *n)).collect();
            profile(&refs)
        };
        let names: Vec<String> = function_shifts(&small(&base), &small(&new), 10)
            .into_iter()
            .map(|s| s.function)
            .collect();
        assert_eq!(names, ["c", "a"]);
    }

    #[test]
    fn noise_below_the_floor_is_not_a_regression() {
        let base = report(1_000_000, 2_000_000_000);
        let new = report(3_000_000, 2_000_000_000); // +200% but only 2 ms of CPU
        let c = compare(("base", &base), ("new", &new), &Tolerances::default());
        assert_eq!(c.regressions, 0, "{c:#?}");
    }

    fn report(cpu: u64, wall: u64) -> Report {
        let mut r: Report = serde_json::from_value(serde_json::json!({
            "schema_version": 1, "command": ["x"], "exit_code": 0,
            "started_at": "2026-01-01T00:00:00Z", "wall_time_ns": wall,
            "cgroup": {"path": "/x", "id": 1},
            "totals": {"cpu_time_ns": cpu, "block_write_bytes": 1000},
            "kernel": {}, "unavailable": [], "dropped": {}
        }))
        .unwrap();
        r.verdict = crate::judge::verdict::Verdict::None;
        r
    }

    #[test]
    fn a_window_of_runs_is_their_medians() {
        let mut runs = vec![
            report(1_000, 40),
            report(5_000, 10),
            report(3_000, 20),
            report(9, 30),
        ];
        // A figure one run lacks is left out.
        runs[3].totals.remove("block_write_bytes");
        let m = median_report(&runs[..3]).unwrap();
        assert_eq!(figures(&m)["cpu_time_ns"].0, 3_000.0);
        assert_eq!(m.wall_time_ns, 20);
        let m = median_report(&runs).unwrap();
        assert_eq!(m.wall_time_ns, 25, "even: the mean of the middle two");
        assert_eq!(figures(&m)["cpu_time_ns"].0, 2_000.0);
        assert!(!m.totals.contains_key("block_write_bytes"));
        assert!(median_report(&[]).is_none());
    }

    #[test]
    fn identical_runs_have_no_regression() {
        let a = report(1_000_000_000, 2_000_000_000);
        let c = compare(("a", &a), ("b", &a.clone()), &Tolerances::default());
        assert_eq!(c.regressions, 0, "{c:#?}");
        assert!(c.changes.iter().all(|ch| ch.absolute == 0.0));
        assert_eq!(c.changes.len(), 3, "wall time, cpu time, bytes");
    }

    #[test]
    fn a_planted_regression_is_flagged_and_noise_is_not() {
        let base = report(1_000_000_000, 2_000_000_000);
        // CPU time up 50% (a regression), wall time up 10% (inside its 25% tolerance).
        let new = report(1_500_000_000, 2_200_000_000);
        let c = compare(("base", &base), ("new", &new), &Tolerances::default());
        let cpu = c
            .changes
            .iter()
            .find(|ch| ch.metric == "cpu_time_ns")
            .unwrap();
        assert!(
            cpu.regression && (cpu.relative.unwrap() - 0.5).abs() < 1e-9,
            "{cpu:#?}"
        );
        let wall = c
            .changes
            .iter()
            .find(|ch| ch.metric == "wall_time")
            .unwrap();
        assert!(!wall.regression, "{wall:#?}");
        assert_eq!(c.regressions, 1);
        // A stricter tolerance for wall time catches it.
        let strict = Tolerances::from_flags([("wall_time".to_owned(), 0.05)]);
        assert_eq!(
            compare(("base", &base), ("new", &new), &strict).regressions,
            2
        );
    }

    #[test]
    fn trends_find_slope_and_biggest_change() {
        let runs: Vec<(i64, Report)> = [1u64, 2, 3, 10]
            .iter()
            .enumerate()
            .map(|(i, s)| (i as i64 + 1, report(s * 1_000_000_000, 1)))
            .collect();
        let t = trend("build", &runs);
        let cpu = t.lines.iter().find(|l| l.metric == "cpu_time_ns").unwrap();
        assert_eq!(cpu.values.len(), 4);
        assert!(cpu.slope_per_run > 0.0);
        assert_eq!(
            cpu.biggest_change.unwrap().0,
            4,
            "the jump from 3 s to 10 s"
        );
    }

    #[test]
    fn tolerance_names_are_figures_and_unknown_ones_are_refused() {
        assert_eq!(
            parse_tolerance("cpu_time=25%"),
            Ok(("cpu_time_ns".into(), 0.25))
        );
        assert_eq!(
            parse_tolerance("cpu_time_ns=25"),
            Ok(("cpu_time_ns".into(), 0.25))
        );
        assert_eq!(
            parse_tolerance("wall_time_ns=40%"),
            Ok(("wall_time".into(), 0.4))
        );
        assert_eq!(
            parse_tolerance("memory_peak=5%"),
            Ok(("memory_peak_bytes".into(), 0.05))
        );
        assert_eq!(
            parse_tolerance("block_write_latency_p99=300%"),
            Ok(("block_write_latency_p99".into(), 3.0))
        );
        for bad in ["cpu_tme=25%", "block_write_latency=5%", "=5%", "cpu_time"] {
            assert!(parse_tolerance(bad).is_err(), "{bad} was accepted");
        }
        assert!(
            parse_tolerance("cpu_time=lots")
                .unwrap_err()
                .contains("percentage")
        );
        // Every figure a comparison of two full reports holds can be given a tolerance.
        for name in figure_names() {
            assert_eq!(figure_name(&name).as_deref(), Ok(name.as_str()));
        }
    }

    #[test]
    fn flag_beats_config_beats_history_beats_default() {
        let base = report(1_000_000_000, 2_000_000_000);
        let new = report(1_168_000_000, 2_000_000_000); // +16.8% CPU
        let source = |t: &Tolerances| {
            let c = compare(("base", &base), ("new", &new), t);
            let cpu = c
                .changes
                .into_iter()
                .find(|ch| ch.metric == "cpu_time_ns")
                .unwrap();
            (
                cpu.tolerance,
                cpu.tolerance_source,
                cpu.tolerance_runs,
                cpu.regression,
            )
        };
        let mut t = Tolerances::default();
        assert_eq!(source(&t), (0.10, ToleranceSource::Default, None, true));
        // A history steadier than the default leaves the default.
        t.history.insert(
            "cpu_time_ns".into(),
            Spread {
                spread: 0.02,
                runs: 4,
            },
        );
        assert_eq!(source(&t), (0.10, ToleranceSource::Default, None, true));
        t.history.insert(
            "cpu_time_ns".into(),
            Spread {
                spread: 0.2,
                runs: 4,
            },
        );
        assert_eq!(source(&t), (0.2, ToleranceSource::History, Some(4), false));
        t.config.insert("cpu_time_ns".into(), 0.15);
        assert_eq!(source(&t), (0.15, ToleranceSource::Config, None, true));
        t.flag.insert("cpu_time_ns".into(), 0.5);
        assert_eq!(source(&t), (0.5, ToleranceSource::Flag, None, false));
        let c = compare(("base", &base), ("new", &new), &t);
        let text = c.tolerance_sources();
        assert!(
            text.contains("1 from --tolerance") && text.contains("2 default"),
            "{text}"
        );
    }

    #[test]
    fn history_spread_is_the_largest_change_between_two_runs() {
        assert_eq!(history_spread(&[1.0, 1.1]), None, "two runs are too few");
        let s = history_spread(&[1.0, 1.168, 1.05]).unwrap();
        assert!((s - 0.168).abs() < 1e-9, "{s}");
        assert_eq!(
            history_spread(&[0.0, 1.0, 2.0]),
            None,
            "no relative spread from 0"
        );
        assert_eq!(history_spread(&[5.0, 5.0, 5.0]), Some(0.0));
        let runs: Vec<Report> = [1_000_000_000u64, 1_100_000_000, 1_200_000_000]
            .iter()
            .map(|cpu| report(*cpu, 2_000_000_000))
            .collect();
        let h = history_tolerances(&runs);
        let cpu = h["cpu_time_ns"];
        assert!((cpu.spread - 0.2).abs() < 1e-9 && cpu.runs == 3, "{cpu:?}");
        assert_eq!(h["wall_time"].spread, 0.0);
        assert!(history_tolerances(&runs[..2]).is_empty());
    }

    /// The README's table of default tolerances and noise floors, row by row, against
    /// [`default_tolerance`] and [`noise_floor`]; and every figure has a row.
    #[test]
    fn readme_tolerance_table_matches_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(&path).expect("reading the README");
        let header = "| figures | default tolerance | noise floor |";
        let rows: Vec<&str> = readme
            .lines()
            .skip_while(|l| l.trim() != header)
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .collect();
        assert!(rows.len() > 5, "no table under {header:?} in the README");
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for row in rows {
            let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 3, "{row}");
            // `a`, `b`: `_p50`, `_max` stands for a_p50, a_max, b_p50, b_max.
            let names: Vec<&str> = cells[0].split('`').skip(1).step_by(2).collect();
            let (suffixes, bases): (Vec<&str>, Vec<&str>) =
                names.iter().partition(|n| n.starts_with('_'));
            let figures: Vec<String> = if suffixes.is_empty() {
                bases.iter().map(|b| (*b).to_owned()).collect()
            } else {
                bases
                    .iter()
                    .flat_map(|b| suffixes.iter().map(move |s| format!("{b}{s}")))
                    .collect()
            };
            let tolerance = parse_percent(cells[1].trim_start_matches('+')).unwrap() / 100.0;
            for figure in figures {
                let kind = figure_kind(&figure);
                let floor = match kind {
                    Kind::Time => crate::units::parse_duration(cells[2]).unwrap().as_nanos() as f64,
                    Kind::Bytes => crate::units::parse_bytes(cells[2]).unwrap() as f64,
                    _ => cells[2].parse::<f64>().unwrap(),
                };
                assert!(
                    (default_tolerance(&figure) - tolerance).abs() < 1e-9,
                    "README: {figure} +{}%, code: +{}%",
                    tolerance * 100.0,
                    default_tolerance(&figure) * 100.0
                );
                assert_eq!(
                    noise_floor(&figure, kind),
                    floor,
                    "README: {figure} noise floor {}",
                    cells[2]
                );
                assert!(seen.insert(figure.clone(), row).is_none(), "{figure} twice");
            }
        }
        for figure in figure_names() {
            assert!(
                seen.contains_key(&figure),
                "{figure} has no row in the README"
            );
        }
        assert_eq!(seen.len(), figure_names().count(), "{seen:#?}");
    }
}
