//! The metrics Cleanroom measures: their names in reports, units and meaning; and the unit a
//! figure is read in ([`Kind`]), with how its values read for people.
//!
//! One list, so that the report, the summary, `doctor` and the hooks agree on every name.
//! Near the bottom of the crate: it imports only [`crate::units`].

use cleanroom_common::hist_kind;

use crate::units::{
    group_thousands, human_bytes, human_duration_ns, parse_bytes, parse_duration, parse_percent,
    truncate_quote,
};

/// What a number counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds.
    Nanoseconds,
    /// Bytes.
    Bytes,
    /// A count of events.
    Count,
}

/// Formats a value of `unit` for people.
pub fn human(value: u64, unit: Unit) -> String {
    match unit {
        Unit::Nanoseconds => human_duration_ns(value),
        Unit::Bytes => human_bytes(value),
        Unit::Count => group_thousands(value),
    }
}

/// The unit a figure is read and written in: an objective's metric, a time series, a compared
/// figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Nanoseconds.
    Time,
    /// Bytes.
    Bytes,
    /// Bytes per second.
    BytesPerSec,
    /// A count.
    Count,
    /// Events per second.
    PerSec,
    /// Percent of one core.
    Percent,
}

impl Kind {
    /// The kind of a metric's values.
    pub fn of(unit: Unit) -> Kind {
        match unit {
            Unit::Nanoseconds => Kind::Time,
            Unit::Bytes => Kind::Bytes,
            Unit::Count => Kind::Count,
        }
    }

    /// The kind of a time series' values, by its name in `series`: `cpu_percent`, a level
    /// (`memory_current_bytes`), or a rate (`<counter>_per_sec`, `block_bytes_per_sec`); the
    /// unit comes from the metric's declaration ([`Metric::unit`]) where there is one.
    pub fn of_series(name: &str) -> Kind {
        if name == "cpu_percent" {
            return Kind::Percent;
        }
        let declared = |name: &str| {
            Metric::ALL
                .iter()
                .find(|m| m.name() == name)
                .map(|m| m.unit())
        };
        match name.strip_suffix("_per_sec") {
            Some(counter)
                if declared(counter) == Some(Unit::Bytes) || counter.ends_with("_bytes") =>
            {
                Kind::BytesPerSec
            }
            Some(_) => Kind::PerSec,
            None => declared(name).map_or_else(
                || {
                    if name.ends_with("_bytes") {
                        Kind::Bytes
                    } else {
                        Kind::Count
                    }
                },
                Kind::of,
            ),
        }
    }

    /// Formats a value of this kind for people.
    pub fn format(self, v: f64) -> String {
        match self {
            Kind::Time => human_duration_ns(v.max(0.0) as u64),
            Kind::Bytes => human_bytes(v.max(0.0) as u64),
            Kind::BytesPerSec => format!("{}/s", human_bytes(v.max(0.0) as u64)),
            Kind::Count => format!("{v:.0}"),
            Kind::PerSec => format!("{v:.1}/s"),
            Kind::Percent => format!("{v:.1}%"),
        }
    }

    /// Formats a change (a difference, a slope per run) of this kind, with its sign: `+1.2 MiB`,
    /// `-3.4 ms`, `+0.5` (counts keep a decimal: a slope of less than one is still a slope).
    pub fn format_change(self, v: f64) -> String {
        match self {
            Kind::Count => format!("{v:+.1}"),
            _ if v < 0.0 => format!("-{}", self.format(-v)),
            _ => format!("+{}", self.format(v)),
        }
    }

    /// Parses a value of this kind as people write it: `15s`, `100MB`, `10MiB/s`, `3`, `80%`.
    pub(crate) fn parse(self, text: &str) -> Result<f64, String> {
        match self {
            Kind::Time => parse_duration(text).map(|d| d.as_nanos() as f64),
            Kind::Bytes => parse_bytes(text).map(|b| b as f64),
            Kind::BytesPerSec => parse_bytes(text.trim().trim_end_matches("/s")).map(|b| b as f64),
            Kind::Count | Kind::PerSec => text
                .trim()
                .trim_end_matches("/s")
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    format!(
                        "{} is not a count or rate (a number, at least 0)",
                        truncate_quote(text, 60)
                    )
                }),
            Kind::Percent => parse_percent(text),
        }
    }
}

macro_rules! metrics {
    ($( $variant:ident => $name:literal, $unit:ident, $doc:literal; )*) => {
        /// A metric with one number per run.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Metric {
            $( #[doc = $doc] $variant, )*
        }

        impl Metric {
            /// Every metric, in report order.
            pub const ALL: &[Metric] = &[ $( Metric::$variant, )* ];

            /// Name in `totals` of the JSON report.
            pub fn name(self) -> &'static str {
                match self { $( Metric::$variant => $name, )* }
            }

            /// Unit of the value.
            pub fn unit(self) -> Unit {
                match self { $( Metric::$variant => Unit::$unit, )* }
            }

            /// One line on what it means.
            pub fn description(self) -> &'static str {
                match self { $( Metric::$variant => $doc, )* }
            }
        }
    };
}

metrics! {
    CpuTime => "cpu_time_ns", Nanoseconds,
        "time the cgroup's tasks spent on a CPU, as the scheduler charges it (cpu.stat usage_usec)";
    ContextSwitchesVoluntary => "context_switches_voluntary", Count,
        "switches away from a task that blocked (I/O, sleep, lock)";
    ContextSwitchesInvoluntary => "context_switches_involuntary", Count,
        "switches away from a task that was preempted while it could still run";
    PageFaultsUser => "page_faults_user", Count,
        "page faults taken in user mode";
    PageFaultsKernel => "page_faults_kernel", Count,
        "page faults taken in kernel mode (e.g. copying to or from user memory)";
    PageFaultsMajor => "page_faults_major", Count,
        "faults that had to wait for I/O, from each task's own count when it exits";
    BlockReadBytes => "block_read_bytes", Bytes,
        "bytes read from block devices by the run's own bios (device level)";
    BlockWriteBytes => "block_write_bytes", Bytes,
        "bytes written to block devices by bios charged to the run (device level: without cgroup writeback, buffered writes the kernel's flusher writes back are not among them)";
    BlockReadOps => "block_read_ops", Count, "read bios submitted";
    BlockWriteOps => "block_write_ops", Count, "write bios submitted";
    IoReadBytes => "io_read_bytes", Bytes,
        "bytes the run's tasks caused to be read from storage, as the kernel accounts each task (/proc/PID/io read_bytes)";
    IoWriteBytes => "io_write_bytes", Bytes,
        "bytes the run's tasks wrote to storage: dirtied in the page cache or written directly, as the kernel accounts each task (/proc/PID/io write_bytes, getrusage ru_oublock)";
    IoCancelledWriteBytes => "io_cancelled_write_bytes", Bytes,
        "of io_write_bytes, bytes dirtied and then dropped before writeback (files truncated or deleted in time)";
    NetRxBytes => "net_rx_bytes", Bytes,
        "bytes received by the cgroup's sockets (IP header and payload, no link-layer header)";
    NetTxBytes => "net_tx_bytes", Bytes, "bytes sent by the cgroup's sockets (IP header and payload)";
    NetRxPackets => "net_rx_packets", Count, "packets received (a GRO aggregate counts once)";
    NetTxPackets => "net_tx_packets", Count, "packets sent (a GSO packet counts once)";
    TcpRetransmits => "tcp_retransmits", Count, "TCP segments retransmitted";
    ProcessesForked => "processes_forked", Count, "new processes (not threads) started";
    ProcessesExited => "processes_exited", Count, "processes whose last thread exited";
    MemoryPeakBytes => "memory_peak_bytes", Bytes,
        "highest memory charged to the cgroup (memory.peak, or v1 memory.max_usage_in_bytes)";
    MemoryCurrentBytes => "memory_current_bytes", Bytes,
        "memory charged at the end, page cache included (memory.current / memory.usage_in_bytes)";
    MemoryAnonPeakBytes => "memory_anon_peak_bytes", Bytes,
        "highest anonymous (non-file) memory of the run across samples (memory.stat anon / v1 total_rss): heaps and stacks, without page cache";
    ProcessPeakRssBytes => "process_peak_rss_bytes", Bytes,
        "largest peak resident set of a single process of the run (its high-water RSS when it exited, getrusage ru_maxrss)";
}

impl Metric {
    /// Whether it only ever grows during a run (a counter, with a rate per interval), rather
    /// than a level or a peak.
    pub fn is_counter(self) -> bool {
        !matches!(
            self,
            Metric::MemoryPeakBytes
                | Metric::MemoryCurrentBytes
                | Metric::MemoryAnonPeakBytes
                | Metric::ProcessPeakRssBytes
        )
    }
}

/// A latency distribution, kept as a histogram in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Latency {
    /// Block reads, request issue to completion.
    BlockRead,
    /// Block writes, request issue to completion.
    BlockWrite,
    /// Wakeup (or preemption) to running on a CPU.
    Runqueue,
    /// TCP connect: SYN sent to established.
    TcpConnect,
}

impl Latency {
    /// Every latency, in report order.
    pub const ALL: &[Latency] = &[
        Latency::BlockRead,
        Latency::BlockWrite,
        Latency::Runqueue,
        Latency::TcpConnect,
    ];

    /// Name in `totals` of the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            Latency::BlockRead => "block_read_latency",
            Latency::BlockWrite => "block_write_latency",
            Latency::Runqueue => "runqueue_latency",
            Latency::TcpConnect => "tcp_connect_latency",
        }
    }

    /// The kernel's `hist_kind` for it.
    pub fn kind(self) -> u32 {
        match self {
            Latency::BlockRead => hist_kind::BLOCK_READ,
            Latency::BlockWrite => hist_kind::BLOCK_WRITE,
            Latency::Runqueue => hist_kind::RUNQUEUE,
            Latency::TcpConnect => hist_kind::TCP_CONNECT,
        }
    }

    /// One line on what it means.
    pub fn description(self) -> &'static str {
        match self {
            Latency::BlockRead => "block read requests, from issue to the device until completion",
            Latency::BlockWrite => {
                "block write requests, from issue to the device until completion"
            }
            Latency::Runqueue => {
                "time runnable tasks waited for a CPU (wakeup or preemption to running)"
            }
            Latency::TcpConnect => "TCP connects, from SYN sent to established",
        }
    }
}

/// Any metric name: a number or a latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnyMetric {
    /// One number.
    Value(Metric),
    /// A distribution.
    Latency(Latency),
}

impl AnyMetric {
    /// Every metric, numbers first.
    pub fn all() -> impl Iterator<Item = AnyMetric> {
        Metric::ALL
            .iter()
            .map(|m| AnyMetric::Value(*m))
            .chain(Latency::ALL.iter().map(|l| AnyMetric::Latency(*l)))
    }

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            AnyMetric::Value(m) => m.name(),
            AnyMetric::Latency(l) => l.name(),
        }
    }
}
