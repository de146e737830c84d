//! SLO objectives: `"METRIC OP VALUE"`, parsed, and measured on a run's figures.
//!
//! METRIC is any total (`cpu_time_ns`, or without its unit suffix: `cpu_time`, `memory_peak`),
//! `wall_time`, a latency percentile (`block_write_latency_p99`, `_p50`, `_p90`, `_max`,
//! `_count`), or a derived figure: `cpu_percent` (average, % of one core), `cpu_percent_peak`
//! (busiest interval), `<counter>_per_sec` (average rate over the run). OP is one of
//! `< <= > >= ==`. VALUE is written in the metric's unit: `15s`, `20ms`, `100MB`, `1GiB`, `80%`,
//! or a plain number (seconds for times, bytes for sizes).
//!
//! It does not know the report: [`Objective::measure`] takes the figures it reads, so that
//! `config` can parse objectives without depending on `report`.

use std::{collections::BTreeMap, fmt};

use crate::{
    measure::collect::Total,
    measure::model::Aggregate,
    metric::{Kind, Latency, Metric, Unit},
    units::truncate_quote,
};

/// A comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
}

impl Op {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Eq => a == b,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
        }
    }
}

/// Where a metric's value comes from in a report.
#[derive(Clone, Debug, PartialEq)]
enum Source {
    Total(&'static str),
    Latency(Latency, &'static str),
    WallTime,
    CpuPercent,
    CpuPercentPeak,
    Rate(&'static str),
}

/// A parsed objective.
#[derive(Clone, Debug, PartialEq)]
pub struct Objective {
    /// The metric as written.
    pub metric: String,
    /// The comparison.
    pub op: Op,
    /// The target, in the metric's base unit (ns, bytes, count, %).
    pub target: f64,
    /// The unit.
    pub kind: Kind,
    source: Source,
}

/// Resolves a metric name of an objective.
fn resolve(name: &str) -> Option<(Source, Kind)> {
    match name {
        "wall_time" | "wall_time_ns" => return Some((Source::WallTime, Kind::Time)),
        "cpu_percent" => return Some((Source::CpuPercent, Kind::Percent)),
        "cpu_percent_peak" => return Some((Source::CpuPercentPeak, Kind::Percent)),
        _ => {}
    }
    for m in Metric::ALL {
        let full = m.name();
        let short = full
            .strip_suffix("_ns")
            .or_else(|| full.strip_suffix("_bytes"));
        if name == full || Some(name) == short {
            return Some((Source::Total(full), Kind::of(m.unit())));
        }
        if name.strip_suffix("_per_sec") == Some(full) && m.is_counter() {
            let kind = if m.unit() == Unit::Bytes {
                Kind::BytesPerSec
            } else {
                Kind::PerSec
            };
            return Some((Source::Rate(full), kind));
        }
    }
    for l in Latency::ALL {
        for (suffix, field, kind) in [
            ("_p50", "p50_ns", Kind::Time),
            ("_p90", "p90_ns", Kind::Time),
            ("_p99", "p99_ns", Kind::Time),
            ("_max", "max_ns", Kind::Time),
            ("_count", "count", Kind::Count),
        ] {
            if name.strip_suffix(suffix) == Some(l.name()) {
                return Some((Source::Latency(*l, field), kind));
            }
        }
    }
    None
}

impl Objective {
    /// Parses `"METRIC OP VALUE"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        // Quoted back in errors, cut short: an objective can be any length of untrusted text.
        let quoted = truncate_quote(text, 80);
        let ops = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("<", Op::Lt),
            (">", Op::Gt),
        ];
        let (at, symbol, op) = ops
            .iter()
            .filter_map(|(s, op)| text.find(s).map(|i| (i, *s, *op)))
            .min_by_key(|(i, s, _)| (*i, std::cmp::Reverse(s.len())))
            .ok_or_else(|| {
                format!("{quoted} has no comparison; write \"METRIC OP VALUE\", e.g. \"wall_time <= 15s\"")
            })?;
        let metric = text[..at].trim();
        let value = text[at + symbol.len()..].trim();
        if metric.is_empty() || value.is_empty() {
            return Err(format!(
                "{quoted}: write \"METRIC OP VALUE\", e.g. \"wall_time <= 15s\""
            ));
        }
        let (source, kind) = resolve(metric).ok_or_else(|| {
            format!(
                "unknown metric {} in {quoted}; use a total (e.g. cpu_time, memory_peak, \
                 net_tx_bytes), wall_time, cpu_percent, a latency percentile (e.g. \
                 block_write_latency_p99) or a rate (e.g. block_write_bytes_per_sec)",
                truncate_quote(metric, 40)
            )
        })?;
        let target = kind.parse(value).map_err(|e| format!("in {quoted}: {e}"))?;
        Ok(Self {
            metric: metric.to_owned(),
            op,
            target,
            kind,
            source,
        })
    }

    /// The metric's value among a run's figures (a report's `totals`, `wall_time_ns` and
    /// `aggregates`), or `None` when it was not measured.
    pub fn measure(
        &self,
        totals: &BTreeMap<String, Total>,
        wall_time_ns: u64,
        aggregates: &BTreeMap<String, Aggregate>,
    ) -> Option<f64> {
        let total = |name: &str| match totals.get(name)? {
            Total::Value(v) => Some(*v as f64),
            Total::Latency(_) => None,
        };
        let wall_s = wall_time_ns as f64 / 1e9;
        match &self.source {
            Source::Total(name) => total(name),
            Source::WallTime => Some(wall_time_ns as f64),
            Source::CpuPercent => {
                (wall_s > 0.0).then(|| total("cpu_time_ns").map(|c| c / 1e9 / wall_s * 100.0))?
            }
            Source::CpuPercentPeak => aggregates.get("cpu_percent").map(|a| a.peak),
            Source::Rate(name) => (wall_s > 0.0).then(|| total(name).map(|v| v / wall_s))?,
            Source::Latency(l, field) => match totals.get(l.name())? {
                Total::Latency(s) => Some(match *field {
                    "p50_ns" => s.p50_ns,
                    "p90_ns" => s.p90_ns,
                    "p99_ns" => s.p99_ns,
                    "max_ns" => s.max_ns,
                    _ => s.count,
                } as f64),
                Total::Value(_) => None,
            },
        }
    }

    /// Whether `value` meets the objective.
    pub fn holds(&self, value: f64) -> bool {
        self.op.holds(value, self.target)
    }

    /// The target as written for people, e.g. `<= 15.000 s`.
    pub fn target_text(&self) -> String {
        format!("{} {}", self.op.symbol(), self.kind.format(self.target))
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.metric, self.target_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_objectives_parse() {
        let o = Objective::parse("wall_time <= 15s").unwrap();
        assert_eq!((o.op, o.target, o.kind), (Op::Le, 15e9, Kind::Time));
        let o = Objective::parse("memory_peak_bytes <= 100MB").unwrap();
        assert_eq!((o.target, o.kind), (100e6, Kind::Bytes));
        let o = Objective::parse("memory_peak <= 100MiB").unwrap();
        assert_eq!(o.target, (100u64 << 20) as f64);
        let o = Objective::parse("block_write_latency_p99 <= 20ms").unwrap();
        assert_eq!((o.target, o.kind), (20e6, Kind::Time));
        let o = Objective::parse("cpu_time <= 40s").unwrap();
        assert_eq!(o.source, Source::Total("cpu_time_ns"));
        let o = Objective::parse("net_tx_bytes < 1GiB").unwrap();
        assert_eq!((o.op, o.target), (Op::Lt, (1u64 << 30) as f64));
        let o = Objective::parse("cpu_percent>=50%").unwrap();
        assert_eq!((o.op, o.target, o.kind), (Op::Ge, 50.0, Kind::Percent));
        let o = Objective::parse("block_write_bytes_per_sec < 10MiB/s").unwrap();
        assert_eq!(
            (o.target, o.kind),
            ((10u64 << 20) as f64, Kind::BytesPerSec)
        );
        let o = Objective::parse("processes_forked == 3").unwrap();
        assert_eq!((o.op, o.target), (Op::Eq, 3.0));
        let o = Objective::parse("wall_time < 2").unwrap();
        assert_eq!(o.target, 2e9, "a plain number of seconds");
    }

    #[test]
    fn bad_objectives_say_what_is_wrong() {
        assert!(
            Objective::parse("wall_time 15s")
                .unwrap_err()
                .contains("no comparison")
        );
        for bad in [
            "page_faults_major >= -1",
            "processes_forked <= inf",
            "cpu_percent >= NaN%",
            "cpu_percent >= -5",
        ] {
            assert!(Objective::parse(bad).is_err(), "{bad} was accepted");
        }
        assert!(
            Objective::parse("speed <= 3")
                .unwrap_err()
                .contains("unknown metric \"speed\"")
        );
        assert!(
            Objective::parse("wall_time <= soon")
                .unwrap_err()
                .contains("soon")
        );
        assert!(
            Objective::parse("memory_peak <= lots")
                .unwrap_err()
                .contains("lots")
        );
        assert!(Objective::parse("<= 3s").is_err());
        assert!(Objective::parse("wall_time <=").is_err());
    }

    #[test]
    fn holds_compares_with_the_operator() {
        let o = Objective::parse("wall_time <= 15s").unwrap();
        assert!(o.holds(15e9));
        assert!(!o.holds(15e9 + 1.0));
        let o = Objective::parse("cpu_percent > 50").unwrap();
        assert!(!o.holds(50.0));
        assert!(o.holds(50.1));
        assert_eq!(o.target_text(), "> 50.0%");
    }
}
