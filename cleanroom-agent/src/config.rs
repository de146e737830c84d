//! `CleanroomConfig`: what to monitor, which thresholds and limits apply, and the SLOs, read
//! from TOML with the seed document's field names. Everything has a default; a bad file is an
//! error naming the file, line and key.

use std::{collections::BTreeMap, fmt, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    files::{FileError, MAX_CONFIG_BYTES, read_text},
    judge::objective::Objective,
    units::{
        de_bytes, de_duration, de_opt_bytes, de_opt_duration, de_opt_percent, parse_percent,
        ser_duration, ser_opt_duration,
    },
};

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleanroomConfig {
    /// Sampling, and thresholds checked as the run goes.
    pub performance_monitoring: PerformanceMonitoring,
    /// Limits enforced through cgroup controllers.
    pub resource_limits: ResourceLimits,
    /// Service level objectives judged at the end.
    pub slos: Vec<SloSpec>,
    /// How a run is compared with `--baseline` (and by `compare --config`).
    pub comparison: ComparisonConfig,
    /// Where alerts go, and how.
    pub alerts: crate::alerts::AlertsConfig,
    /// Where the finished report is sent (`[[distribute]]`).
    pub distribute: Vec<crate::output::distribute::DistributeConfig>,
    /// Where each run's metrics are exported (`[export]`).
    pub export: ExportConfig,
}

/// `[export]`: metrics sent to systems a team already runs.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// `[export.otlp]`: an OpenTelemetry collector, over OTLP/HTTP.
    pub otlp: Option<crate::output::otlp::OtlpConfig>,
}

/// `[comparison]`: tolerances against a baseline, by figure, e.g.
/// `tolerance = { cpu_time_ns = "25%", wall_time = 40 }`. They override the history's and the
/// static defaults; `--tolerance` overrides them.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComparisonConfig {
    /// The table as written, each value with its place for errors; checked when the file
    /// loads, into [`Self::tolerance`].
    #[serde(rename = "tolerance")]
    written: BTreeMap<String, toml::Spanned<toml::Value>>,
    /// Tolerances by figure name as comparisons spell it (`cpu_time_ns`), as fractions (0.25).
    #[serde(skip)]
    pub tolerance: BTreeMap<String, f64>,
}

/// `[performance_monitoring]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerformanceMonitoring {
    /// Sample every `metrics_interval` (otherwise only totals at the end).
    pub enable_monitoring: bool,
    /// Time between samples (default 1 s; sub-second works).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub metrics_interval: Duration,
    /// Profiling (`--profile`): the run's stacks sampled on every CPU, at its waits, its page
    /// faults and its block I/O.
    pub enable_profiling: bool,
    /// Samples a second on each CPU when profiling (default 99).
    pub profiling_frequency_hz: u64,
    /// User-mode page faults per fault sample when profiling (default 256).
    pub profiling_fault_period: u64,
    /// Bytes submitted to block devices per block sample when profiling (default 1 MiB; a size
    /// such as "64KiB").
    #[serde(deserialize_with = "de_bytes")]
    pub profiling_block_period: u64,
    /// Bytes of the user stack each sample copies, from the stack pointer up (default and at
    /// most 16 KiB, at least 4 KiB; a size such as "8KiB"): deeper stacks need more, fewer
    /// cost less.
    #[serde(deserialize_with = "de_bytes")]
    pub profiling_stack_bytes: u64,
    /// Sample memory each interval.
    pub enable_memory_tracking: bool,
    /// Thresholds, checked at every sample.
    pub thresholds: Thresholds,
}

impl Default for PerformanceMonitoring {
    fn default() -> Self {
        Self {
            enable_monitoring: true,
            metrics_interval: Duration::from_secs(1),
            enable_profiling: false,
            profiling_frequency_hz: crate::profile::DEFAULT_FREQUENCY_HZ,
            profiling_fault_period: crate::profile::DEFAULT_FAULT_PERIOD,
            profiling_block_period: crate::profile::DEFAULT_BLOCK_PERIOD_BYTES,
            profiling_stack_bytes: cleanroom_common::USER_STACK_BYTES as u64,
            enable_memory_tracking: true,
            thresholds: Thresholds::default(),
        }
    }
}

/// `[performance_monitoring.thresholds]`: each unset one is not checked.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// CPU of the run in an interval, in % of one core (200 = two cores busy).
    #[serde(
        deserialize_with = "de_opt_percent",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_cpu_usage_percent: Option<f64>,
    /// Memory charged to the run at any sample, and its peak.
    #[serde(
        deserialize_with = "de_opt_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_memory_usage_bytes: Option<u64>,
    /// Wall time of the command.
    #[serde(
        deserialize_with = "de_opt_duration",
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_test_execution_time: Option<Duration>,
    /// Container start-up time (created → running), judged on each Docker container the run
    /// started; not applicable when it started none.
    #[serde(
        deserialize_with = "de_opt_duration",
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_container_startup_time: Option<Duration>,
    /// Block reads in an interval, bytes/s.
    #[serde(
        deserialize_with = "de_opt_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_disk_read_bytes_per_sec: Option<u64>,
    /// Block writes in an interval, bytes/s.
    #[serde(
        deserialize_with = "de_opt_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_disk_write_bytes_per_sec: Option<u64>,
    /// Network traffic in an interval (received + sent), bytes/s.
    #[serde(
        deserialize_with = "de_opt_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_network_bytes_per_sec: Option<u64>,
}

/// `[resource_limits]`: enforced through cgroup controllers where the host has them.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceLimits {
    /// CPU quota in % of one core (`cpu.max`, or v1 `cpu.cfs_quota_us`): from 1% to 100% per
    /// CPU of the machine.
    #[serde(
        deserialize_with = "de_cpu_limit",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_cpu_usage_percent: Option<f64>,
    /// Memory limit (`memory.max`, or v1 `memory.limit_in_bytes`): at least 1 MiB.
    #[serde(
        deserialize_with = "de_memory_limit",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_memory_usage_bytes: Option<u64>,
    /// Bytes written to disk. No controller limits a total: monitored only.
    #[serde(
        deserialize_with = "de_opt_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_disk_usage_bytes: Option<u64>,
    /// Network bandwidth. No cgroup controller limits it: monitored only.
    #[serde(
        deserialize_with = "de_opt_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_network_bandwidth_bytes_per_sec: Option<u64>,
    /// How many Docker containers the run may start: judged at its end on the containers it
    /// followed (exceeding it fails the run).
    pub max_container_count: Option<u64>,
    /// Wall time after which the command is stopped: SIGTERM, then SIGKILL after
    /// `resource_cleanup_timeout`.
    #[serde(
        deserialize_with = "de_opt_duration",
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_test_execution_time: Option<Duration>,
    /// Check the limits' figures as thresholds during the run too.
    pub enable_resource_monitoring: bool,
    /// Grace between SIGTERM and SIGKILL when a run is stopped.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub resource_cleanup_timeout: Duration,
    /// Limits this host cannot enforce are only monitored, instead of refusing to start.
    pub monitor_only: bool,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        Self {
            max_cpu_usage_percent: None,
            max_memory_usage_bytes: None,
            max_disk_usage_bytes: None,
            max_network_bandwidth_bytes_per_sec: None,
            max_container_count: None,
            max_test_execution_time: None,
            enable_resource_monitoring: true,
            resource_cleanup_timeout: Duration::from_secs(10),
            monitor_only: false,
        }
    }
}

/// The smallest memory limit accepted: below it a command cannot even start.
pub const MIN_MEMORY_LIMIT: u64 = 1 << 20;

/// A limit that cannot work is refused where it is written (the error carries file:line:key).
fn de_memory_limit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let bytes = de_opt_bytes(d)?;
    match bytes {
        Some(b) if b < MIN_MEMORY_LIMIT => Err(serde::de::Error::custom(format!(
            "{} is too small a memory limit for any command to start; use at least 1MiB",
            crate::units::human_bytes(b)
        ))),
        _ => Ok(bytes),
    }
}

/// A CPU quota from 1% of one core (the kernel's smallest: 1 ms per 100 ms) to every CPU of
/// this machine (more limits nothing).
fn de_cpu_limit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let percent = de_opt_percent(d)?;
    let most = crate::host::cpus() as f64 * 100.0;
    match percent {
        Some(p) if p < 1.0 => Err(serde::de::Error::custom(format!(
            "{p}% is below the smallest CPU quota (1% of one core); use at least 1"
        ))),
        Some(p) if p > most => Err(serde::de::Error::custom(format!(
            "{p}% is more than this machine's {most}% ({} CPUs x 100%), so it would limit \
             nothing; use at most {most}",
            crate::host::cpus()
        ))),
        _ => Ok(percent),
    }
}

/// `[[slos]]`: a named objective, parsed once, when it is read.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(from = "written::SloSpec")]
pub struct SloSpec {
    /// Name shown in reports.
    pub name: String,
    /// `"METRIC OP VALUE"`, e.g. `"wall_time <= 15s"`, as written, with its place in the file.
    pub objective: toml::Spanned<String>,
    /// The phase it judges (`cleanroom mark NAME`; all phases of that name together), or the
    /// whole run.
    pub phase: Option<String>,
    /// `objective` parsed. A file with an error here is refused when it loads, naming the file,
    /// line and key ([`CleanroomConfig::from_toml`], [`CleanroomConfig::add_slo_file`]); an
    /// error is kept only by a spec deserialized otherwise, and judged unmeasured.
    pub parsed: Result<Objective, String>,
}

impl From<written::SloSpec> for SloSpec {
    fn from(written: written::SloSpec) -> Self {
        let parsed = Objective::parse(written.objective.get_ref());
        Self {
            name: written.name,
            objective: written.objective,
            phase: written.phase,
            parsed,
        }
    }
}

/// What is written in the file, before it is parsed.
mod written {
    use serde::Deserialize;

    /// `[[slos]]` as written. Named as [`super::SloSpec`] was, for serde's error messages
    /// ("expected struct SloSpec").
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SloSpec {
        pub name: String,
        pub objective: toml::Spanned<String>,
        #[serde(default)]
        pub phase: Option<String>,
    }
}

/// A file of SLOs alone (`--slo FILE`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SloFile {
    #[serde(default)]
    slos: Vec<SloSpec>,
}

/// A configuration file that could not be used, located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key at fault, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ConfigError {
    fn at(file: &str, text: &str, span: Option<std::ops::Range<usize>>, message: String) -> Self {
        let (line, key) = match span {
            Some(span) => {
                let start = span.start.min(text.len());
                let line = text[..start].matches('\n').count() + 1;
                let line_text = text.lines().nth(line - 1).unwrap_or("");
                let key = line_text
                    .split_once('=')
                    .map(|(k, _)| k.trim().trim_matches('"').to_owned())
                    .or_else(|| {
                        let t = line_text.trim();
                        (t.starts_with('[')).then(|| t.trim_matches(['[', ']']).to_owned())
                    })
                    .filter(|k| !k.is_empty());
                (Some(line), key)
            }
            None => (None, None),
        };
        Self {
            file: file.to_owned(),
            line,
            key: key.map(|k| truncate(&k, 80)),
            message: truncate(&message, 400),
        }
    }
}

/// Cuts a message that quotes input down to `max` characters.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let head: String = text.chars().take(max).collect();
    format!("{head}… (cut)")
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        ConfigError::at(file, text, e.span(), e.message().trim().to_owned())
    })
}

/// Refuses the first objective that did not parse, where it is written.
pub(crate) fn check_slos(slos: &[SloSpec], text: &str, file: &str) -> Result<(), ConfigError> {
    for slo in slos {
        if let Err(message) = &slo.parsed {
            let mut e = ConfigError::at(file, text, Some(slo.objective.span()), message.clone());
            e.key = Some(format!("slos.{}.objective", slo.name));
            return Err(e);
        }
    }
    Ok(())
}

/// Checks `[export]`, naming the line of the key at fault.
pub(crate) fn check_export(
    export: &ExportConfig,
    text: &str,
    file: &str,
) -> Result<(), ConfigError> {
    let Some(otlp) = &export.otlp else {
        return Ok(());
    };
    otlp.check().map_err(|(field, message)| ConfigError {
        file: file.to_owned(),
        line: text
            .lines()
            .position(|l| l.trim_start().starts_with(field))
            .map(|i| i + 1),
        key: Some(format!("export.otlp.{field}")),
        message,
    })
}

/// Checks `[[distribute]]` destinations, naming the `n`th `[[distribute]]` line of `text`.
pub(crate) fn check_distribute(
    list: &[crate::output::distribute::DistributeConfig],
    text: &str,
    file: &str,
) -> Result<(), ConfigError> {
    for (i, d) in list.iter().enumerate() {
        d.check().map_err(|(field, message)| ConfigError {
            file: file.to_owned(),
            line: text
                .lines()
                .enumerate()
                .filter(|(_, l)| l.trim_start().starts_with("[[distribute]]"))
                .nth(i)
                .map(|(n, _)| n + 1),
            key: Some(format!("distribute[{i}].{field}")),
            message,
        })?;
    }
    Ok(())
}

/// Checks `[alerts]` (channel names, each kind's fields, routes' channels) where it is written.
pub(crate) fn check_alerts(
    alerts: &crate::alerts::AlertsConfig,
    text: &str,
    file: &str,
) -> Result<(), ConfigError> {
    alerts.check().map_err(|invalid| {
        let mut e = ConfigError::at(file, text, invalid.span, invalid.message);
        e.key = Some(invalid.key);
        if e.line.is_none() {
            e.line = text
                .lines()
                .position(|l| l.trim_start().starts_with("[alerts") || l.contains("alerts."))
                .map(|i| i + 1);
        }
        e
    })
}

/// Checks the `[comparison]` tolerances where they are written (an unknown figure or a bad
/// percentage names its line and key) and keeps them by figure name, as fractions.
fn check_comparison(c: &mut ComparisonConfig, text: &str, file: &str) -> Result<(), ConfigError> {
    for (key, value) in &c.written {
        let error = |message: String| {
            let mut e = ConfigError::at(file, text, Some(value.span()), message);
            e.key = Some(truncate(&format!("comparison.tolerance.{key}"), 80));
            e
        };
        let figure = crate::judge::compare::figure_name(key).map_err(error)?;
        let percent = match value.get_ref() {
            toml::Value::String(s) => parse_percent(s),
            toml::Value::Integer(i) if *i >= 0 => Ok(*i as f64),
            toml::Value::Float(f) if f.is_finite() && *f >= 0.0 => Ok(*f),
            other => Err(format!(
                "{} is not a percentage like 25 or \"25%\"",
                crate::units::truncate_quote(&other.to_string(), 60)
            )),
        }
        .map_err(error)?;
        if c.tolerance
            .insert(figure.clone(), percent / 100.0)
            .is_some()
        {
            return Err(error(format!(
                "a second tolerance for {figure} (one name and its short form?)"
            )));
        }
    }
    Ok(())
}

/// Reads a configuration or SLO file, bounded: its name for errors, and its text.
pub(crate) fn read_config(path: &Path) -> Result<(String, String), ConfigError> {
    let file = path.display().to_string();
    let text = read_text(path, MAX_CONFIG_BYTES, "a configuration").map_err(|e| ConfigError {
        file: file.clone(),
        line: None,
        key: None,
        message: match e {
            FileError::Io { source, .. } => source.to_string(),
            other => other.to_string().replacen(&format!("{file}: "), "", 1),
        },
    })?;
    Ok((file, text))
}

/// The highest profiling frequency accepted: more costs the run more than a profile is worth.
pub const MAX_PROFILING_FREQUENCY_HZ: u64 = 1_000;

impl CleanroomConfig {
    /// Parses a configuration; `file` names it in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Self, ConfigError> {
        let mut config: Self = parse(text, file)?;
        check_slos(&config.slos, text, file)?;
        check_comparison(&mut config.comparison, text, file)?;
        check_distribute(&config.distribute, text, file)?;
        check_export(&config.export, text, file)?;
        check_alerts(&config.alerts, text, file)?;
        if config.performance_monitoring.metrics_interval < Duration::from_millis(10) {
            return Err(ConfigError {
                file: file.to_owned(),
                line: None,
                key: Some("performance_monitoring.metrics_interval".into()),
                message: "must be at least 10ms".into(),
            });
        }
        let pm = &config.performance_monitoring;
        let out_of_range = |key: &str, message: String| ConfigError {
            file: file.to_owned(),
            line: text
                .lines()
                .position(|l| l.trim_start().starts_with(key))
                .map(|i| i + 1),
            key: Some(format!("performance_monitoring.{key}")),
            message,
        };
        if !(1..=MAX_PROFILING_FREQUENCY_HZ).contains(&pm.profiling_frequency_hz) {
            return Err(out_of_range(
                "profiling_frequency_hz",
                format!("must be 1 to {MAX_PROFILING_FREQUENCY_HZ} (samples a second)"),
            ));
        }
        if pm.profiling_fault_period == 0 {
            return Err(out_of_range(
                "profiling_fault_period",
                "must be at least 1 (faults per sample)".into(),
            ));
        }
        if !(4096..=cleanroom_common::USER_STACK_BYTES as u64).contains(&pm.profiling_stack_bytes) {
            return Err(out_of_range(
                "profiling_stack_bytes",
                format!(
                    "must be 4KiB to {}KiB (the room a sample has for the stack)",
                    cleanroom_common::USER_STACK_BYTES / 1024
                ),
            ));
        }
        if pm.profiling_block_period < 512 {
            return Err(out_of_range(
                "profiling_block_period",
                "must be at least 512 bytes (one sector per sample)".into(),
            ));
        }
        Ok(config)
    }

    /// Reads a configuration file (a regular file of at most 1 MiB).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let (file, text) = read_config(path)?;
        Self::from_toml(&text, &file)
    }

    /// Adds the SLOs of a file holding only `[[slos]]` (at most 1 MiB).
    pub fn add_slo_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let (file, text) = read_config(path)?;
        let slos: SloFile = parse(&text, &file)?;
        check_slos(&slos.slos, &text, &file)?;
        self.slos.extend(slos.slos);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_a_file() {
        let c = CleanroomConfig::from_toml("", "empty.toml").unwrap();
        assert_eq!(c, CleanroomConfig::default());
        assert!(c.performance_monitoring.enable_monitoring);
        assert_eq!(
            c.performance_monitoring.metrics_interval,
            Duration::from_secs(1)
        );
        assert_eq!(
            c.performance_monitoring.thresholds.max_cpu_usage_percent,
            None
        );
    }

    #[test]
    fn the_seed_fields_as_people_write_them() {
        let text = r#"
[performance_monitoring]
enable_monitoring = true
metrics_interval = "250ms"
enable_profiling = false
enable_memory_tracking = true

[performance_monitoring.thresholds]
max_cpu_usage_percent = 80.0
max_memory_usage_bytes = "1GiB"
max_test_execution_time = "300s"
max_container_startup_time = 30
max_disk_write_bytes_per_sec = "100MB"

[resource_limits]
max_cpu_usage_percent = "150%"
max_memory_usage_bytes = 1073741824
max_disk_usage_bytes = "10GiB"
max_network_bandwidth_bytes_per_sec = "100MiB"
max_container_count = 10
max_test_execution_time = "5m"
enable_resource_monitoring = true
resource_cleanup_timeout = "60s"

[[slos]]
name = "first_build"
objective = "wall_time <= 15s"
"#;
        let c = CleanroomConfig::from_toml(text, "seed.toml").unwrap();
        let pm = &c.performance_monitoring;
        assert_eq!(pm.metrics_interval, Duration::from_millis(250));
        assert_eq!(pm.thresholds.max_cpu_usage_percent, Some(80.0));
        assert_eq!(pm.thresholds.max_memory_usage_bytes, Some(1 << 30));
        assert_eq!(
            pm.thresholds.max_test_execution_time,
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            pm.thresholds.max_container_startup_time,
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            pm.thresholds.max_disk_write_bytes_per_sec,
            Some(100_000_000)
        );
        let rl = &c.resource_limits;
        assert_eq!(rl.max_cpu_usage_percent, Some(150.0));
        assert_eq!(rl.max_disk_usage_bytes, Some(10 << 30));
        assert_eq!(rl.max_test_execution_time, Some(Duration::from_secs(300)));
        assert_eq!(rl.resource_cleanup_timeout, Duration::from_secs(60));
        assert_eq!(c.slos.len(), 1);
        assert_eq!(c.slos[0].objective.get_ref(), "wall_time <= 15s");
        assert_eq!(
            c.slos[0].parsed,
            Objective::parse("wall_time <= 15s"),
            "parsed when read"
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "[performance_monitoring]\nenable_monitoring = true\nmetric_interval = \"1s\"\n";
        let e = CleanroomConfig::from_toml(text, "bad.toml").unwrap_err();
        assert_eq!(e.file, "bad.toml");
        assert_eq!(e.line, Some(3), "{e}");
        assert_eq!(e.key.as_deref(), Some("metric_interval"), "{e}");
        assert!(
            e.to_string()
                .starts_with("bad.toml:3: key `metric_interval`"),
            "{e}"
        );
    }

    #[test]
    fn bad_value_names_file_line_and_key() {
        let text = "[resource_limits]\n\nmax_memory_usage_bytes = \"lots\"\n";
        let e = CleanroomConfig::from_toml(text, "v.toml").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("max_memory_usage_bytes")),
            "{e}"
        );
        assert!(e.message.contains("lots"), "{e}");
        let e = CleanroomConfig::from_toml(
            "[performance_monitoring]\nmetrics_interval = \"soon\"\n",
            "d.toml",
        )
        .unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("metrics_interval")),
            "{e}"
        );
    }

    #[test]
    fn bad_objective_names_its_line() {
        let text = "[[slos]]\nname = \"a\"\nobjective = \"wall_time <= 15s\"\n\n[[slos]]\nname = \"b\"\nobjective = \"speed >= 3\"\n";
        let e = CleanroomConfig::from_toml(text, "slo.toml").unwrap_err();
        assert_eq!(e.line, Some(7), "{e}");
        assert_eq!(e.key.as_deref(), Some("slos.b.objective"), "{e}");
        assert!(e.message.contains("speed"), "{e}");
    }

    #[test]
    fn slo_file_holds_only_slos() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("slo.toml");
        std::fs::write(
            &good,
            "[[slos]]\nname = \"x\"\nobjective = \"cpu_time <= 40s\"\n",
        )
        .unwrap();
        let mut c = CleanroomConfig::default();
        c.add_slo_file(&good).unwrap();
        assert_eq!(c.slos.len(), 1);
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[resource_limits]\nmax_container_count = 3\n").unwrap();
        let e = c.add_slo_file(&bad).unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn too_short_an_interval_is_refused() {
        let e = CleanroomConfig::from_toml(
            "[performance_monitoring]\nmetrics_interval = \"1ms\"\n",
            "i.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("metrics_interval"), "{e}");
    }

    #[test]
    fn a_profiling_frequency_out_of_range_is_refused_on_its_line() {
        for hz in [0, 5_000] {
            let e = CleanroomConfig::from_toml(
                &format!("[performance_monitoring]\nenable_profiling = true\nprofiling_frequency_hz = {hz}\n"),
                "p.toml",
            )
            .unwrap_err();
            assert_eq!(e.line, Some(3), "{e}");
            assert!(e.to_string().contains("profiling_frequency_hz"), "{e}");
        }
        let ok = CleanroomConfig::from_toml(
            "[performance_monitoring]\nprofiling_frequency_hz = 499\n",
            "p.toml",
        )
        .unwrap();
        assert_eq!(ok.performance_monitoring.profiling_frequency_hz, 499);
    }

    #[test]
    fn sampling_periods_take_sizes_and_refuse_zero_on_their_line() {
        for (line, key) in [
            ("profiling_fault_period = 0", "profiling_fault_period"),
            (
                "profiling_block_period = \"100B\"",
                "profiling_block_period",
            ),
            ("profiling_stack_bytes = \"32KiB\"", "profiling_stack_bytes"),
            ("profiling_stack_bytes = 100", "profiling_stack_bytes"),
        ] {
            let e = CleanroomConfig::from_toml(
                &format!("[performance_monitoring]\nenable_profiling = true\n{line}\n"),
                "p.toml",
            )
            .unwrap_err();
            assert_eq!(e.line, Some(3), "{e}");
            assert!(e.to_string().contains(key), "{e}");
        }
        let ok = CleanroomConfig::from_toml(
            "[performance_monitoring]\nprofiling_fault_period = 1\nprofiling_block_period = \"64KiB\"\nprofiling_stack_bytes = \"8KiB\"\n",
            "p.toml",
        )
        .unwrap();
        let pm = ok.performance_monitoring;
        assert_eq!(
            (
                pm.profiling_fault_period,
                pm.profiling_block_period,
                pm.profiling_stack_bytes
            ),
            (1, 65_536, 8_192)
        );
    }

    #[test]
    fn limits_that_cannot_work_are_refused_where_they_are_written() {
        for (line, expect) in [
            ("max_memory_usage_bytes = 0", "too small a memory limit"),
            (
                "max_memory_usage_bytes = \"512KiB\"",
                "too small a memory limit",
            ),
            (
                "max_memory_usage_bytes = \"99999999999999999999GiB\"",
                "too large",
            ),
            ("max_cpu_usage_percent = 0", "below the smallest CPU quota"),
            ("max_cpu_usage_percent = 100000", "limit nothing"),
        ] {
            let text = format!("[resource_limits]\n\n{line}\n");
            let e = CleanroomConfig::from_toml(&text, "l.toml").unwrap_err();
            let key = line.split(' ').next().unwrap();
            assert_eq!((e.line, e.key.as_deref()), (Some(3), Some(key)), "{e}");
            assert!(e.message.contains(expect), "{line}: {e}");
        }
        let ok =
            "[resource_limits]\nmax_memory_usage_bytes = \"1MiB\"\nmax_cpu_usage_percent = 50\n";
        assert!(CleanroomConfig::from_toml(ok, "ok.toml").is_ok());
    }

    #[test]
    fn unreadable_inputs_are_refused_at_once() {
        for path in ["/dev/zero", "/dev/urandom", "/"] {
            let e = CleanroomConfig::from_file(Path::new(path)).unwrap_err();
            assert!(e.message.contains("not a regular file"), "{e}");
            let e = CleanroomConfig::default()
                .add_slo_file(Path::new(path))
                .unwrap_err();
            assert!(e.to_string().starts_with(path), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; (MAX_CONFIG_BYTES + 1) as usize]).unwrap();
        let e = CleanroomConfig::from_file(&big).unwrap_err();
        assert!(e.message.contains("larger than the 1.0 MiB"), "{e}");
    }

    #[test]
    fn comparison_tolerances_by_figure_in_either_form() {
        let inline = "[comparison]\ntolerance = { cpu_time = \"25%\", wall_time = 40, runqueue_latency_p99 = 12.5 }\n";
        let table = "[comparison.tolerance]\ncpu_time_ns = \"25%\"\nwall_time = \"40 %\"\nrunqueue_latency_p99 = 12.5\n";
        for text in [inline, table] {
            let c = CleanroomConfig::from_toml(text, "c.toml").unwrap();
            assert_eq!(
                c.comparison.tolerance,
                BTreeMap::from([
                    ("cpu_time_ns".to_owned(), 0.25),
                    ("runqueue_latency_p99".to_owned(), 0.125),
                    ("wall_time".to_owned(), 0.40),
                ]),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_comparison_tolerances_name_file_line_and_key() {
        // Checked in the order of the names: `wall_time` before `wall_time_ns`.
        for (line, at, key, expect) in [
            ("cpu_tme = \"25%\"", 3, "cpu_tme", "unknown metric"),
            (
                "cpu_time_ns = \"lots\"",
                3,
                "cpu_time_ns",
                "not a percentage",
            ),
            ("cpu_time_ns = -5", 3, "cpu_time_ns", "not a percentage"),
            (
                "cpu_time_ns = \"-5%\"",
                3,
                "cpu_time_ns",
                "not a percentage",
            ),
            ("wall_time = true", 3, "wall_time", "not a percentage"),
            ("wall_time = 20", 2, "wall_time_ns", "a second tolerance"),
        ] {
            let text = format!("[comparison.tolerance]\nwall_time_ns = 30\n{line}\n");
            let e = CleanroomConfig::from_toml(&text, "cmp.toml").unwrap_err();
            assert_eq!(
                (e.line, e.key.clone()),
                (Some(at), Some(format!("comparison.tolerance.{key}"))),
                "{line}: {e}"
            );
            assert!(e.message.contains(expect), "{line}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("cmp.toml:{at}: key `comparison.tolerance.{key}`")),
                "{e}"
            );
        }
        let e = CleanroomConfig::from_toml(
            "[comparison]\ntolerances = { cpu_time_ns = 5 }\n",
            "c.toml",
        )
        .unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(2), Some("tolerances")),
            "{e}"
        );
    }

    #[test]
    fn a_huge_objective_is_not_echoed_whole() {
        let objective = format!("wall_time <= {}", "9".repeat(1 << 20));
        let text = format!("[[slos]]\nname = \"x\"\nobjective = \"{objective}\"\n");
        let e = CleanroomConfig::from_toml(&text, "big.toml").unwrap_err();
        assert!(
            e.to_string().len() < 1000,
            "{} bytes of error",
            e.to_string().len()
        );
        assert_eq!(e.line, Some(3), "{e}");
    }
}
