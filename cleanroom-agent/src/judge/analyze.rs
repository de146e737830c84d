//! Pure judgement of a run: thresholds (live and final), SLO verdicts, anomalies, insights.
//!
//! It reads a [`Report`] and produces the types of [`crate::judge::verdict`], which the report holds;
//! the report knows nothing of this module.

use std::{collections::BTreeMap, time::Duration};

use crate::{
    config::CleanroomConfig,
    judge::verdict::{
        ANOMALIES_KEPT, Anomaly, Event, EventKind, Insight, SloResult, Status, ThresholdResult,
        Verdict,
    },
    measure::collect::Total,
    measure::model::{LatencySummary, SeriesPoint},
    metric::Kind,
    output::report::Report,
};

/// Judges every SLO of `config` on `report`, with the objectives parsed when `config` was read.
pub fn judge_slos(config: &CleanroomConfig, report: &Report) -> Vec<SloResult> {
    config
        .slos
        .iter()
        .map(|slo| {
            let text = slo.objective.get_ref().clone();
            let phase = slo.phase.as_deref().map(|name| phase_figures(report, name));
            match &slo.parsed {
                Ok(o) => {
                    let measured = match &phase {
                        None => o.measure(&report.totals, report.wall_time_ns, &report.aggregates),
                        Some(None) => None,
                        Some(Some((totals, wall_time_ns))) => {
                            o.measure(totals, *wall_time_ns, &BTreeMap::new())
                        }
                    };
                    let unmeasured = match (&phase, &slo.phase) {
                        (Some(None), Some(name)) => format!("no phase {name:?} was marked"),
                        _ => "unavailable".to_owned(),
                    };
                    SloResult {
                        name: slo.name.clone(),
                        objective: text,
                        phase: slo.phase.clone(),
                        measured,
                        measured_text: measured.map_or(unmeasured, |v| o.kind.format(v)),
                        target_text: o.target_text(),
                        status: match measured {
                            Some(v) if o.holds(v) => Status::Pass,
                            Some(_) => Status::Fail,
                            None => Status::Unmeasured,
                        },
                    }
                }
                Err(e) => SloResult {
                    name: slo.name.clone(),
                    objective: text,
                    phase: slo.phase.clone(),
                    measured: None,
                    measured_text: e.clone(),
                    target_text: String::new(),
                    status: Status::Unmeasured,
                },
            }
        })
        .collect()
}

/// The totals and wall time of the phases named `name` of `report`, together (a phase marked
/// more than once counts each time); `None` when none was marked.
fn phase_figures(report: &Report, name: &str) -> Option<(BTreeMap<String, Total>, u64)> {
    let mut totals: BTreeMap<String, Total> = BTreeMap::new();
    let mut wall_time_ns = 0u64;
    let mut found = false;
    for phase in report.phases.iter().filter(|p| p.name == name) {
        found = true;
        wall_time_ns = wall_time_ns.saturating_add(phase.wall_time_ns);
        for (metric, total) in &phase.totals {
            if let Total::Value(v) = total {
                let sum = totals.entry(metric.clone()).or_insert(Total::Value(0));
                if let Total::Value(s) = sum {
                    *s = s.saturating_add(*v);
                }
            }
        }
    }
    found.then_some((totals, wall_time_ns))
}

/// A limit checked on a series as the run goes.
#[derive(Clone, Debug, PartialEq)]
pub struct ThresholdSpec {
    /// Config key (`performance_monitoring.thresholds.max_cpu_usage_percent`).
    pub name: String,
    /// Series name it applies to (`cpu_percent`), or `wall_time` / `io_write_bytes` for
    /// cumulative figures.
    pub series: String,
    /// The limit, in the series' unit.
    pub limit: f64,
    /// Unit, for messages.
    pub kind: Kind,
}

/// The thresholds `config` asks for. `max_container_startup_time` and `max_container_count`
/// are judged on the whole run's containers, not on samples, and come back in the second list
/// (see [`judge`]).
pub fn threshold_specs(config: &CleanroomConfig) -> (Vec<ThresholdSpec>, Vec<String>) {
    let t = &config.performance_monitoring.thresholds;
    let rl = &config.resource_limits;
    let mut specs = Vec::new();
    let mut add = |name: &str, series: &str, limit: Option<f64>, kind: Kind| {
        if let Some(limit) = limit {
            specs.push(ThresholdSpec {
                name: name.to_owned(),
                series: series.to_owned(),
                limit,
                kind,
            });
        }
    };
    let pt = "performance_monitoring.thresholds";
    add(
        &format!("{pt}.max_cpu_usage_percent"),
        "cpu_percent",
        t.max_cpu_usage_percent,
        Kind::Percent,
    );
    add(
        &format!("{pt}.max_memory_usage_bytes"),
        "memory_current_bytes",
        t.max_memory_usage_bytes.map(|b| b as f64),
        Kind::Bytes,
    );
    add(
        &format!("{pt}.max_test_execution_time"),
        "wall_time",
        t.max_test_execution_time.map(|d| d.as_nanos() as f64),
        Kind::Time,
    );
    add(
        &format!("{pt}.max_disk_read_bytes_per_sec"),
        "block_read_bytes_per_sec",
        t.max_disk_read_bytes_per_sec.map(|b| b as f64),
        Kind::BytesPerSec,
    );
    add(
        &format!("{pt}.max_disk_write_bytes_per_sec"),
        // What the run wrote, when it wrote it: on hosts without cgroup writeback the device
        // level sees only a sliver of a run's buffered writes.
        "io_write_bytes_per_sec",
        t.max_disk_write_bytes_per_sec.map(|b| b as f64),
        Kind::BytesPerSec,
    );
    add(
        &format!("{pt}.max_network_bytes_per_sec"),
        "net_bytes_per_sec",
        t.max_network_bytes_per_sec.map(|b| b as f64),
        Kind::BytesPerSec,
    );
    if rl.enable_resource_monitoring {
        let r = "resource_limits";
        add(
            &format!("{r}.max_cpu_usage_percent"),
            "cpu_percent",
            rl.max_cpu_usage_percent,
            Kind::Percent,
        );
        add(
            &format!("{r}.max_memory_usage_bytes"),
            "memory_current_bytes",
            rl.max_memory_usage_bytes.map(|b| b as f64),
            Kind::Bytes,
        );
        add(
            &format!("{r}.max_disk_usage_bytes"),
            "io_write_bytes",
            rl.max_disk_usage_bytes.map(|b| b as f64),
            Kind::Bytes,
        );
        add(
            &format!("{r}.max_network_bandwidth_bytes_per_sec"),
            "net_bytes_per_sec",
            rl.max_network_bandwidth_bytes_per_sec.map(|b| b as f64),
            Kind::BytesPerSec,
        );
    }
    let not_applicable = t
        .max_container_startup_time
        .map(|_| format!("{pt}.max_container_startup_time"))
        .into_iter()
        .chain(
            rl.max_container_count
                .map(|_| "resource_limits.max_container_count".to_owned()),
        )
        .collect();
    (specs, not_applicable)
}

/// `max_container_startup_time` (`limit`) judged on the start-up times of the run's containers
/// (create → running); not applicable without any.
fn container_startup(name: String, limit: Option<Duration>, startups: &[u64]) -> ThresholdResult {
    let limit_ns = limit.map_or(0, |l| u64::try_from(l.as_nanos()).unwrap_or(u64::MAX));
    let peak = startups.iter().copied().max();
    let breaches = startups.iter().filter(|s| **s > limit_ns).count();
    ThresholdResult {
        name,
        metric: "container_startup_time".into(),
        limit: limit_ns as f64,
        limit_text: limit.map_or("-".into(), |_| human(limit_ns)),
        peak: peak.map(|p| p as f64),
        peak_text: peak.map_or("n/a (no containers)".into(), |p| {
            format!("{} (slowest of {})", human(p), startups.len())
        }),
        breaches: u32::try_from(breaches).unwrap_or(u32::MAX),
        status: match peak {
            None => Status::NotApplicable,
            Some(_) if breaches > 0 => Status::Fail,
            Some(_) => Status::Pass,
        },
    }
}

/// `max_container_count` (`limit`) judged on how many containers the run started; not
/// applicable without any (none started, or none could be followed).
fn container_count(name: String, limit: u64, count: usize) -> ThresholdResult {
    let over = count as u64 > limit;
    ThresholdResult {
        name,
        metric: "container_count".into(),
        limit: limit as f64,
        limit_text: limit.to_string(),
        peak: (count > 0).then_some(count as f64),
        peak_text: if count > 0 {
            count.to_string()
        } else {
            "n/a (no containers)".into()
        },
        breaches: u32::from(over),
        status: match (count, over) {
            (0, _) => Status::NotApplicable,
            (_, true) => Status::Fail,
            _ => Status::Pass,
        },
    }
}

/// The event of `spec` breached (`kind` `ThresholdBreached`) or cleared by `v` at `t_ns`.
fn threshold_event(spec: &ThresholdSpec, kind: EventKind, t_ns: u64, v: f64) -> Event {
    let (verb, relation) = match kind {
        EventKind::ThresholdCleared => ("back to", "within"),
        _ => ("is", "over"),
    };
    Event {
        t_ns,
        subject: spec.name.clone(),
        value: Some(v),
        limit: Some(spec.limit),
        message: format!(
            "{} {verb} {} {relation} the limit {} ({}) at {:.1}s",
            spec.series,
            spec.kind.format(v),
            spec.kind.format(spec.limit),
            spec.name,
            t_ns as f64 / 1e9
        ),
        kind,
    }
}

/// Checks thresholds as samples arrive, reporting each breach once and again when it clears.
#[derive(Debug, Default)]
pub struct ThresholdMonitor {
    specs: Vec<ThresholdSpec>,
    breached: Vec<bool>,
    breaches: Vec<u32>,
    peak: Vec<Option<f64>>,
}

impl ThresholdMonitor {
    /// Watches `specs`.
    /// Whether there is anything to watch.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Watches `specs`.
    pub fn new(specs: Vec<ThresholdSpec>) -> Self {
        let n = specs.len();
        Self {
            specs,
            breached: vec![false; n],
            breaches: vec![0; n],
            peak: vec![None; n],
        }
    }

    /// Feeds the values seen at `t_ns`: the interval's series values plus cumulative figures
    /// (`wall_time`, totals). Returns the events it causes.
    pub fn observe(&mut self, t_ns: u64, values: &BTreeMap<String, f64>) -> Vec<Event> {
        let mut events = Vec::new();
        for (i, spec) in self.specs.iter().enumerate() {
            let Some(v) = values.get(&spec.series).copied() else {
                continue;
            };
            self.peak[i] = Some(self.peak[i].map_or(v, |p: f64| p.max(v)));
            let over = v > spec.limit;
            if over && !self.breached[i] {
                self.breaches[i] += 1;
                events.push(threshold_event(spec, EventKind::ThresholdBreached, t_ns, v));
            } else if !over && self.breached[i] {
                events.push(threshold_event(spec, EventKind::ThresholdCleared, t_ns, v));
            }
            self.breached[i] = over;
        }
        events
    }

    /// Feeds the whole run's figures at its end (`t_ns`): totals, `wall_time`, the kernel's
    /// memory peak. A limit they cross is a breach only when no sample crossed it: an excursion
    /// the samples saw (and said cleared, or still under way) is not a second one. Nothing
    /// clears here. Returns the events it causes.
    pub fn observe_final(&mut self, t_ns: u64, values: &BTreeMap<String, f64>) -> Vec<Event> {
        let mut events = Vec::new();
        for (i, spec) in self.specs.iter().enumerate() {
            let Some(v) = values.get(&spec.series).copied() else {
                continue;
            };
            self.peak[i] = Some(self.peak[i].map_or(v, |p: f64| p.max(v)));
            if v > spec.limit && self.breaches[i] == 0 {
                self.breaches[i] = 1;
                self.breached[i] = true;
                events.push(threshold_event(spec, EventKind::ThresholdBreached, t_ns, v));
            }
        }
        events
    }

    /// Final verdicts.
    pub fn results(&self) -> Vec<ThresholdResult> {
        self.specs
            .iter()
            .enumerate()
            .map(|(i, s)| ThresholdResult {
                name: s.name.clone(),
                metric: s.series.clone(),
                limit: s.limit,
                limit_text: s.kind.format(s.limit),
                peak: self.peak[i],
                peak_text: self.peak[i].map_or_else(|| "unavailable".into(), |p| s.kind.format(p)),
                breaches: self.breaches[i],
                status: match self.peak[i] {
                    None => Status::Unmeasured,
                    Some(_) if self.breaches[i] > 0 => Status::Fail,
                    Some(_) => Status::Pass,
                },
            })
            .collect()
    }
}

/// Bounds the anomalies a report keeps to the [`ANOMALIES_KEPT`] strongest, in time order;
/// returns them and, when some were left out, how many were found.
pub fn keep_strongest(mut anomalies: Vec<Anomaly>) -> (Vec<Anomaly>, Option<usize>) {
    let found = anomalies.len();
    if found <= ANOMALIES_KEPT {
        return (anomalies, None);
    }
    anomalies.sort_by(|a, b| b.score.abs().total_cmp(&a.score.abs()));
    anomalies.truncate(ANOMALIES_KEPT);
    anomalies.sort_by_key(|a| a.t_ns);
    (anomalies, Some(found))
}

/// How anomalies are found, as reports state it.
pub const ANOMALY_METHOD: &str = "modified z-score (Iglewicz & Hoaglin): an interval is anomalous when \
0.6745 x |value - median| / MAD > 3.5, over the run's own intervals of that metric (at least 8)";

/// Intervals whose value is far from the run's median of the same series (see [`ANOMALY_METHOD`]).
pub fn anomalies(series: &[SeriesPoint]) -> Vec<Anomaly> {
    let mut names: Vec<&String> = series.iter().flat_map(|p| p.values.keys()).collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        let xs: Vec<(u64, f64)> = series
            .iter()
            .filter_map(|p| Some((p.t_ns, *p.values.get(name)?)))
            .collect();
        if xs.len() < 8 {
            continue;
        }
        let median = median(xs.iter().map(|x| x.1).collect());
        let mad = median_of_abs_dev(&xs, median);
        if mad <= f64::EPSILON * median.abs().max(1.0) {
            continue;
        }
        for (t, v) in &xs {
            let score = 0.6745 * (v - median) / mad;
            if score.abs() > 3.5 {
                out.push(Anomaly {
                    t_ns: *t,
                    metric: name.clone(),
                    value: *v,
                    median,
                    score,
                });
            }
        }
    }
    out.sort_by_key(|a| a.t_ns);
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median_of_abs_dev(xs: &[(u64, f64)], m: f64) -> f64 {
    median(xs.iter().map(|(_, v)| (v - m).abs()).collect())
}

fn latency(report: &Report, name: &str) -> Option<LatencySummary> {
    match report.totals.get(name)? {
        Total::Latency(l) => Some(l.clone()),
        Total::Value(_) => None,
    }
}

fn value(report: &Report, name: &str) -> Option<f64> {
    match report.totals.get(name)? {
        Total::Value(v) => Some(*v as f64),
        Total::Latency(_) => None,
    }
}

/// Where the wall time went, the dominant resource, the worst latency and where, and what
/// limits did. `cpus` is the number of CPUs of the host.
pub fn insights(report: &Report, cpus: usize) -> Vec<Insight> {
    let mut out = Vec::new();
    let wall = report.wall_time_ns as f64;
    if wall <= 0.0 {
        return out;
    }
    let s = |ns: f64| ns / 1e9;
    let cpu = value(report, "cpu_time_ns");
    let runq = latency(report, "runqueue_latency").map(|l| l.sum_ns as f64);
    let io = [
        latency(report, "block_read_latency"),
        latency(report, "block_write_latency"),
    ]
    .into_iter()
    .flatten()
    .map(|l| l.sum_ns as f64)
    .sum::<f64>();

    if !report.escaped.is_empty() {
        // Said first: every figure below is short of what the escaped processes did.
        out.push(Insight {
            text: format!(
                "{} process(es) left the run's cgroup ({}): what they did afterwards is not in \
                 these figures, which are therefore too low.",
                report.escaped.len(),
                report
                    .escaped
                    .iter()
                    .take(5)
                    .map(|e| format!("{} {}", e.pid, e.comm))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            numbers: BTreeMap::from([("escaped".to_owned(), report.escaped.len() as f64)]),
        });
    }
    if let Some(cpu) = cpu {
        let mut text = format!(
            "Of {:.2}s of wall time: {:.2}s on CPU ({:.0}% of one core on average",
            s(wall),
            s(cpu),
            cpu / wall * 100.0
        );
        text.push_str(&format!(
            ", {:.0}% of the {cpus}-CPU machine)",
            cpu / wall / cpus as f64 * 100.0
        ));
        if let Some(r) = runq {
            text.push_str(&format!("; {:.2}s runnable but waiting for a CPU", s(r)));
        }
        if io > 0.0 {
            text.push_str(&format!("; {:.2}s of block I/O requests in flight", s(io)));
        }
        text.push('.');
        let mut numbers = BTreeMap::from([
            ("wall_time_ns".to_owned(), wall),
            ("cpu_time_ns".to_owned(), cpu),
        ]);
        if let Some(r) = runq {
            numbers.insert("runqueue_latency_sum_ns".into(), r);
        }
        numbers.insert("block_latency_sum_ns".into(), io);
        out.push(Insight { text, numbers });

        // Dominant resource: the largest share of wall time.
        let shares = [
            (
                "CPU",
                cpu / wall / cpus as f64,
                "cpu_time_ns / (wall_time_ns x cpus)",
            ),
            (
                "waiting for a CPU",
                runq.unwrap_or(0.0) / wall,
                "runqueue_latency sum / wall_time_ns",
            ),
            ("block I/O", io / wall, "block latency sum / wall_time_ns"),
        ];
        if let Some((name, share, basis)) = shares
            .iter()
            .copied()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .filter(|x| x.1 > 0.05)
        {
            out.push(Insight {
                text: format!(
                    "The dominant cost is {name}: {:.0}% of the wall time ({basis}).",
                    share * 100.0
                ),
                numbers: BTreeMap::from([(format!("{name} share"), share)]),
            });
        }
    }

    // Worst latency, by p99, and the device when it is block I/O.
    let worst = [
        "block_read_latency",
        "block_write_latency",
        "runqueue_latency",
        "tcp_connect_latency",
    ]
    .iter()
    .filter_map(|n| Some((*n, latency(report, n).filter(|l| l.count > 0)?)))
    .max_by_key(|(_, l)| l.p99_ns);
    if let Some((name, l)) = worst {
        let mut text = format!(
            "Worst latency: {name} p99 {} (max {}, {} events)",
            human(l.p99_ns),
            human(l.max_ns),
            l.count
        );
        let mut numbers = BTreeMap::from([
            (format!("{name}_p99_ns"), l.p99_ns as f64),
            (format!("{name}_max_ns"), l.max_ns as f64),
        ]);
        let direction = match name {
            "block_read_latency" => Some("read_latency"),
            "block_write_latency" => Some("write_latency"),
            _ => None,
        };
        if let Some(dir) = direction {
            let device = report
                .block_devices
                .iter()
                .filter_map(|d| {
                    let l = if dir == "read_latency" {
                        &d.read_latency
                    } else {
                        &d.write_latency
                    };
                    Some((d, l.as_ref()?.p99_ns))
                })
                .max_by_key(|(_, p99)| *p99);
            if let Some((d, p99)) = device {
                text.push_str(&format!(
                    ", worst on {} ({}) at p99 {}",
                    d.name.as_deref().unwrap_or("?"),
                    d.device,
                    human(p99)
                ));
                numbers.insert(format!("{}_{dir}_p99_ns", d.device), p99 as f64);
            }
        }
        text.push('.');
        out.push(Insight { text, numbers });
    }

    for e in &report.events {
        if matches!(e.kind, EventKind::OomKill | EventKind::Timeout) {
            out.push(Insight {
                text: e.message.clone(),
                numbers: e
                    .value
                    .map(|v| BTreeMap::from([(e.subject.clone(), v)]))
                    .unwrap_or_default(),
            });
        }
    }
    out
}

fn human(ns: u64) -> String {
    crate::units::human_duration_ns(ns)
}

/// Judges the report: thresholds judged on the whole run (the containers' start-up times, n/a
/// without containers), SLOs, insights, the verdict.
pub fn judge(config: &CleanroomConfig, mut report: Report, not_applicable: Vec<String>) -> Report {
    let limit = config
        .performance_monitoring
        .thresholds
        .max_container_startup_time;
    let startups: Vec<u64> = report
        .containers
        .iter()
        .filter_map(|c| c.startup_ns)
        .collect();
    let count_limit = config.resource_limits.max_container_count;
    let count = report.containers.len();
    let results: Vec<ThresholdResult> = not_applicable
        .into_iter()
        .map(|name| {
            if name.ends_with("max_container_count") {
                container_count(name, count_limit.unwrap_or(u64::MAX), count)
            } else {
                container_startup(name, limit, &startups)
            }
        })
        .collect();
    report.thresholds.extend(results);
    report.slos = judge_slos(config, &report);
    report.insights = insights(&report, crate::host::cpus());
    report.verdict = if report.slos.is_empty() && report.thresholds.is_empty() {
        Verdict::None
    } else if all_pass(&report.slos, &report.thresholds) {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    report
}

/// Whether the run met everything it was judged on.
pub fn all_pass(slos: &[SloResult], thresholds: &[ThresholdResult]) -> bool {
    let ok = |s: Status| matches!(s, Status::Pass | Status::NotApplicable);
    slos.iter().all(|r| ok(r.status)) && thresholds.iter().all(|r| ok(r.status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::CleanroomConfig,
        judge::verdict::{ANOMALIES_LISTED, strongest},
    };

    fn values(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn a_breach_is_reported_once_and_again_when_it_clears() {
        let mut m = ThresholdMonitor::new(vec![ThresholdSpec {
            name: "t".into(),
            series: "cpu_percent".into(),
            limit: 80.0,
            kind: Kind::Percent,
        }]);
        assert!(m.observe(1, &values(&[("cpu_percent", 50.0)])).is_empty());
        let e = m.observe(2, &values(&[("cpu_percent", 95.0)]));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].kind, EventKind::ThresholdBreached);
        assert!(
            m.observe(3, &values(&[("cpu_percent", 99.0)])).is_empty(),
            "once per breach"
        );
        let e = m.observe(4, &values(&[("cpu_percent", 10.0)]));
        assert_eq!(e[0].kind, EventKind::ThresholdCleared);
        let r = &m.results()[0];
        assert_eq!(
            (r.status, r.breaches, r.peak),
            (Status::Fail, 1, Some(99.0))
        );
    }

    #[test]
    fn unseen_thresholds_are_unmeasured_and_calm_ones_pass() {
        let mut m = ThresholdMonitor::new(vec![
            ThresholdSpec {
                name: "a".into(),
                series: "x".into(),
                limit: 1.0,
                kind: Kind::Count,
            },
            ThresholdSpec {
                name: "b".into(),
                series: "y".into(),
                limit: 1.0,
                kind: Kind::Count,
            },
        ]);
        m.observe(1, &values(&[("y", 1.0)]));
        let r = m.results();
        assert_eq!(r[0].status, Status::Unmeasured);
        assert_eq!(r[1].status, Status::Pass, "equal to the limit is within it");
    }

    #[test]
    fn config_thresholds_map_to_series() {
        let c = CleanroomConfig::from_toml(
            "[performance_monitoring.thresholds]\nmax_cpu_usage_percent = 80\nmax_container_startup_time = \"30s\"\n[resource_limits]\nmax_disk_usage_bytes = \"1GiB\"\n",
            "t.toml",
        )
        .unwrap();
        let (specs, na) = threshold_specs(&c);
        let series: Vec<&str> = specs.iter().map(|s| s.series.as_str()).collect();
        assert_eq!(series, ["cpu_percent", "io_write_bytes"]);
        assert_eq!(
            na,
            ["performance_monitoring.thresholds.max_container_startup_time"]
        );
    }

    #[test]
    fn anomalies_find_the_spike_and_not_the_noise() {
        let points: Vec<SeriesPoint> = (1..=20u64)
            .map(|i| SeriesPoint {
                min: Default::default(),
                max: Default::default(),
                t_ns: i * 1_000_000_000,
                interval_ns: 1_000_000_000,
                values: values(&[(
                    "cpu_percent",
                    if i == 13 {
                        400.0
                    } else {
                        100.0 + (i % 3) as f64
                    },
                )]),
            })
            .collect();
        let a = anomalies(&points);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].t_ns, 13_000_000_000);
        assert!(a[0].score > 3.5);
        assert!(
            anomalies(&points[..5]).is_empty(),
            "too few intervals to judge"
        );
        let flat: Vec<SeriesPoint> = points
            .iter()
            .map(|p| SeriesPoint {
                min: Default::default(),
                max: Default::default(),
                values: values(&[("x", 5.0)]),
                ..p.clone()
            })
            .collect();
        assert!(anomalies(&flat).is_empty(), "a flat series has no anomaly");
    }

    #[test]
    fn a_report_keeps_the_strongest_anomalies_in_time_order() {
        let all: Vec<Anomaly> = (0..(ANOMALIES_KEPT as u64 + 50))
            .map(|i| Anomaly {
                t_ns: i,
                metric: "cpu_percent".into(),
                value: 1.0,
                median: 0.0,
                // Alternating sign: the strength is |score|.
                score: if i % 2 == 0 { i as f64 } else { -(i as f64) },
            })
            .collect();
        let (kept, found) = keep_strongest(all.clone());
        assert_eq!(found, Some(all.len()));
        assert_eq!(kept.len(), ANOMALIES_KEPT);
        assert!(kept.windows(2).all(|w| w[0].t_ns < w[1].t_ns), "time order");
        assert_eq!(kept[0].t_ns, 50, "the 50 weakest are left out");
        let (listed, more) = strongest(&kept, ANOMALIES_LISTED);
        assert_eq!(listed[0].score, -149.0);
        assert_eq!(more, ANOMALIES_KEPT - ANOMALIES_LISTED);
        assert_eq!(
            keep_strongest(all[..10].to_vec()),
            (all[..10].to_vec(), None)
        );
    }

    #[test]
    fn verdicts_need_every_slo_and_threshold() {
        let pass = SloResult {
            name: "a".into(),
            objective: "wall_time <= 1s".into(),
            phase: None,
            measured: Some(1.0),
            measured_text: String::new(),
            target_text: String::new(),
            status: Status::Pass,
        };
        let fail = SloResult {
            status: Status::Fail,
            ..pass.clone()
        };
        let unmeasured = SloResult {
            status: Status::Unmeasured,
            ..pass.clone()
        };
        assert!(all_pass(std::slice::from_ref(&pass), &[]));
        assert!(!all_pass(&[pass.clone(), fail], &[]));
        assert!(!all_pass(&[unmeasured], &[]));
    }

    #[test]
    fn escaped_processes_come_first_in_the_insights() {
        let mut r = Report::example();
        assert!(
            insights(&r, 2)
                .iter()
                .all(|i| !i.text.contains("left the run"))
        );
        r.escaped.push(crate::measure::escape::EscapedProcess {
            pid: 42,
            thread: None,
            comm: "sh".into(),
            via: "moved".into(),
            to_cgroup_id: 1,
            to_cgroup_path: None,
        });
        let first = &insights(&r, 2)[0];
        assert!(
            first
                .text
                .contains("1 process(es) left the run's cgroup (42 sh)"),
            "{}",
            first.text
        );
    }
}
