//! What judging a run produces, as the report keeps it: the status of each SLO and threshold,
//! the events of the run, its anomalies and the insights drawn from it, and its comparison with
//! a baseline (made by `compare`).
//!
//! A leaf: it imports nothing of the crate but `metric` (a series' unit, for [`Anomaly::text`]).
//! `report` holds these types and `analyze` and `compare` produce them; none is known here.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

use crate::metric::Kind;

/// Pass, fail, or could not be measured on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The objective or limit held.
    Pass,
    /// It did not.
    Fail,
    /// Its metric is unavailable here (counts as not met).
    Unmeasured,
    /// It does not apply to what Cleanroom runs (e.g. container start-up).
    NotApplicable,
}

/// Verdict on one SLO.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SloResult {
    /// Its name.
    pub name: String,
    /// The objective as written.
    pub objective: String,
    /// The phase it judged, when not the whole run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The measured value in the metric's base unit (ns, bytes, count, %), if measured.
    pub measured: Option<f64>,
    /// The measured value for people.
    pub measured_text: String,
    /// The target for people (`<= 15.000 s`).
    pub target_text: String,
    /// The verdict.
    pub status: Status,
}

/// Something that happened during a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When, ns since the command started.
    pub t_ns: u64,
    /// What happened.
    pub kind: EventKind,
    /// The threshold or metric concerned.
    pub subject: String,
    /// The value seen, in the metric's base unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<f64>,
    /// One line for people.
    pub message: String,
}

/// What kind of thing an [`Event`] is; written in the JSON report in snake case
/// (`threshold_breached`).
///
/// Read back through a string ([`EventKind::from`]): a kind of the wrong type is refused with
/// the same error as when the field was a `String`, and a kind this build does not know is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", from = "String")]
pub enum EventKind {
    /// A threshold was crossed.
    ThresholdBreached,
    /// A breached threshold is back within its limit.
    ThresholdCleared,
    /// A resource limit applied to the run.
    Limit,
    /// The run exceeded `max_test_execution_time`: SIGTERM sent.
    Timeout,
    /// The run did not stop after SIGTERM: every process killed.
    TimeoutKill,
    /// The kernel's OOM killer killed processes of the run.
    OomKill,
    /// The agent stopped watching a cgroup: its subject says why (`removed`, `agent_stopped`,
    /// `unwatched`).
    WatchEnded,
    /// A Docker container the run started was found and followed (or could not be).
    Container,
    /// A kind this build does not know, kept as written. Reports are read back (`cleanroom
    /// report`, `compare`, `--baseline`, the history) and the schema allows any string here, so
    /// a report of a newer Cleanroom (or one saying `signal`) still loads and renders its events
    /// as written, as it did when the kind was a string.
    #[serde(untagged)]
    Other(String),
}

impl EventKind {
    /// Every kind this build writes.
    pub const KNOWN: [EventKind; 8] = [
        EventKind::ThresholdBreached,
        EventKind::ThresholdCleared,
        EventKind::Limit,
        EventKind::Timeout,
        EventKind::TimeoutKill,
        EventKind::OomKill,
        EventKind::WatchEnded,
        EventKind::Container,
    ];

    /// Its name in the JSON report.
    pub fn as_str(&self) -> &str {
        match self {
            EventKind::ThresholdBreached => "threshold_breached",
            EventKind::ThresholdCleared => "threshold_cleared",
            EventKind::Limit => "limit",
            EventKind::Timeout => "timeout",
            EventKind::TimeoutKill => "timeout_kill",
            EventKind::OomKill => "oom_kill",
            EventKind::WatchEnded => "watch_ended",
            EventKind::Container => "container",
            EventKind::Other(kind) => kind,
        }
    }
}

impl From<String> for EventKind {
    fn from(name: String) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|k| k.as_str() == name)
            .unwrap_or(EventKind::Other(name))
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on a whole run, written `pass`, `fail` or `none` in the JSON report.
///
/// Read back through a string, like [`EventKind`]: a verdict of the wrong type is refused with
/// the same error as when the field was a `String`; one this build does not know (a newer
/// schema's) is kept as written, and so is a report's without any (the [`Default`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", from = "String")]
pub enum Verdict {
    /// Every SLO and threshold held.
    Pass,
    /// One did not, or the run regressed against its baseline.
    Fail,
    /// Nothing was judged.
    None,
    /// A verdict this build does not know, kept as written; rendered as no verdict.
    #[serde(untagged)]
    Other(String),
}

impl Verdict {
    /// Every verdict this build writes.
    pub const KNOWN: [Verdict; 3] = [Verdict::Pass, Verdict::Fail, Verdict::None];

    /// Its name in the JSON report.
    pub fn as_str(&self) -> &str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::None => "none",
            Verdict::Other(verdict) => verdict,
        }
    }
}

/// An empty verdict: what a report written before verdicts existed reads back as, so that
/// rendering it again as JSON gives the same bytes as when the field was a `String`.
impl Default for Verdict {
    fn default() -> Self {
        Verdict::Other(String::new())
    }
}

impl From<String> for Verdict {
    fn from(name: String) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|v| v.as_str() == name)
            .unwrap_or(Verdict::Other(name))
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Verdict on one threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThresholdResult {
    /// Config key.
    pub name: String,
    /// What it watched.
    pub metric: String,
    /// The limit.
    pub limit: f64,
    /// The limit for people.
    pub limit_text: String,
    /// The highest value seen.
    pub peak: Option<f64>,
    /// The highest value for people.
    pub peak_text: String,
    /// How many times it went over.
    pub breaches: u32,
    /// The verdict.
    pub status: Status,
}

/// An interval that stands out from the run's own history of that metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// End of the interval, ns since start.
    pub t_ns: u64,
    /// Series name.
    pub metric: String,
    /// Its value then.
    pub value: f64,
    /// The run's median of that series.
    pub median: f64,
    /// Modified z-score: 0.6745 × (value − median) / MAD.
    pub score: f64,
}

impl Anomaly {
    /// One line for people, in the series' unit: `memory_current_bytes at 12.0s: 92.5 MiB vs
    /// median 80.8 MiB (score 4.2)`.
    pub fn text(&self) -> String {
        let kind = Kind::of_series(&self.metric);
        format!(
            "{} at {:.1}s: {} vs median {} (score {:.1})",
            self.metric,
            self.t_ns as f64 / 1e9,
            kind.format(self.value),
            kind.format(self.median),
            self.score
        )
    }
}

/// How many anomalies a summary, Markdown, HTML or PDF report lists (the strongest).
pub const ANOMALIES_LISTED: usize = 5;

/// How many anomalies the JSON report keeps at most (the strongest); a long run with a shifting
/// load can otherwise hold thousands. `anomalies_found` then says how many there were.
pub const ANOMALIES_KEPT: usize = 100;

/// The `n` strongest anomalies (largest |score|: the deviation in units of the series' own
/// spread, comparable across series), strongest first, and how many more there are.
pub fn strongest(anomalies: &[Anomaly], n: usize) -> (Vec<&Anomaly>, usize) {
    let mut by_strength: Vec<&Anomaly> = anomalies.iter().collect();
    by_strength.sort_by(|a, b| b.score.abs().total_cmp(&a.score.abs()));
    by_strength.truncate(n);
    let more = anomalies.len() - by_strength.len();
    (by_strength, more)
}

/// A finding in plain words, with the numbers it rests on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Insight {
    /// The sentence.
    pub text: String,
    /// The figures it rests on, by name.
    pub numbers: BTreeMap<String, f64>,
}

/// Where a figure's tolerance came from. Precedence, highest first: `--tolerance`, the
/// configuration's `[comparison]`, the history of the run's name, the static default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToleranceSource {
    /// The static default ([`default_tolerance`](crate::judge::compare::default_tolerance)).
    #[default]
    Default,
    /// Widened by the spread of earlier runs of the same name ([`history_spread`](crate::judge::compare::history_spread)).
    History,
    /// The configuration file's `[comparison]` table.
    Config,
    /// `--tolerance` on the command line.
    Flag,
}

impl ToleranceSource {
    /// Its name in the JSON report and the CSV.
    pub fn name(self) -> &'static str {
        match self {
            ToleranceSource::Default => "default",
            ToleranceSource::History => "history",
            ToleranceSource::Config => "config",
            ToleranceSource::Flag => "flag",
        }
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
    /// Where the tolerance came from (absent in comparisons made before it was recorded).
    #[serde(default)]
    pub tolerance_source: ToleranceSource,
    /// How many earlier runs a tolerance from the history rests on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance_runs: Option<usize>,
    /// Smallest absolute increase that can count (below it, differences are noise).
    pub noise_floor: f64,
    /// Whether it grew beyond the tolerance.
    pub regression: bool,
    /// Base value for people.
    pub base_text: String,
    /// New value for people.
    pub new_text: String,
}

impl Change {
    /// The tolerance and where it came from, for people: `+25% (config)`,
    /// `+17% (history of 5 runs)`.
    pub fn tolerance_text(&self) -> String {
        let source = match (self.tolerance_source, self.tolerance_runs) {
            (ToleranceSource::Flag, _) => "--tolerance".to_owned(),
            (ToleranceSource::Config, _) => "config".to_owned(),
            (ToleranceSource::History, Some(n)) => format!("history of {n} runs"),
            (ToleranceSource::History, None) => "history".to_owned(),
            (ToleranceSource::Default, _) => "default".to_owned(),
        };
        format!("+{:.0}% ({source})", self.tolerance * 100.0)
    }
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
    /// The stored runs its figures are from, when it is a baseline found by name: the run, or
    /// those whose median it is (`--baseline-window`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<i64>,
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
    /// When both runs have a CPU profile: the functions whose share of the samples (their
    /// own) changed most, the most grown first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<FunctionShift>,
    /// When both runs have a CPU profile: each stack's samples in both, the base's scaled to
    /// the new run's total (the stacks with the most samples in either, at most 5,000), for a
    /// differential flame graph.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stack_changes: Vec<StackChange>,
}

/// A folded stack's samples in two profiles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackChange {
    /// The frames (`process;outermost;…;innermost`).
    pub stack: String,
    /// Its samples in the base run, scaled to the new run's total.
    pub base: u64,
    /// Its samples in the new run.
    pub new: u64,
}

/// A function's share of a profile's samples (its own, as the leaf) in two runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionShift {
    /// Its name, as the profiles have it.
    pub function: String,
    /// Its share in the base run (0 to 1; 0 when it had no samples there).
    pub base_share: f64,
    /// Its share in the new run.
    pub new_share: f64,
}

impl FunctionShift {
    /// New minus base, in percentage points.
    pub fn change_points(&self) -> f64 {
        (self.new_share - self.base_share) * 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anomalies_read_in_their_series_unit() {
        for (metric, value, expect) in [
            ("memory_current_bytes", 97_001_472.0, "92.5 MiB vs median"),
            ("cpu_percent", 181.25, "181.2% vs median"),
            ("net_bytes_per_sec", 2_097_152.0, "2.0 MiB/s vs median"),
            ("page_faults_user_per_sec", 1234.5, "1234.5/s vs median"),
        ] {
            let a = Anomaly {
                t_ns: 1_500_000_000,
                metric: metric.into(),
                value,
                median: 1.0,
                score: 4.2,
            };
            let text = a.text();
            assert!(text.contains(expect), "{text}");
            assert!(text.starts_with(&format!("{metric} at 1.5s: ")), "{text}");
        }
    }

    #[test]
    fn event_kinds_are_written_as_before_and_unknown_ones_kept() {
        for kind in EventKind::KNOWN
            .into_iter()
            .chain([EventKind::Other("signal".into())])
        {
            let json = serde_json::to_value(&kind).unwrap();
            assert_eq!(json, kind.as_str(), "{kind:?}");
            let back: EventKind = serde_json::from_value(json).unwrap();
            assert_eq!(back, kind);
        }
        let known: EventKind = serde_json::from_str("\"oom_kill\"").unwrap();
        assert_eq!(known, EventKind::OomKill, "a known name is never Other");
        let e = serde_json::from_str::<EventKind>("5").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid type: integer `5`, expected a string at line 1 column 1",
            "the error of a String field"
        );
    }

    #[test]
    fn verdicts_are_written_as_before_and_unknown_ones_kept() {
        for verdict in Verdict::KNOWN
            .into_iter()
            .chain([Verdict::Other("warn".into()), Verdict::default()])
        {
            let json = serde_json::to_value(&verdict).unwrap();
            assert_eq!(json, verdict.as_str(), "{verdict:?}");
            let back: Verdict = serde_json::from_value(json).unwrap();
            assert_eq!(back, verdict);
        }
        assert_eq!(serde_json::to_string(&Verdict::None).unwrap(), "\"none\"");
        let e = serde_json::from_str::<Verdict>("null").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid type: null, expected a string at line 1 column 4",
            "the error of a String field"
        );
    }
}
