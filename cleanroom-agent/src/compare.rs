//! Comparing runs: every metric and percentile of a base and a new run, with absolute and
//! relative change, and regressions flagged beyond a per-metric tolerance; and trends over the
//! last N runs of one name.
//!
//! Default tolerances are set with CI noise in mind: CPU time, bytes and fault counts are
//! steady between identical runs, wall time and latencies much less so.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{collect::Total, metric::Latency, objective::Kind, report::Report};

/// A run's figures by name, each with its kind.
pub type Figures = BTreeMap<String, (f64, Kind)>;

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
                let kind = if name.ends_with("_ns") {
                    Kind::Time
                } else if name.ends_with("_bytes") {
                    Kind::Bytes
                } else {
                    Kind::Count
                };
                out.insert(name.clone(), (*v as f64, kind));
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

/// The default tolerance (relative increase allowed) of a figure.
pub fn default_tolerance(name: &str) -> f64 {
    let latency = Latency::ALL.iter().any(|l| name.starts_with(l.name()));
    match name {
        "cpu_time_ns" => 0.10,
        "wall_time" => 0.25,
        "memory_peak_bytes" => 0.10,
        "memory_current_bytes" => 0.50,
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

/// One figure compared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Figure name.
    pub metric: String,
    /// Value in the base run.
    pub base: f64,
    /// Value in the new run.
    pub new: f64,
    /// `new - base`.
    pub absolute: f64,
    /// `(new - base) / base`; absent when the base is 0.
    pub relative: Option<f64>,
    /// Increase allowed before it counts as a regression.
    pub tolerance: f64,
    /// Smallest absolute increase that can count (below it, differences are noise).
    pub noise_floor: f64,
    /// Whether it grew beyond the tolerance.
    pub regression: bool,
    /// Base value for people.
    pub base_text: String,
    /// New value for people.
    pub new_text: String,
}

/// Which run is which.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunLabel {
    /// How it was named on the command line (run id or file).
    pub label: String,
    /// Its command.
    pub command: String,
    /// When it started.
    pub started_at: String,
    /// Git commit, when known.
    pub git_commit: Option<String>,
}

impl RunLabel {
    /// Labels `report` as `label`.
    pub fn of(label: &str, report: &Report) -> Self {
        Self {
            label: label.to_owned(),
            command: report.command_line(),
            started_at: report.started_at.clone(),
            git_commit: report.host.git_commit.clone(),
        }
    }
}

/// A comparison of two runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The base run.
    pub base: RunLabel,
    /// The new run.
    pub new: RunLabel,
    /// Every figure present in both.
    pub changes: Vec<Change>,
    /// How many are regressions.
    pub regressions: usize,
}

/// Compares `new` against `base`. `tolerances` override the defaults by figure name.
pub fn compare(
    base: (&str, &Report),
    new: (&str, &Report),
    tolerances: &BTreeMap<String, f64>,
) -> Comparison {
    let b = figures(base.1);
    let n = figures(new.1);
    let changes: Vec<Change> = b
        .iter()
        .filter_map(|(name, (bv, kind))| {
            let (nv, _) = n.get(name)?;
            let tolerance = tolerances
                .get(name)
                .copied()
                .unwrap_or_else(|| default_tolerance(name));
            let relative = (*bv != 0.0).then(|| (nv - bv) / bv);
            let floor = noise_floor(name, *kind);
            Some(Change {
                metric: name.clone(),
                base: *bv,
                new: *nv,
                absolute: nv - bv,
                relative,
                tolerance,
                noise_floor: floor,
                regression: relative.is_some_and(|r| r > tolerance) && nv - bv >= floor,
                base_text: kind.format(*bv),
                new_text: kind.format(*nv),
            })
        })
        .collect();
    Comparison {
        base: RunLabel::of(base.0, base.1),
        new: RunLabel::of(new.0, new.1),
        regressions: changes.iter().filter(|c| c.regression).count(),
        changes,
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
                slope_per_run: crate::model::slope(&xs),
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

    #[test]
    fn noise_below_the_floor_is_not_a_regression() {
        let base = report(1_000_000, 2_000_000_000);
        let new = report(3_000_000, 2_000_000_000); // +200% but only 2 ms of CPU
        let c = compare(("base", &base), ("new", &new), &BTreeMap::new());
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
        r.verdict = "none".into();
        r
    }

    #[test]
    fn identical_runs_have_no_regression() {
        let a = report(1_000_000_000, 2_000_000_000);
        let c = compare(("a", &a), ("b", &a.clone()), &BTreeMap::new());
        assert_eq!(c.regressions, 0, "{c:#?}");
        assert!(c.changes.iter().all(|ch| ch.absolute == 0.0));
        assert_eq!(c.changes.len(), 3, "wall time, cpu time, bytes");
    }

    #[test]
    fn a_planted_regression_is_flagged_and_noise_is_not() {
        let base = report(1_000_000_000, 2_000_000_000);
        // CPU time up 50% (a regression), wall time up 10% (inside its 25% tolerance).
        let new = report(1_500_000_000, 2_200_000_000);
        let c = compare(("base", &base), ("new", &new), &BTreeMap::new());
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
        let strict = BTreeMap::from([("wall_time".to_owned(), 0.05)]);
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
}
