//! The Prometheus text exposition (format 0.0.4) of live per-cgroup measurements, for an agent's
//! `GET /metrics`: a [`Snapshot`] in, text out. Pure: it reads no map, file or socket, and knows
//! nothing of HTTP; whoever serves the text builds the snapshot. `prometheus-client` writes the
//! format (names, `HELP`/`TYPE` lines, label escaping, number formatting); this module decides
//! what the families are.
//!
//! **Names**, one rule for every [`Metric`]: `cleanroom_` + its report name without the report's
//! unit suffix (`_ns`, `_bytes`; counts have none) + the Prometheus base unit (`_seconds`,
//! `_bytes`; counts have none) + `_total` for a counter ([`Metric::is_counter`]). So
//! `cpu_time_ns` is `cleanroom_cpu_time_seconds_total`, `block_read_bytes` is
//! `cleanroom_block_read_bytes_total`, `context_switches_voluntary` is
//! `cleanroom_context_switches_voluntary_total` and `memory_peak_bytes` (a gauge) is
//! `cleanroom_memory_peak_bytes`. Nanoseconds become seconds as `f64`. `HELP` is
//! [`Metric::description`]. A [`Latency`] is a histogram `cleanroom_<report name>_seconds`
//! (e.g. `cleanroom_block_read_latency_seconds`) with [`Latency::description`] as `HELP`. Every
//! cgroup's series carries the labels `cgroup` and `rule`; a family no cgroup has is left out.
//! The agent's own figures are `cleanroom_dropped_events_total{reason}`,
//! `cleanroom_samples_total`, `cleanroom_sample_duration_seconds`,
//! `cleanroom_scrape_duration_seconds`, `cleanroom_watched_cgroups` and
//! `cleanroom_map_entries{map}`.
//!
//! **Buckets**: the kernel's log-linear histogram has [`HIST_BUCKETS`] buckets, too many to expose
//! per cgroup, so they are merged under one `le` per power of two in [`LE_OCTAVES`]:
//! `le` = (2^e − 1) ns, in seconds. Latencies are whole nanoseconds and every power of two up to
//! 2^42 ns starts a kernel bucket (see [`bucket_high`]), so no bucket straddles an `le`: the
//! count under each `le` is exactly the number of latencies ≤ `le`. Buckets above the largest
//! `le` count only under `+Inf`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    ops::RangeInclusive,
};

use cleanroom_common::{HIST_BUCKETS, Histogram};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet, prometheus_text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit as PromUnit},
};

use crate::{
    measure::model::bucket_high,
    metric::{Latency, Metric, Unit},
};

/// Prefix of every name.
pub const PREFIX: &str = "cleanroom";

/// The `Content-Type` of the text [`render`] returns.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Exponents e of the histograms' `le` bounds, (2^e − 1) ns: from about 1 µs (2^10 ns) to about
/// 34 s (2^35 ns), one per doubling.
pub const LE_OCTAVES: RangeInclusive<u32> = 10..=35;

/// One watched cgroup's measurements so far.
#[derive(Clone, Debug, PartialEq)]
pub struct CgroupSnapshot {
    /// Path relative to the cgroup v2 mount, e.g. `docker/abc`.
    pub cgroup: String,
    /// Name of the watch rule that selected it.
    pub rule: String,
    /// Cumulative value of each metric measured, in the metric's [`Unit`].
    pub totals: BTreeMap<Metric, u64>,
    /// Latency histograms, ns.
    pub latencies: BTreeMap<Latency, Histogram>,
}

/// The agent's figures about itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentFigures {
    /// Events the BPF programs could not record, by reason (e.g. `stats_map_full`).
    pub dropped: BTreeMap<&'static str, u64>,
    /// Samples taken since the agent started.
    pub samples: u64,
    /// How long the last sample took, seconds.
    pub last_sample_seconds: f64,
    /// How long the last scrape took to answer, seconds.
    pub last_scrape_seconds: f64,
    /// Entries in each BPF map keyed by cgroup (e.g. `CGROUP_STATS`), where known.
    pub map_entries: BTreeMap<&'static str, u64>,
    /// Cgroups watched now.
    pub watched: u64,
}

/// What one scrape exposes. Each (`cgroup`, `rule`) pair must appear once: it names one series.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// The watched cgroups, in the order their series are written.
    pub cgroups: Vec<CgroupSnapshot>,
    /// The agent's own figures.
    pub agent: AgentFigures,
}

/// Why a snapshot could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ExpositionError {
    /// The same series twice: Prometheus would reject the whole scrape.
    #[error(
        "cgroup {cgroup:?} is in the snapshot twice under rule {rule:?}; each (cgroup, rule) pair \
         must be listed once"
    )]
    DuplicateSeries {
        /// The cgroup.
        cgroup: String,
        /// The rule.
        rule: String,
    },
    /// The encoder failed (it writes to a `String`, so only on an encoder bug).
    #[error("cannot encode the metrics: {0}")]
    Encode(#[from] fmt::Error),
}

/// The snapshot in the Prometheus text format (see [`CONTENT_TYPE`]). It takes the snapshot
/// because the encoder's collectors own what they encode; an agent builds one per scrape.
pub fn render(snapshot: Snapshot) -> Result<String, ExpositionError> {
    let mut seen = BTreeSet::new();
    for c in &snapshot.cgroups {
        if !seen.insert((c.cgroup.as_str(), c.rule.as_str())) {
            return Err(ExpositionError::DuplicateSeries {
                cgroup: c.cgroup.clone(),
                rule: c.rule.clone(),
            });
        }
    }
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// Computed at scrape time: register it with a `Registry` prefixed [`PREFIX`] to serve it beside
/// other metrics ([`render`] does exactly that, after checking that no series repeats).
impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for metric in Metric::ALL {
            encode_total(&self.cgroups, *metric, &mut encoder)?;
        }
        for latency in Latency::ALL {
            encode_latency(&self.cgroups, *latency, &mut encoder)?;
        }
        encode_agent(&self.agent, &mut encoder)
    }
}

impl CgroupSnapshot {
    fn labels(&self) -> [(&'static str, &str); 2] {
        [("cgroup", &self.cgroup), ("rule", &self.rule)]
    }
}

/// Nanoseconds in seconds.
fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The name of a metric's family without prefix, unit and `_total` (those the encoder adds),
/// and its Prometheus unit: the report name without the report's unit suffix.
fn family(metric: Metric) -> (&'static str, Option<PromUnit>) {
    let (suffix, unit) = match metric.unit() {
        Unit::Nanoseconds => ("_ns", Some(PromUnit::Seconds)),
        Unit::Bytes => ("_bytes", Some(PromUnit::Bytes)),
        Unit::Count => ("", None),
    };
    let name = metric.name();
    (name.strip_suffix(suffix).unwrap_or(name), unit)
}

/// One metric's family, if any cgroup has a value for it.
fn encode_total(
    cgroups: &[CgroupSnapshot],
    metric: Metric,
    encoder: &mut DescriptorEncoder,
) -> Result<(), fmt::Error> {
    let mut rows = cgroups
        .iter()
        .filter_map(|c| Some((c, *c.totals.get(&metric)?)))
        .peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let (name, unit) = family(metric);
    let kind = if metric.is_counter() {
        MetricType::Counter
    } else {
        MetricType::Gauge
    };
    let mut family = encoder.encode_descriptor(name, metric.description(), unit.as_ref(), kind)?;
    for (c, value) in rows {
        let labels = c.labels();
        let sample = family.encode_family(&labels)?;
        match (metric.unit(), metric.is_counter()) {
            (Unit::Nanoseconds, true) => ConstCounter::new(seconds(value)).encode(sample),
            (Unit::Nanoseconds, false) => ConstGauge::new(seconds(value)).encode(sample),
            (_, true) => ConstCounter::new(value).encode(sample),
            (_, false) => ConstGauge::new(value).encode(sample),
        }?;
    }
    Ok(())
}

/// One latency's histogram family, if any cgroup has one.
fn encode_latency(
    cgroups: &[CgroupSnapshot],
    latency: Latency,
    encoder: &mut DescriptorEncoder,
) -> Result<(), fmt::Error> {
    let mut rows = cgroups
        .iter()
        .filter_map(|c| Some((c, c.latencies.get(&latency)?)))
        .peekable();
    if rows.peek().is_none() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(
        latency.name(),
        latency.description(),
        Some(&PromUnit::Seconds),
        MetricType::Histogram,
    )?;
    for (c, histogram) in rows {
        let labels = c.labels();
        let (buckets, count) = le_buckets(histogram);
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(seconds(histogram.sum), count, &buckets, None)?;
    }
    Ok(())
}

/// The `le` bounds, ns, ascending.
fn le_bounds_ns() -> impl Iterator<Item = u64> {
    LE_OCTAVES.map(|e| (1u64 << e) - 1)
}

/// The kernel's buckets merged under the `le` bounds: (`le` in seconds, count of the buckets
/// whose every value is ≤ `le` and above the previous `le`), not cumulative (the encoder sums
/// them), and the total of all buckets, `+Inf`'s count. The total is `_count` too, rather than
/// the kernel's own `count`: the kernel adds to a bucket and to `count` separately, so a read
/// can see one without the other, and `+Inf` must equal `_count`.
fn le_buckets(h: &Histogram) -> (Vec<(f64, u64)>, u64) {
    let bounds: Vec<u64> = le_bounds_ns().collect();
    let mut counts = vec![0u64; bounds.len()];
    let mut total = 0u64;
    for (i, n) in h.buckets.iter().enumerate() {
        total = total.saturating_add(*n);
        // The largest value bucket i holds (the last bucket holds all larger ones too).
        let top = if i + 1 < HIST_BUCKETS {
            bucket_high(i).saturating_sub(1)
        } else {
            u64::MAX
        };
        if let Some(k) = bounds.iter().position(|le| top <= *le) {
            counts[k] = counts[k].saturating_add(*n);
        }
    }
    let buckets = bounds.iter().map(|le| seconds(*le)).zip(counts).collect();
    (buckets, total)
}

/// The agent's own families.
fn encode_agent(agent: &AgentFigures, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
    if !agent.dropped.is_empty() {
        let mut family = encoder.encode_descriptor(
            "dropped_events",
            "events the BPF programs could not record, by reason (a full map, a failed read, a \
             latency whose start was not seen)",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in &agent.dropped {
            let labels = [("reason", *reason)];
            ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
        }
    }
    let samples = encoder.encode_descriptor(
        "samples",
        "samples taken of the watched cgroups since the agent started",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(agent.samples).encode(samples)?;
    let sample = encoder.encode_descriptor(
        "sample_duration",
        "how long the last sample of the watched cgroups took",
        Some(&PromUnit::Seconds),
        MetricType::Gauge,
    )?;
    ConstGauge::new(agent.last_sample_seconds).encode(sample)?;
    let scrape = encoder.encode_descriptor(
        "scrape_duration",
        "how long the last scrape of these metrics took to answer",
        Some(&PromUnit::Seconds),
        MetricType::Gauge,
    )?;
    ConstGauge::new(agent.last_scrape_seconds).encode(scrape)?;
    let watched = encoder.encode_descriptor(
        "watched_cgroups",
        "cgroups the agent watches now",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(agent.watched as i64).encode(watched)?;
    if !agent.map_entries.is_empty() {
        let mut family = encoder.encode_descriptor(
            "map_entries",
            "entries in each BPF map keyed by cgroup: those of removed cgroups are freed, so \
             this stays flat while cgroups come and go",
            None,
            MetricType::Gauge,
        )?;
        for (map, n) in &agent.map_entries {
            let labels = [("map", *map)];
            ConstGauge::new(*n as i64).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use cleanroom_common::hist_bucket;

    use super::*;
    use crate::measure::model::empty_histogram;

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

    /// 500 ns, 2 µs, 2 ms and 40 s (past the largest `le`).
    const DOCKER_READS: [u64; 4] = [500, 2_000, 2_000_000, 40_000_000_000];

    fn two_cgroups() -> Snapshot {
        let docker = CgroupSnapshot {
            cgroup: "docker/abc".into(),
            rule: "docker".into(),
            totals: BTreeMap::from([
                (Metric::CpuTime, 1_500_000_000),
                (Metric::BlockReadBytes, 4_096),
                (Metric::ContextSwitchesVoluntary, 12),
                (Metric::MemoryPeakBytes, 1_048_576),
            ]),
            latencies: BTreeMap::from([(Latency::BlockRead, histogram_of(&DOCKER_READS))]),
        };
        let odd = CgroupSnapshot {
            cgroup: "system.slice/a\"b\\c\nd.service".into(),
            rule: "services".into(),
            totals: BTreeMap::from([(Metric::CpuTime, 250_000), (Metric::MemoryPeakBytes, 0)]),
            latencies: BTreeMap::from([
                (Latency::BlockRead, empty_histogram()),
                (Latency::Runqueue, histogram_of(&[3_000])),
            ]),
        };
        Snapshot {
            cgroups: vec![docker, odd],
            agent: AgentFigures {
                dropped: BTreeMap::from([("stats_map_full", 0), ("latency_start_unseen", 3)]),
                samples: 42,
                last_sample_seconds: 0.0125,
                last_scrape_seconds: 0.002,
                map_entries: BTreeMap::from([("CGROUP_STATS", 7)]),
                watched: 2,
            },
        }
    }

    const DOCKER: &str = r#"{cgroup="docker/abc",rule="docker"}"#;
    const ODD: &str = r#"{cgroup="system.slice/a\"b\\c\nd.service",rule="services"}"#;

    /// Label names and values, unescaped.
    type Labels = Vec<(String, String)>;

    /// One sample line, parsed.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Labels,
        value: f64,
    }

    impl Sample {
        fn label(&self, key: &str) -> Option<&str> {
            self.labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        }
    }

    /// A family: its `TYPE`, `HELP` and samples.
    #[derive(Debug)]
    struct Family {
        name: String,
        kind: String,
        help: Option<String>,
        samples: Vec<Sample>,
    }

    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    /// `{k="v",...}` at the start of `s`, unescaped; the rest of `s`.
    fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
        let Some(mut rest) = s.strip_prefix('{') else {
            return Ok((Vec::new(), s));
        };
        let mut labels = Vec::new();
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                return Ok((labels, after));
            }
            let (key, after) = rest
                .split_once("=\"")
                .ok_or_else(|| format!("no =\" after a label name in {s:?}"))?;
            if !is_name(key) {
                return Err(format!("bad label name {key:?}"));
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?} in {s:?}")),
                    },
                    Some((i, '"')) => break i,
                    Some((_, '\n')) => return Err(format!("raw newline in {s:?}")),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated label value in {s:?}")),
                }
            };
            labels.push((key.to_owned(), value));
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }

    /// The exposition, checked line by line: comments are `# HELP name text` or
    /// `# TYPE name kind`, once per family and before its samples; every other line is
    /// `name{labels} value`, of the family last typed, with well-formed labels.
    fn parse(text: &str) -> Result<Vec<Family>, String> {
        let mut families: Vec<Family> = Vec::new();
        let mut names = BTreeSet::new();
        let mut pending_help: Option<(String, String)> = None;
        if !text.ends_with('\n') {
            return Err("no final newline".into());
        }
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').ok_or("HELP without text")?;
                pending_help = Some((name.to_owned(), help.to_owned()));
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or("TYPE without kind")?;
                if !is_name(name) || !names.insert(name.to_owned()) {
                    return Err(format!("TYPE {name:?} repeated or malformed"));
                }
                if !["counter", "gauge", "histogram"].contains(&kind) {
                    return Err(format!("unexpected type {kind:?}"));
                }
                let help = match pending_help.take() {
                    Some((n, h)) if n == name => Some(h),
                    Some((n, _)) => return Err(format!("HELP of {n} before TYPE of {name}")),
                    None => None,
                };
                families.push(Family {
                    name: name.to_owned(),
                    kind: kind.to_owned(),
                    help,
                    samples: Vec::new(),
                });
            } else if line.starts_with('#') {
                return Err(format!("unexpected comment {line:?}"));
            } else {
                let end = line
                    .find(['{', ' '])
                    .ok_or_else(|| format!("no value in {line:?}"))?;
                let name = &line[..end];
                let (labels, rest) = parse_labels(&line[end..])?;
                let value = rest
                    .strip_prefix(' ')
                    .ok_or_else(|| format!("no space before the value in {line:?}"))?;
                let value: f64 = match value {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().map_err(|_| format!("bad value in {line:?}"))?,
                };
                let family = families
                    .last_mut()
                    .ok_or_else(|| format!("sample before any TYPE: {line:?}"))?;
                let own = match family.kind.as_str() {
                    "histogram" => ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(family.name.as_str())),
                    _ => name == family.name,
                };
                if !is_name(name) || !own {
                    return Err(format!(
                        "sample {name:?} outside its family {}",
                        family.name
                    ));
                }
                family.samples.push(Sample {
                    name: name.to_owned(),
                    labels,
                    value,
                });
            }
        }
        if let Some(empty) = families.iter().find(|f| f.samples.is_empty()) {
            return Err(format!("family {} without samples", empty.name));
        }
        Ok(families)
    }

    /// A histogram's series by label set: buckets cumulative in ascending `le`, the last
    /// `+Inf` and equal to `_count`; returns each series' (`_sum`, `_count`).
    fn check_histogram(family: &Family) -> Vec<(String, f64, f64)> {
        let mut out = Vec::new();
        let cgroups: BTreeSet<&str> = family
            .samples
            .iter()
            .filter_map(|s| s.label("cgroup"))
            .collect();
        for cgroup in cgroups {
            let of = |suffix: &str| -> Vec<&Sample> {
                family
                    .samples
                    .iter()
                    .filter(|s| s.label("cgroup") == Some(cgroup) && s.name.ends_with(suffix))
                    .collect()
            };
            let buckets = of("_bucket");
            let (sum, count) = (of("_sum"), of("_count"));
            assert!(
                sum.len() == 1 && count.len() == 1,
                "{cgroup}: one _sum, one _count"
            );
            let les: Vec<f64> = buckets
                .iter()
                .map(|b| match b.label("le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => le.parse().expect("le is a number"),
                    None => panic!("{cgroup}: bucket without le"),
                })
                .collect();
            assert!(
                les.windows(2).all(|w| w[0] < w[1]),
                "{cgroup}: le ascending"
            );
            assert_eq!(les.last(), Some(&f64::INFINITY), "{cgroup}: ends in +Inf");
            assert!(
                buckets.windows(2).all(|w| w[0].value <= w[1].value),
                "{cgroup}: buckets cumulative"
            );
            assert_eq!(
                buckets.last().map(|b| b.value),
                Some(count[0].value),
                "{cgroup}: +Inf equals _count"
            );
            out.push((cgroup.to_owned(), sum[0].value, count[0].value));
        }
        out
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn two_cgroups_render_exact_lines() {
        let text = render(two_cgroups()).expect("renders");
        let lines = lines(&text);
        let expect = [
            "# HELP cleanroom_cpu_time_seconds_total time the cgroup's tasks spent on a CPU, as \
             the scheduler charges it (cpu.stat usage_usec)"
                .to_owned(),
            "# TYPE cleanroom_cpu_time_seconds_total counter".to_owned(),
            format!("cleanroom_cpu_time_seconds_total{DOCKER} 1.5"),
            format!("cleanroom_cpu_time_seconds_total{ODD} 0.00025"),
            "# TYPE cleanroom_context_switches_voluntary_total counter".to_owned(),
            format!("cleanroom_context_switches_voluntary_total{DOCKER} 12"),
            "# TYPE cleanroom_block_read_bytes_total counter".to_owned(),
            format!("cleanroom_block_read_bytes_total{DOCKER} 4096"),
            "# TYPE cleanroom_memory_peak_bytes gauge".to_owned(),
            format!("cleanroom_memory_peak_bytes{DOCKER} 1048576"),
            format!("cleanroom_memory_peak_bytes{ODD} 0"),
            "# TYPE cleanroom_block_read_latency_seconds histogram".to_owned(),
            "# TYPE cleanroom_runqueue_latency_seconds histogram".to_owned(),
            "# TYPE cleanroom_dropped_events_total counter".to_owned(),
            "cleanroom_dropped_events_total{reason=\"latency_start_unseen\"} 3".to_owned(),
            "cleanroom_dropped_events_total{reason=\"stats_map_full\"} 0".to_owned(),
            "# TYPE cleanroom_samples_total counter".to_owned(),
            "cleanroom_samples_total 42".to_owned(),
            "# TYPE cleanroom_sample_duration_seconds gauge".to_owned(),
            "cleanroom_sample_duration_seconds 0.0125".to_owned(),
            "# TYPE cleanroom_scrape_duration_seconds gauge".to_owned(),
            "cleanroom_scrape_duration_seconds 0.002".to_owned(),
            "# TYPE cleanroom_watched_cgroups gauge".to_owned(),
            "cleanroom_watched_cgroups 2".to_owned(),
            "# TYPE cleanroom_map_entries gauge".to_owned(),
            "cleanroom_map_entries{map=\"CGROUP_STATS\"} 7".to_owned(),
        ];
        for line in &expect {
            assert!(
                lines.contains(&line.as_str()),
                "missing line {line:?} in:\n{text}"
            );
        }
        // Families appear in the order of `expect`.
        let positions: Vec<usize> = expect
            .iter()
            .filter(|l| l.starts_with("# TYPE"))
            .map(|l| lines.iter().position(|x| x == l).expect("present"))
            .collect();
        assert!(positions.is_sorted(), "families out of order:\n{text}");
        // Nothing measured, nothing written.
        assert!(!text.contains("net_rx"), "a family no cgroup has:\n{text}");
    }

    #[test]
    fn histogram_buckets_are_cumulative_in_seconds() {
        let text = render(two_cgroups()).expect("renders");
        let lines = lines(&text);
        let bucket = |le: &str, n: u64| {
            format!(
                "cleanroom_block_read_latency_seconds_bucket{{cgroup=\"docker/abc\",rule=\"docker\",le=\"{le}\"}} {n}"
            )
        };
        // 500 ns ≤ 1023 ns; 2 µs ≤ 2047 ns; 2 ms in [1966080, 2097152) ns ≤ 2^21 − 1 ns; 40 s
        // only under +Inf.
        for expected in [
            bucket("1.023e-06", 1),
            bucket("2.047e-06", 2),
            bucket("0.001048575", 2),
            bucket("0.002097151", 3),
            bucket("34.359738367", 3),
            bucket("+Inf", 4),
            format!("cleanroom_block_read_latency_seconds_sum{DOCKER} 40.0020025"),
            format!("cleanroom_block_read_latency_seconds_count{DOCKER} 4"),
            format!("cleanroom_block_read_latency_seconds_count{ODD} 0"),
            format!("cleanroom_runqueue_latency_seconds_count{ODD} 1"),
        ] {
            assert!(
                lines.contains(&expected.as_str()),
                "missing line {expected:?} in:\n{text}"
            );
        }
        let buckets = lines
            .iter()
            .filter(|l| {
                l.starts_with("cleanroom_block_read_latency_seconds_bucket{cgroup=\"docker")
            })
            .count();
        assert_eq!(buckets, LE_OCTAVES.count() + 1, "one per le and +Inf");
    }

    #[test]
    fn output_parses_back() {
        let text = render(two_cgroups()).expect("renders");
        let families = parse(&text).unwrap_or_else(|e| panic!("{e} in:\n{text}"));
        assert_eq!(families.len(), 12, "families:\n{text}");
        for f in &families {
            assert!(f.name.starts_with("cleanroom_"), "{} unprefixed", f.name);
            assert!(f.help.is_some(), "{} without HELP", f.name);
            assert_eq!(
                f.kind == "counter",
                f.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                f.name
            );
            let agent = [
                "cleanroom_dropped_events_total",
                "cleanroom_samples_total",
                "cleanroom_sample_duration_seconds",
                "cleanroom_scrape_duration_seconds",
                "cleanroom_watched_cgroups",
                "cleanroom_map_entries",
            ];
            for s in &f.samples {
                let labelled = s.label("cgroup").is_some() && s.label("rule").is_some();
                assert_eq!(
                    labelled,
                    !agent.contains(&f.name.as_str()),
                    "{}: cgroup and rule on every cgroup's series, and only there",
                    s.name
                );
            }
        }
        let odd = "system.slice/a\"b\\c\nd.service";
        let cpu = &families[0];
        assert_eq!(
            cpu.samples[1].label("cgroup"),
            Some(odd),
            "escaped and back"
        );
        let reads = families
            .iter()
            .find(|f| f.name == "cleanroom_block_read_latency_seconds")
            .expect("block reads");
        let series = check_histogram(reads);
        let docker = series.iter().find(|s| s.0 == "docker/abc").expect("docker");
        let want_sum = DOCKER_READS.iter().sum::<u64>() as f64 / 1e9;
        assert!((docker.1 - want_sum).abs() < 1e-12, "sum {} s", docker.1);
        assert_eq!(docker.2, 4.0, "docker's block reads _count");
        let runqueue = families
            .iter()
            .find(|f| f.name == "cleanroom_runqueue_latency_seconds")
            .expect("runqueue");
        check_histogram(runqueue);
    }

    #[test]
    fn the_parser_rejects_malformed_text() {
        for bad in [
            "cleanroom_x 1\n",
            "# TYPE cleanroom_x gauge\ncleanroom_y 1\n",
            "# TYPE cleanroom_x gauge\ncleanroom_x{a=\"b} 1\n",
            "# TYPE cleanroom_x gauge\ncleanroom_x{a=\"b\\q\"} 1\n",
            "# TYPE cleanroom_x gauge\ncleanroom_x one\n",
            "# TYPE cleanroom_x gauge\ncleanroom_x 1\n# TYPE cleanroom_x gauge\ncleanroom_x 2\n",
            "# TYPE cleanroom_x gauge\n",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn every_metric_is_named_by_the_rule() {
        let all = CgroupSnapshot {
            cgroup: "a".into(),
            rule: "r".into(),
            totals: Metric::ALL.iter().map(|m| (*m, 1)).collect(),
            latencies: Latency::ALL
                .iter()
                .map(|l| (*l, histogram_of(&[1])))
                .collect(),
        };
        let text = render(Snapshot {
            cgroups: vec![all],
            ..Snapshot::default()
        })
        .expect("renders");
        let families = parse(&text).unwrap_or_else(|e| panic!("{e} in:\n{text}"));
        for metric in Metric::ALL {
            let (suffix, unit) = match metric.unit() {
                Unit::Nanoseconds => ("_ns", "_seconds"),
                Unit::Bytes => ("_bytes", "_bytes"),
                Unit::Count => ("", ""),
            };
            let stem = metric
                .name()
                .strip_suffix(suffix)
                .unwrap_or_else(|| panic!("{} does not end in {suffix}", metric.name()));
            let total = if metric.is_counter() { "_total" } else { "" };
            let name = format!("cleanroom_{stem}{unit}{total}");
            let family = families
                .iter()
                .find(|f| f.name == name)
                .unwrap_or_else(|| panic!("no family {name} in:\n{text}"));
            assert_eq!(family.help.as_deref(), Some(metric.description()));
        }
        for latency in Latency::ALL {
            let name = format!("cleanroom_{}_seconds", latency.name());
            assert!(
                families
                    .iter()
                    .any(|f| f.name == name && f.kind == "histogram"),
                "no histogram {name}"
            );
        }
    }

    #[test]
    fn each_le_counts_exactly_the_values_at_or_below_it() {
        for le in le_bounds_ns() {
            assert!(
                (0..HIST_BUCKETS).any(|i| bucket_high(i) == le + 1),
                "{le} ns + 1 is not a bucket boundary: a bucket straddles it"
            );
        }
        let values: Vec<u64> = (0..5_000u64)
            .map(|i| (i * i * 7_919) % 50_000_000_000)
            .chain(le_bounds_ns())
            .chain(le_bounds_ns().map(|le| le + 1))
            .collect();
        let (buckets, total) = le_buckets(&histogram_of(&values));
        assert_eq!(total, values.len() as u64);
        let mut cumulative = 0;
        for ((le_s, n), le_ns) in buckets.iter().zip(le_bounds_ns()) {
            cumulative += n;
            let truth = values.iter().filter(|v| **v <= le_ns).count() as u64;
            assert_eq!(cumulative, truth, "le {le_s} s");
            assert_eq!(*le_s, le_ns as f64 / 1e9);
        }
    }

    #[test]
    fn a_repeated_series_is_refused() {
        let mut snapshot = two_cgroups();
        snapshot.cgroups.push(snapshot.cgroups[0].clone());
        match render(snapshot) {
            Err(ExpositionError::DuplicateSeries { cgroup, rule }) => {
                assert_eq!((cgroup.as_str(), rule.as_str()), ("docker/abc", "docker"));
            }
            other => panic!("expected a duplicate series, got {other:?}"),
        }
    }
}
