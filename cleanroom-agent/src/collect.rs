//! Turning map contents and cgroupfs reads into the totals of a report.
//!
//! [`Sample::totals`] is pure; it decides, for every metric, a value or "unavailable".

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{
    cgroup::{CpuStat, MemoryStat},
    metric::{AnyMetric, Latency, Metric},
    model::{self, LatencySummary},
    probe::Counted,
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
    /// The kernel's CPU accounting of the run cgroup.
    pub cpu: CpuStat,
    /// The kernel's memory accounting, where the host has one for the run.
    pub memory: Option<MemoryStat>,
    /// Largest peak RSS of a single process of the run (getrusage), the last-resort memory
    /// figure when no cgroup accounts memory.
    pub max_rss_bytes: Option<u64>,
}

impl Sample {
    /// The value of a one-number metric, or `None` when it cannot be told here.
    fn value(&self, metric: Metric) -> Option<u64> {
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
            Metric::NetRxBytes => s.net_rx_bytes,
            Metric::NetTxBytes => s.net_tx_bytes,
            Metric::NetRxPackets => s.net_rx_packets,
            Metric::NetTxPackets => s.net_tx_packets,
            Metric::TcpRetransmits => s.tcp_retransmits,
            Metric::ProcessesForked => s.processes_forked,
            Metric::ProcessesExited => s.processes_exited,
            Metric::MemoryPeakBytes => self
                .memory
                .and_then(|m| m.peak_bytes)
                .or(self.max_rss_bytes)?,
            Metric::MemoryCurrentBytes => self.memory?.current_bytes,
        })
    }

    /// The counters (every metric but memory) by name, for the time series.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        Metric::ALL
            .iter()
            .filter(|m| !matches!(m, Metric::MemoryPeakBytes | Metric::MemoryCurrentBytes))
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
        let mut k = BTreeMap::from([
            ("cpu_usage_ns".to_owned(), self.cpu.usage_usec * 1_000),
            ("cpu_user_ns".to_owned(), self.cpu.user_usec * 1_000),
            ("cpu_system_ns".to_owned(), self.cpu.system_usec * 1_000),
        ]);
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

/// `loop0` for 7:0, from /sys/dev/block.
fn device_name(major: u32, minor: u32) -> Option<String> {
    let link = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}
