//! Turning map contents and cgroupfs reads into the totals of a report.
//!
//! [`Sample::totals`] is pure; it decides, for every metric, a value or "unavailable".

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{
    cgroupfs::cgroup::{CpuStat, MemoryStat},
    cgroupfs::taskio::TaskIo,
    kernel::probe::Counted,
    measure::model::{self, LatencySummary},
    metric::{AnyMetric, Latency, Metric},
};

/// One total in a report: a number, or a latency distribution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Total {
    /// A count, bytes or nanoseconds (see the metric's unit).
    Value(u64),
    /// A latency histogram with its percentiles.
    Latency(LatencySummary),
}

/// Block I/O of a run on one device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockDevice {
    /// `major:minor`.
    pub device: String,
    /// Its name under /dev, when the kernel still knows it.
    pub name: Option<String>,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read bios.
    pub read_ops: u64,
    /// Write bios.
    pub write_ops: u64,
    /// Read request latency on this device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_latency: Option<LatencySummary>,
    /// Write request latency on this device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_latency: Option<LatencySummary>,
}

/// Everything read at the end of a run.
#[derive(Clone, Debug)]
pub struct Sample {
    /// What the probes counted.
    pub counted: Counted,
    /// The kernel's CPU accounting of the run cgroup; none when the cgroup was gone before it
    /// could be read (the agent finishing a removed cgroup).
    pub cpu: Option<CpuStat>,
    /// The kernel's memory accounting, where the host has one for the run.
    pub memory: Option<MemoryStat>,
    /// Largest peak RSS of a single process of the run (getrusage), the last-resort memory
    /// figure when no cgroup accounts memory.
    pub max_rss_bytes: Option<u64>,
    /// Storage I/O of the run's threads still alive (the probes count the others).
    pub live_io: TaskIo,
    /// Highest anonymous memory seen in the samples so far, where memory is sampled.
    pub anon_peak_bytes: Option<u64>,
}

impl Sample {
    /// The value of a one-number metric, or `None` when it cannot be told here.
    pub fn value(&self, metric: Metric) -> Option<u64> {
        let s = &self.counted.stats;
        let block = |f: fn(&cleanroom_common::BlockStats) -> u64| {
            self.counted.block.values().map(f).sum::<u64>()
        };
        Some(match metric {
            Metric::CpuTime => s.cpu_time_ns,
            Metric::ContextSwitchesVoluntary => s.switches_voluntary,
            Metric::ContextSwitchesInvoluntary => s.switches_involuntary,
            Metric::PageFaultsUser => s.page_faults_user,
            Metric::PageFaultsKernel => s.page_faults_kernel,
            Metric::PageFaultsMajor => s.page_faults_major,
            Metric::BlockReadBytes => block(|b| b.read_bytes),
            Metric::BlockWriteBytes => block(|b| b.write_bytes),
            Metric::BlockReadOps => block(|b| b.read_ops),
            Metric::BlockWriteOps => block(|b| b.write_ops),
            Metric::IoReadBytes => s.io_read_bytes.saturating_add(self.live_io.read_bytes),
            Metric::IoWriteBytes => s.io_write_bytes.saturating_add(self.live_io.write_bytes),
            Metric::IoCancelledWriteBytes => s
                .io_cancelled_write_bytes
                .saturating_add(self.live_io.cancelled_write_bytes),
            Metric::NetRxBytes => s.net_rx_bytes,
            Metric::NetTxBytes => s.net_tx_bytes,
            Metric::NetRxPackets => s.net_rx_packets,
            Metric::NetTxPackets => s.net_tx_packets,
            Metric::TcpRetransmits => s.tcp_retransmits,
            Metric::ProcessesForked => s.processes_forked,
            Metric::ProcessesExited => s.processes_exited,
            // Without the kernel's peak (cgroup v2 before 5.19) there is none to report: a
            // sampled maximum can miss nearly all of a short spike (the run's notes say so).
            Metric::MemoryPeakBytes => match self.memory {
                Some(m) => m.peak_bytes?,
                None => self.max_rss_bytes?,
            },
            Metric::MemoryCurrentBytes => self.memory?.current_bytes,
            Metric::MemoryAnonPeakBytes => self.anon_peak_bytes?,
            Metric::ProcessPeakRssBytes => s.process_peak_rss_pages.saturating_mul(page_size()),
        })
    }

    /// The counters (every metric but levels and peaks) by name, for the time series.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        Metric::ALL
            .iter()
            .filter(|m| m.is_counter())
            .filter_map(|m| Some((m.name().to_owned(), self.value(*m)?)))
            .collect()
    }

    /// Totals by metric name, and the metrics that could not be measured. `hook_unavailable`
    /// are the metrics whose hooks did not attach.
    pub fn totals(
        &self,
        hook_unavailable: &BTreeSet<AnyMetric>,
    ) -> (BTreeMap<String, Total>, Vec<String>) {
        let mut totals = BTreeMap::new();
        let mut unavailable = Vec::new();
        for metric in Metric::ALL {
            match self.value(*metric) {
                Some(v) if !hook_unavailable.contains(&AnyMetric::Value(*metric)) => {
                    totals.insert(metric.name().to_owned(), Total::Value(v));
                }
                _ => unavailable.push(metric.name().to_owned()),
            }
        }
        for latency in Latency::ALL {
            if hook_unavailable.contains(&AnyMetric::Latency(*latency)) {
                unavailable.push(latency.name().to_owned());
                continue;
            }
            let h = self
                .counted
                .latencies
                .get(latency)
                .copied()
                .unwrap_or_else(model::empty_histogram);
            totals.insert(
                latency.name().to_owned(),
                Total::Latency(model::summarize(&h)),
            );
        }
        (totals, unavailable)
    }

    /// The kernel's own figures, for cross-checking.
    pub fn kernel(&self) -> BTreeMap<String, u64> {
        let mut k = BTreeMap::new();
        if let Some(cpu) = self.cpu {
            k.insert("cpu_usage_ns".to_owned(), cpu.usage_usec * 1_000);
            k.insert("cpu_user_ns".to_owned(), cpu.user_usec * 1_000);
            k.insert("cpu_system_ns".to_owned(), cpu.system_usec * 1_000);
        }
        if let Some(m) = self.memory {
            if let Some(v) = m.pgfault {
                k.insert("memory_stat_pgfault".to_owned(), v);
            }
            if let Some(v) = m.pgmajfault {
                k.insert("memory_stat_pgmajfault".to_owned(), v);
            }
        }
        k
    }

    /// Per-device block I/O, busiest first.
    pub fn block_devices(&self) -> Vec<BlockDevice> {
        let latency = |dev: u32, l: Latency| {
            self.counted
                .block_latencies
                .get(&(dev, l))
                .filter(|h| h.count > 0)
                .map(model::summarize)
        };
        let mut devices: Vec<BlockDevice> = self
            .counted
            .block
            .iter()
            .map(|(dev, b)| {
                let (major, minor) = (dev >> 20, dev & 0xf_ffff);
                BlockDevice {
                    read_latency: latency(*dev, Latency::BlockRead),
                    write_latency: latency(*dev, Latency::BlockWrite),
                    device: format!("{major}:{minor}"),
                    name: device_name(major, minor),
                    read_bytes: b.read_bytes,
                    write_bytes: b.write_bytes,
                    read_ops: b.read_ops,
                    write_ops: b.write_ops,
                }
            })
            .collect();
        devices.sort_by_key(|d| std::cmp::Reverse(d.read_bytes + d.write_bytes));
        devices
    }
}

/// What a report must say when the device-level figure misses writes the run made: buffered
/// data written back by the kernel's flusher threads after the run, or — on a host without
/// cgroup writeback (`writeback` false: the memory and io controllers are not both on cgroup v2
/// for the run) — written back on the root cgroup's account. `None` when the two agree within
/// 1 MiB.
pub fn write_note(totals: &BTreeMap<String, Total>, writeback: bool) -> Option<String> {
    let value = |m: Metric| match totals.get(m.name()) {
        Some(Total::Value(v)) => Some(*v),
        _ => None,
    };
    let written = value(Metric::IoWriteBytes)?;
    let cancelled = value(Metric::IoCancelledWriteBytes).unwrap_or(0);
    let block = value(Metric::BlockWriteBytes).unwrap_or(0);
    if written.saturating_sub(cancelled) <= block.saturating_add(1 << 20) {
        return None;
    }
    let why = if writeback {
        "the rest was still in the page cache when the run ended (written back later, outside \
         the run; add `sync` to the command to count it there)"
    } else {
        "this host has no cgroup writeback (the memory and io controllers are not both on \
         cgroup v2 for the run), so the kernel's flusher threads write buffered data back on \
         the root cgroup's account"
    };
    Some(format!(
        "io_write_bytes ({}) is what the run wrote, as the kernel accounts each task; \
         block_write_bytes ({}) holds only the device writes charged to the run: {why}",
        crate::units::human_bytes(written),
        crate::units::human_bytes(block),
    ))
}

/// What a report must say when `page_faults_major` exceeds the cgroup's own `memory.stat
/// pgmajfault`, shown beside it. Both are the kernel's: a task's `maj_flt` (what getrusage,
/// `ps` and `time` show, and what Cleanroom sums) counts every fault that had to wait for a
/// read, retried faults included — also one that waited for a read another task had started;
/// the cgroup's event counts only the faults that found the page absent and started the read.
/// Measured: equal for one process (12 = 12), 18 vs 15 for four Pythons starting at once after
/// the page cache was dropped.
pub fn fault_note(
    totals: &BTreeMap<String, Total>,
    kernel: &BTreeMap<String, u64>,
) -> Option<String> {
    let Some(Total::Value(ours)) = totals.get(Metric::PageFaultsMajor.name()) else {
        return None;
    };
    let theirs = *kernel.get("memory_stat_pgmajfault")?;
    (*ours > theirs).then(|| {
        format!(
            "page_faults_major ({ours}) counts, as getrusage does, every fault that waited for a \
             read, also a read another task of the run had started; memory.stat pgmajfault \
             ({theirs}) counts only the faults that started one"
        )
    })
}

/// The size of a page, in which the kernel keeps RSS.
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
}

/// `loop0` for 7:0, from /sys/dev/block.
fn device_name(major: u32, minor: u32) -> Option<String> {
    let link = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(written: u64, cancelled: u64, block: u64) -> BTreeMap<String, Total> {
        BTreeMap::from([
            ("io_write_bytes".to_owned(), Total::Value(written)),
            (
                "io_cancelled_write_bytes".to_owned(),
                Total::Value(cancelled),
            ),
            ("block_write_bytes".to_owned(), Total::Value(block)),
        ])
    }

    #[test]
    fn memory_peak_is_the_kernels_or_unavailable() {
        let sample = |peak: Option<u64>, rss: Option<u64>| Sample {
            counted: Counted::default(),
            cpu: Some(CpuStat::default()),
            memory: Some(MemoryStat {
                current_bytes: 10,
                peak_bytes: peak,
                ..MemoryStat::default()
            }),
            max_rss_bytes: rss,
            live_io: TaskIo::default(),
            anon_peak_bytes: None,
        };
        let peak = |s: Sample| s.value(Metric::MemoryPeakBytes);
        assert_eq!(peak(sample(Some(500), Some(700))), Some(500));
        // No memory.peak (v2 before 5.19): not the end's charge, not a process's RSS (it
        // counts shared pages charged to other cgroups).
        assert_eq!(peak(sample(None, Some(700))), None);
        // No memory controller at all: the largest process.
        let mut none = sample(None, Some(700));
        none.memory = None;
        assert_eq!(peak(none), Some(700));
    }

    #[test]
    fn more_major_faults_than_the_cgroup_counts_are_explained() {
        let totals = BTreeMap::from([("page_faults_major".to_owned(), Total::Value(18))]);
        let kernel = |n: u64| BTreeMap::from([("memory_stat_pgmajfault".to_owned(), n)]);
        let note = fault_note(&totals, &kernel(15)).unwrap();
        assert!(note.contains("(18)") && note.contains("(15)"), "{note}");
        assert_eq!(fault_note(&totals, &kernel(18)), None);
        assert_eq!(fault_note(&totals, &BTreeMap::new()), None);
    }

    #[test]
    fn a_device_level_shortfall_is_explained() {
        let no_writeback = write_note(&totals(300 << 20, 0, 4 << 20), false).unwrap();
        assert!(
            no_writeback.contains("no cgroup writeback"),
            "{no_writeback}"
        );
        assert!(no_writeback.contains("300.0 MiB"), "{no_writeback}");
        let late = write_note(&totals(300 << 20, 0, 4 << 20), true).unwrap();
        assert!(late.contains("page cache"), "{late}");
        // Agreement, or a shortfall made of cancelled writes, needs no note.
        assert_eq!(write_note(&totals(300 << 20, 0, 300 << 20), false), None);
        assert_eq!(
            write_note(&totals(300 << 20, 296 << 20, 4 << 20), false),
            None
        );
        // Without the per-task figure there is nothing to compare.
        assert_eq!(write_note(&BTreeMap::new(), false), None);
    }
}
