//! The metrics Cleanroom measures: their names in reports, units and meaning.
//!
//! One list, so that the report, the summary, `doctor` and the hooks agree on every name.

use cleanroom_common::hist_kind;

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
