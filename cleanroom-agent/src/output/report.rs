//! The run report: the JSON document (schema version 1) and the summary table printed at the end.
//!
//! Pure: builds and renders; writing files is the caller's business (`output::deliver`).
//! It holds the judgement's results as [`crate::judge::verdict`] types and does not depend on
//! `analyze`, which produces them.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

use crate::{
    judge::verdict::{
        ANOMALIES_LISTED, Anomaly, Event, Insight, SloResult, Status, ThresholdResult, Verdict,
    },
    measure::collect::{BlockDevice, Total},
    measure::model::{Aggregate, SeriesPoint},
    metric::{Latency, Metric, human},
    units::{group_thousands, human_bytes, human_duration_ns},
};

/// Version of the JSON layout. Later versions add fields; they never rename one.
pub const SCHEMA_VERSION: u32 = 1;

pub use crate::kernel::probe::LATENCY_START_UNSEEN;

/// Everything known about one run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// This run's own id, random (a UUID): a store keeps a run once however often it is
    /// offered (a spooled run sent again, a history imported twice). Absent from reports
    /// made before it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// The command's exit code; 128 + N when it died of signal N.
    pub exit_code: i32,
    /// When the command started (RFC 3339, UTC).
    pub started_at: String,
    /// From start to exit of the command, in nanoseconds.
    pub wall_time_ns: u64,
    /// The run's cgroup.
    pub cgroup: CgroupRef,
    /// What the probes measured, by metric name (see the README for units): numbers, and
    /// latency summaries for the `*_latency` metrics.
    pub totals: BTreeMap<String, Total>,
    /// Block I/O per device.
    #[serde(default)]
    pub block_devices: Vec<BlockDevice>,
    /// The kernel's own cgroupfs figures, read at the end, for cross-checking.
    pub kernel: BTreeMap<String, u64>,
    /// Metrics this host could not measure; they are absent from `totals`, never zero.
    pub unavailable: Vec<String>,
    /// Events the kernel programs could not count, by reason (all zero when nothing was lost).
    pub dropped: BTreeMap<String, u64>,
    /// What Cleanroom's probes cost the run: CPU time spent in them on the run's events,
    /// estimated with bounds, or why it is unknown (absent from reports made before it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<crate::kernel::cost::ProbesCost>,
    /// Remarks on how figures were obtained, where it differs from the usual.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// How the run ended when it did not end by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<Interruption>,
    /// The comparison with `--baseline`, when one was asked for: every figure, base and new,
    /// change, tolerance, and whether it regressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<crate::judge::verdict::Comparison>,
    /// The alerts sent while the run went on and at its end, with every delivery attempt
    /// (when `[alerts]` has channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<crate::alerts::AlertsReport>,
    /// Where the report was sent (`[[distribute]]`) and how that went; the copies sent do not
    /// hold this.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distribution: Vec<crate::output::distribute::Distributed>,
    /// Processes the command left running in its cgroup, killed at the end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leftovers: Vec<Leftover>,
    /// Processes that left the run's cgroup: what they did afterwards is not in the totals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escaped: Vec<crate::measure::escape::EscapedProcess>,
    /// Each process of the run, in the order they ended, with what the kernel accounted to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<crate::measure::processes::ProcessRecord>,
    /// The run's traffic by remote endpoint, the most bytes first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<crate::measure::connections::Connection>,
    /// The Docker containers the run started, each measured apart (their figures are in the
    /// totals too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<crate::measure::containers::ContainerRecord>,
    /// The CPU profile, when one was taken (`--profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::profile::Profile>,
    /// The phases marked inside the run (`cleanroom mark NAME`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<crate::measure::phases::Phase>,
    /// One point per `metrics_interval`: rates and levels over that interval.
    #[serde(default)]
    pub series: Vec<SeriesPoint>,
    /// How the series was kept: every interval, or older intervals merged (long runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series_resolution: Option<crate::measure::model::SeriesResolution>,
    /// Per series name: average, peak (and when), minimum, percentiles, trend.
    #[serde(default)]
    pub aggregates: BTreeMap<String, Aggregate>,
    /// Verdict on each SLO.
    #[serde(default)]
    pub slos: Vec<SloResult>,
    /// Verdict on each threshold.
    #[serde(default)]
    pub thresholds: Vec<ThresholdResult>,
    /// Breaches, clearances, timeouts, OOM kills, signals, limits applied.
    #[serde(default)]
    pub events: Vec<Event>,
    /// Intervals that stand out from the run's own history: the strongest
    /// [`crate::judge::verdict::ANOMALIES_KEPT`] at most, in time order.
    #[serde(default)]
    pub anomalies: Vec<Anomaly>,
    /// How many anomalies were found, when more than `anomalies` keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomalies_found: Option<usize>,
    /// How anomalies were found.
    #[serde(default)]
    pub anomaly_method: String,
    /// Findings in plain words, each with the numbers it rests on.
    #[serde(default)]
    pub insights: Vec<Insight>,
    /// `pass` when every SLO and threshold held, else `fail`; `none` when nothing was judged.
    #[serde(default)]
    pub verdict: Verdict,
    /// The run's name (`--name`), used to group runs in history and trends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tags (`--tag k=v`).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Where it ran.
    #[serde(default)]
    pub host: HostInfo,
}

/// The machine and source tree a run was made on.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostInfo {
    /// Host name.
    #[serde(default)]
    pub hostname: String,
    /// Kernel release.
    #[serde(default)]
    pub kernel: String,
    /// CPUs available.
    #[serde(default)]
    pub cpus: usize,
    /// `git rev-parse HEAD` of the working directory, when it is a repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// Its branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_branch: Option<String>,
}

/// A new run id: a random (version 4) UUID.
pub fn new_run_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Report {
    /// The report of a session's `figures`, not yet judged: measured in `cgroup`, by `command`,
    /// on `host`. What only a front end knows (exit code, notes, interruption, leftovers,
    /// escaped and listed processes, name, tags) is left empty for it to set.
    pub fn unjudged(
        figures: crate::measure::session::Figures,
        command: Vec<String>,
        cgroup: CgroupRef,
        host: HostInfo,
    ) -> Self {
        Self {
            run_id: Some(new_run_id()),
            schema_version: SCHEMA_VERSION,
            command,
            exit_code: 0,
            started_at: humantime::format_rfc3339_seconds(figures.started_at).to_string(),
            wall_time_ns: figures.wall_time_ns,
            cgroup,
            totals: figures.totals,
            block_devices: figures.block_devices,
            kernel: figures.kernel,
            unavailable: figures.unavailable,
            dropped: figures
                .drops
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            probes: figures.probes,
            notes: Vec::new(),
            interrupted: None,
            leftovers: Vec::new(),
            comparison: None,
            alerts: None,
            distribution: Vec::new(),
            escaped: Vec::new(),
            processes: Vec::new(),
            connections: Vec::new(),
            containers: Vec::new(),
            profile: None,
            phases: figures.phases,
            aggregates: figures.aggregates,
            anomalies: figures.anomalies,
            anomalies_found: figures.anomalies_found,
            anomaly_method: crate::judge::analyze::ANOMALY_METHOD.to_owned(),
            series_resolution: figures.series_resolution,
            series: figures.series,
            slos: Vec::new(),
            thresholds: figures.thresholds,
            events: figures.events,
            insights: Vec::new(),
            verdict: Verdict::default(),
            name: None,
            tags: BTreeMap::new(),
            host,
        }
    }
}

impl HostInfo {
    /// This machine, and the source tree of the working directory.
    pub fn current() -> Self {
        let (git_commit, git_branch) = crate::host::git_revision();
        Self {
            hostname: crate::host::hostname(),
            kernel: crate::host::kernel_release(),
            cpus: crate::host::cpus(),
            git_commit,
            git_branch,
        }
    }
}

/// The cgroup a run was measured in.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CgroupRef {
    /// Its path in the v2 hierarchy.
    pub path: String,
    /// Its v2 id (the directory's inode number).
    pub id: u64,
}

/// A run cut short by a signal to Cleanroom.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Interruption {
    /// The signal Cleanroom received ("SIGINT", ...), passed on to the command.
    pub signal: String,
    /// Processes still in the cgroup after the command exited, killed to end the run.
    pub killed_leftovers: usize,
}

/// A process still in the run's cgroup when the command exited (a daemon, a stray child).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Leftover {
    /// Its pid.
    pub pid: i32,
    /// Its command line, cut to 200 bytes.
    pub command: String,
}

/// Kernel figure shown beside a metric in the summary.
fn kernel_twin(metric: Metric) -> Option<(&'static str, &'static str)> {
    match metric {
        Metric::CpuTime => Some(("cpu_usage_ns", "cpu.stat usage_usec")),
        Metric::PageFaultsMajor => Some(("memory_stat_pgmajfault", "memory.stat pgmajfault")),
        _ => None,
    }
}

impl Report {
    /// How many anomalies were found (more than `anomalies` holds when it was bounded).
    pub fn anomaly_count(&self) -> usize {
        self.anomalies_found.unwrap_or(0).max(self.anomalies.len())
    }

    /// The anomalies to list for people: the [`ANOMALIES_LISTED`] strongest, a line each with
    /// units, and how many more were found.
    pub fn listed_anomalies(&self) -> (Vec<String>, usize) {
        let (listed, _) = crate::judge::verdict::strongest(&self.anomalies, ANOMALIES_LISTED);
        let more = self.anomaly_count() - listed.len();
        (listed.iter().map(|a| a.text()).collect(), more)
    }

    /// The command as a shell would take it back: each argument quoted where it needs to be
    /// (`sh -c 'git clone x && sync'`), so it can be pasted into a terminal.
    pub fn command_line(&self) -> String {
        shlex::try_join(self.command.iter().map(String::as_str))
            .unwrap_or_else(|_| self.command.join(" "))
    }

    /// The containers in the summary: each with its start-up time and what it cost.
    fn container_summary(&self) -> String {
        use crate::units::human_bytes;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n  {:<34} {:>24} {:>10} {:>10} {:>10} {:>5}",
            format!("containers ({})", self.containers.len()),
            "start-up",
            "cpu",
            "read",
            "written",
            "exit"
        );
        for c in &self.containers {
            let dash = || "-".to_owned();
            let _ = writeln!(
                out,
                "  {:<34} {:>24} {:>10} {:>10} {:>10} {:>5}",
                crate::measure::processes::cut_to(&format!("{} ({})", c.name, c.image), 34),
                c.startup_text(),
                c.value("cpu_time_ns").map_or_else(dash, human_duration_ns),
                c.value("block_read_bytes").map_or_else(dash, human_bytes),
                c.value("block_write_bytes").map_or_else(dash, human_bytes),
                c.exit_code.map_or_else(dash, |e| e.to_string())
            );
            if let Some(why) = &c.unmeasured {
                let _ = writeln!(out, "    not measured: {why}");
            }
        }
        out
    }

    /// The connections in the summary: the remote endpoints that moved the most bytes, and
    /// loopback traffic in one line apart.
    fn connection_summary(&self) -> String {
        use crate::{measure::connections::talkers, units::human_bytes};
        let mut out = String::new();
        let remote = talkers(&self.connections, false);
        let _ = writeln!(
            out,
            "\n  {:<34} {:>10} {:>10} {:>8} {:>12}",
            format!("remote endpoints ({}), most bytes first", remote.len()),
            "sent",
            "received",
            "retrans",
            "connect max"
        );
        for t in remote.iter().take(5) {
            let _ = writeln!(
                out,
                "  {:<34} {:>10} {:>10} {:>8} {:>12}",
                format!("{} {}", t.protocol, t.remote),
                human_bytes(t.tx_bytes),
                human_bytes(t.rx_bytes),
                t.retransmits,
                t.connect_max_ns.map_or("-".to_owned(), human_duration_ns)
            );
        }
        let loopback = talkers(&self.connections, true);
        if !loopback.is_empty() {
            let (tx, rx): (u64, u64) = loopback
                .iter()
                .fold((0, 0), |(tx, rx), t| (tx + t.tx_bytes, rx + t.rx_bytes));
            let _ = writeln!(
                out,
                "  loopback: {} endpoints, {} sent, {} received",
                loopback.len(),
                human_bytes(tx),
                human_bytes(rx)
            );
        }
        out
    }

    /// The processes in the summary: the busiest by CPU and the commands that cost most.
    fn process_summary(&self) -> String {
        use crate::measure::processes::{by_command, top_by_cpu};
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n  {:<34} {:>8} {:>12} {:>12} {:>5}",
            format!("processes ({}), most CPU first", self.processes.len()),
            "pid",
            "cpu",
            "wall",
            "exit"
        );
        for p in top_by_cpu(&self.processes, 5) {
            let _ = writeln!(
                out,
                "  {:<34} {:>8} {:>12} {:>12} {:>5}",
                p.brief(34),
                p.pid,
                human_duration_ns(p.cpu_time_ns),
                human_duration_ns(p.wall_time_ns()),
                p.exit_code
            );
        }
        let groups: Vec<String> = by_command(&self.processes)
            .iter()
            .take(5)
            .map(|g| {
                format!(
                    "{} ×{} {}",
                    g.command,
                    g.count,
                    human_duration_ns(g.cpu_time_ns)
                )
            })
            .collect();
        let _ = writeln!(out, "  by program: {}", groups.join(", "));
        out
    }

    /// The phases marked in the run: when each began, how long it took, its CPU.
    fn phase_summary(&self) -> String {
        let mut out = format!(
            "\n  {:<30} {:>12} {:>12} {:>12}\n",
            "phase (cleanroom mark)", "began", "wall time", "cpu_time"
        );
        for p in &self.phases {
            let cpu = match p.totals.get(Metric::CpuTime.name()) {
                Some(Total::Value(v)) => human(*v, Metric::CpuTime.unit()),
                _ => "unavailable".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {:<30} {:>12} {:>12} {:>12}",
                p.name,
                human_duration_ns(p.start_ns),
                human_duration_ns(p.wall_time_ns),
                cpu
            );
        }
        out
    }

    /// The summary table printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let ended = match (&self.interrupted, self.exit_code) {
            (Some(i), code) => format!("was interrupted by {} (exit code {code})", i.signal),
            (None, 0) => "exited 0".to_owned(),
            (None, code) => format!("failed with exit code {code}"),
        };
        let _ = writeln!(
            out,
            "\ncleanroom: `{}` {ended} after {}",
            self.command_line(),
            human_duration_ns(self.wall_time_ns)
        );
        let _ = writeln!(out, "  cgroup {} (id {})", self.cgroup.path, self.cgroup.id);
        let _ = writeln!(
            out,
            "\n  {:<30} {:>16}   kernel's own figure",
            "metric", "measured"
        );
        for metric in Metric::ALL {
            let measured = match self.totals.get(metric.name()) {
                Some(Total::Value(v)) => human(*v, metric.unit()),
                _ => "unavailable".to_owned(),
            };
            let twin = kernel_twin(*metric)
                .and_then(|(key, source)| {
                    let v = self.kernel.get(key)?;
                    Some(format!("{} ({source})", human(*v, metric.unit())))
                })
                .unwrap_or_default();
            let line = format!("  {:<30} {measured:>16}   {twin}", metric.name());
            let _ = writeln!(out, "{}", line.trim_end());
        }
        if let (Some(Total::Value(u)), Some(Total::Value(k)), Some(pgfault)) = (
            self.totals.get(Metric::PageFaultsUser.name()),
            self.totals.get(Metric::PageFaultsKernel.name()),
            self.kernel.get("memory_stat_pgfault"),
        ) {
            let _ = writeln!(
                out,
                "  {:<30} {:>16}   {} (memory.stat pgfault)",
                "page_faults (user+kernel)",
                group_thousands(u + k),
                group_thousands(*pgfault)
            );
        }
        let _ = writeln!(
            out,
            "\n  {:<30} {:>7} {:>10} {:>10} {:>10} {:>10}",
            "latency", "count", "p50", "p90", "p99", "max"
        );
        for latency in Latency::ALL {
            let line = match self.totals.get(latency.name()) {
                Some(Total::Latency(l)) if l.count > 0 => format!(
                    "  {:<30} {:>7} {:>10} {:>10} {:>10} {:>10}",
                    latency.name(),
                    group_thousands(l.count),
                    human_duration_ns(l.p50_ns),
                    human_duration_ns(l.p90_ns),
                    human_duration_ns(l.p99_ns),
                    human_duration_ns(l.max_ns)
                ),
                Some(Total::Latency(_)) => format!("  {:<30} {:>7}", latency.name(), 0),
                _ => format!("  {:<30} unavailable", latency.name()),
            };
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(
            out,
            "  (percentiles are bucket upper bounds: at most {:.1}% above the true value)",
            crate::measure::model::RELATIVE_ERROR * 100.0
        );
        if !self.block_devices.is_empty() {
            let _ = writeln!(
                out,
                "\n  {:<16} {:>12} {:>12} {:>10} {:>10}",
                "block device", "read", "written", "reads", "writes"
            );
            for d in &self.block_devices {
                let _ = writeln!(
                    out,
                    "  {:<16} {:>12} {:>12} {:>10} {:>10}",
                    format!("{} ({})", d.name.as_deref().unwrap_or("?"), d.device),
                    human_bytes(d.read_bytes),
                    human_bytes(d.write_bytes),
                    group_thousands(d.read_ops),
                    group_thousands(d.write_ops)
                );
            }
        }
        if !self.phases.is_empty() {
            out.push_str(&self.phase_summary());
        }
        if !self.containers.is_empty() {
            out.push_str(&self.container_summary());
        }
        if !self.connections.is_empty() {
            out.push_str(&self.connection_summary());
        }
        if !self.processes.is_empty() {
            out.push_str(&self.process_summary());
        }
        if let Some(profile) = &self.profile {
            out.push_str(&profile_summary(profile));
        }
        if !self.slos.is_empty() || !self.thresholds.is_empty() {
            let _ = writeln!(
                out,
                "\n  {:<44} {:>14} {:>18}  verdict",
                "SLO / threshold", "measured", "objective"
            );
            let mark = |s: Status| match s {
                Status::Pass => "pass",
                Status::Fail => "FAIL",
                Status::Unmeasured => "UNMEASURED",
                Status::NotApplicable => "n/a",
            };
            for r in &self.slos {
                let _ = writeln!(
                    out,
                    "  {:<44} {:>14} {:>18}  {}",
                    format!(
                        "{} ({}{})",
                        r.name,
                        r.objective.split_whitespace().next().unwrap_or(""),
                        r.phase
                            .as_ref()
                            .map(|p| format!(", phase {p}"))
                            .unwrap_or_default()
                    ),
                    r.measured_text,
                    r.target_text,
                    mark(r.status)
                );
            }
            for r in &self.thresholds {
                let name = r
                    .name
                    .strip_prefix("performance_monitoring.")
                    .unwrap_or(&r.name);
                let _ = writeln!(
                    out,
                    "  {:<44} {:>14} {:>18}  {}{}",
                    name,
                    r.peak_text,
                    format!("<= {}", r.limit_text),
                    mark(r.status),
                    if r.breaches > 0 {
                        format!(" ({} breaches)", r.breaches)
                    } else {
                        String::new()
                    }
                );
            }
        }
        if !self.insights.is_empty() {
            let _ = writeln!(out, "\n  insights:");
            for i in &self.insights {
                let _ = writeln!(out, "  - {}", i.text);
            }
        }
        if !self.anomalies.is_empty() {
            let (listed, more) = self.listed_anomalies();
            let _ = writeln!(
                out,
                "\n  anomalies ({}, the strongest first):",
                self.anomaly_count()
            );
            for line in listed {
                let _ = writeln!(out, "  - {line}");
            }
            if more > 0 {
                let _ = writeln!(out, "  … and {more} more");
            }
        }
        if matches!(self.verdict, Verdict::Pass | Verdict::Fail) {
            let _ = writeln!(out, "\n  verdict: {}", self.verdict.as_str().to_uppercase());
        }
        if let Some(probes) = &self.probes {
            let _ = writeln!(out, "\n  probes: {}", probes.line());
        }
        if let Some(alerts) = &self.alerts {
            let _ = writeln!(out, "\n  alerts: {}", alerts.line());
        }
        for note in &self.notes {
            let _ = writeln!(out, "\n  note: {note}");
        }
        // A start not seen is expected right after the probes attach (an I/O or a wakeup already
        // under way): said as a note. Anything else lost is a warning.
        let unseen = self.dropped.get(LATENCY_START_UNSEEN).copied().unwrap_or(0);
        if unseen > 0 {
            let _ = writeln!(
                out,
                "\n  note: {unseen} latencies were left out because their start was not seen \
                 (already under way when the probes attached)"
            );
        }
        let lost: BTreeMap<&String, &u64> = self
            .dropped
            .iter()
            .filter(|(k, v)| k.as_str() != LATENCY_START_UNSEEN && **v > 0)
            .collect();
        if !lost.is_empty() {
            let _ = writeln!(
                out,
                "\n  warning: {} events could not be counted: {}",
                lost.values().copied().sum::<u64>(),
                lost.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if !self.unavailable.is_empty() {
            let _ = writeln!(
                out,
                // Not always the host: a sampled figure needs a run of at least one interval.
                "\n  not measured in this run: {} (why: the notes above, and `cleanroom doctor`)",
                self.unavailable.join(", ")
            );
        }
        out
    }
}

/// The profiles in the summary: how each was taken, its kinds of wait or directions, and the
/// functions with the most of it their own (ten for the CPU's, five for the others).
fn profile_summary(p: &crate::profile::Profile) -> String {
    use crate::profile::ProfileKind;
    let mut out = String::new();
    for view in p.views() {
        let name = match view.kind {
            ProfileKind::Cpu => "profile",
            ProfileKind::OffCpu => "off-CPU",
            ProfileKind::Faults => "page faults",
            ProfileKind::Block => "block I/O",
        };
        let _ = writeln!(out, "\n  {name}: {}", p.describe(view.kind));
        if let Some(kinds) = view.kinds_line() {
            let _ = writeln!(out, "  {kinds}");
        }
        let rows = if view.kind == ProfileKind::Cpu { 10 } else { 5 };
        let mut top = view.own_top(rows).peekable();
        if top.peek().is_none() {
            continue;
        }
        if view.kind == ProfileKind::Cpu {
            let _ = writeln!(out, "  {:<56} {:>7} {:>7}", "function", "self", "total");
        } else {
            let _ = writeln!(out, "  {:<48} {:>10} {:>7}", "function", "self", "of all");
        }
        for f in top {
            let _ = if view.kind == ProfileKind::Cpu {
                writeln!(
                    out,
                    "  {:<56} {:>6.1}% {:>6.1}%",
                    crate::measure::processes::cut_to(&f.function, 56),
                    f.self_share * 100.0,
                    f.total_share * 100.0
                )
            } else {
                writeln!(
                    out,
                    "  {:<48} {:>10} {:>6.1}%",
                    crate::measure::processes::cut_to(&f.function, 48),
                    view.human(f.self_samples),
                    f.self_share * 100.0
                )
            };
        }
    }
    for (kind, why) in &p.unavailable {
        let _ = writeln!(out, "  {kind} profile not taken: {why}");
    }
    out
}

#[cfg(test)]
impl Report {
    /// A small report for tests.
    pub(crate) fn example() -> Report {
        Report {
            run_id: None,
            schema_version: SCHEMA_VERSION,
            command: vec!["true".into()],
            exit_code: 0,
            started_at: "2026-01-01T00:00:00Z".into(),
            wall_time_ns: 1_500_000_000,
            cgroup: CgroupRef {
                path: "/sys/fs/cgroup/cleanroom/run-1".into(),
                id: 42,
            },
            totals: BTreeMap::from([("cpu_time_ns".into(), Total::Value(2_000_000_000))]),
            block_devices: vec![],
            probes: None,
            notes: vec![],
            series: vec![],
            aggregates: BTreeMap::new(),
            slos: vec![],
            thresholds: vec![],
            events: vec![],
            anomalies: vec![],
            anomalies_found: None,
            anomaly_method: String::new(),
            insights: vec![],
            verdict: Verdict::None,
            name: None,
            tags: BTreeMap::new(),
            host: HostInfo::default(),
            kernel: BTreeMap::from([("cpu_usage_ns".into(), 2_000_001_000)]),
            unavailable: vec!["context_switches_voluntary".into()],
            dropped: BTreeMap::from([("stats_map_full".into(), 0)]),
            interrupted: None,
            leftovers: vec![],
            series_resolution: None,
            comparison: None,
            alerts: None,
            distribution: Vec::new(),
            escaped: vec![],
            processes: vec![],
            connections: vec![],
            containers: vec![],
            profile: None,
            phases: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unseen_starts_are_a_note_and_real_losses_a_warning() {
        let mut r = Report::example();
        r.dropped = BTreeMap::from([(LATENCY_START_UNSEEN.to_owned(), 3)]);
        let text = r.summary();
        assert!(text.contains("note: 3 latencies were left out"), "{text}");
        assert!(!text.contains("warning"), "{text}");
        r.dropped.insert("stats_map_full".into(), 2);
        let text = r.summary();
        assert!(
            text.contains("warning: 2 events could not be counted: stats_map_full 2"),
            "{text}"
        );
    }

    #[test]
    fn the_command_is_shown_as_a_shell_takes_it_back() {
        let mut r = Report::example();
        r.command = vec!["sh".into(), "-c".into(), "git clone x && sync".into()];
        assert_eq!(r.command_line(), "sh -c 'git clone x && sync'");
        r.command = vec!["cargo".into(), "test".into()];
        assert_eq!(r.command_line(), "cargo test");
    }

    #[test]
    fn summary_says_what_the_probes_cost_or_why_it_is_unknown() {
        let mut r = Report::example();
        assert!(!r.summary().contains("probes:"));
        r.probes = Some(crate::kernel::cost::ProbesCost::Unknown {
            unknown_because: "no BPF statistics".into(),
        });
        assert!(
            r.summary()
                .contains("\n  probes: unknown: no BPF statistics\n")
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""probes":{"unknown_because":"no BPF statistics"}"#));
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), r);
    }

    #[test]
    fn summary_says_unavailable_not_zero() {
        let text = Report::example().summary();
        let line = text
            .lines()
            .find(|l| l.contains("context_switches_voluntary"))
            .expect("a line per metric");
        assert!(line.contains("unavailable"), "{line}");
        assert!(text.contains("2.000 s (cpu.stat usage_usec)"), "{text}");
    }

    #[test]
    fn the_summary_lists_each_phase_with_its_cpu() {
        let mut report = Report::example();
        report.phases.push(crate::measure::phases::Phase {
            name: "build".into(),
            start_ns: 50_000_000,
            end_ns: 1_550_000_000,
            wall_time_ns: 1_500_000_000,
            totals: BTreeMap::from([("cpu_time_ns".into(), Total::Value(1_200_000_000))]),
        });
        let text = report.summary();
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("build"))
            .unwrap_or_else(|| panic!("no phase line in {text}"));
        assert!(
            line.contains("50.0 ms") && line.contains("1.500 s") && line.contains("1.200 s"),
            "{line}"
        );
    }

    #[test]
    fn json_round_trips_and_keeps_contract_names() {
        let report = Report::example();
        let value = serde_json::to_value(&report).unwrap();
        for key in [
            "schema_version",
            "command",
            "exit_code",
            "started_at",
            "wall_time_ns",
            "cgroup",
            "totals",
            "kernel",
            "unavailable",
        ] {
            assert!(value.get(key).is_some(), "missing {key} in {value}");
        }
        assert!(value.get("interrupted").is_none());
        let back: Report = serde_json::from_value(value).unwrap();
        assert_eq!(back, report);
    }

    /// A report with `n` anomalies of memory, the strongest (score `n`) in the middle of the run.
    fn with_anomalies(n: usize) -> Report {
        let mut r = Report::example();
        r.anomalies = (0..n)
            .map(|i| Anomaly {
                t_ns: i as u64 * 1_000_000_000,
                metric: if i % 2 == 0 {
                    "memory_current_bytes".into()
                } else {
                    "block_write_bytes_per_sec".into()
                },
                value: 97_001_472.0 + i as f64,
                median: 84_754_432.0,
                score: 4.0
                    + (n / 2).abs_diff(i) as f64 * -0.01
                    + if i == n / 2 { 10.0 } else { 0.0 },
            })
            .collect();
        r
    }

    #[test]
    fn anomalies_are_listed_with_units_the_strongest_five() {
        let r = with_anomalies(175);
        let text = r.summary();
        assert!(!text.contains("97001472"), "a raw float in:\n{text}");
        let lines: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.contains("anomalies (175"))
            .skip(1)
            .take_while(|l| l.starts_with("  - ") || l.starts_with("  …"))
            .collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(
            lines[0].contains("at 87.0s: 92.5 MiB/s vs median 80.8 MiB/s (score 14.0)"),
            "the strongest first: {lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains(": 92.5 MiB vs median 80.8 MiB (")),
            "{lines:#?}"
        );
        assert_eq!(lines[5], "  … and 170 more", "{lines:#?}");

        let few = with_anomalies(3).summary();
        assert!(!few.contains("more"), "{few}");
    }
}
