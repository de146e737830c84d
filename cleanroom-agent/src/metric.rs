//! The metrics Cleanroom measures: their names in reports, units and meaning.
//!
//! One list, so that the report, the summary, `doctor` and the hooks agree on every name.

use cleanroom_common::CgroupStats;

/// What a number counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds.
    Nanoseconds,
    /// A count of events.
    Count,
}

/// A metric measured by the kernel programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// CPU time of every task of the cgroup.
    CpuTime,
    /// Switches where the task gave up the CPU (it blocked).
    ContextSwitchesVoluntary,
    /// Switches where the task was preempted while runnable.
    ContextSwitchesInvoluntary,
}

impl Metric {
    /// Every metric, in report order.
    pub const ALL: &[Metric] = &[
        Metric::CpuTime,
        Metric::ContextSwitchesVoluntary,
        Metric::ContextSwitchesInvoluntary,
    ];

    /// Name in `totals` of the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            Metric::CpuTime => "cpu_time_ns",
            Metric::ContextSwitchesVoluntary => "context_switches_voluntary",
            Metric::ContextSwitchesInvoluntary => "context_switches_involuntary",
        }
    }

    /// Unit of the value.
    pub fn unit(self) -> Unit {
        match self {
            Metric::CpuTime => Unit::Nanoseconds,
            Metric::ContextSwitchesVoluntary | Metric::ContextSwitchesInvoluntary => Unit::Count,
        }
    }

    /// One line on what it means.
    pub fn description(self) -> &'static str {
        match self {
            Metric::CpuTime => {
                "time the cgroup's tasks spent on a CPU, as the scheduler charges it (cpu.stat usage_usec)"
            }
            Metric::ContextSwitchesVoluntary => {
                "switches away from a task that blocked (I/O, sleep, lock)"
            }
            Metric::ContextSwitchesInvoluntary => {
                "switches away from a task that was preempted while it could still run"
            }
        }
    }

    /// Its value in a set of kernel counters.
    pub fn value(self, stats: &CgroupStats) -> u64 {
        match self {
            Metric::CpuTime => stats.cpu_time_ns,
            Metric::ContextSwitchesVoluntary => stats.switches_voluntary,
            Metric::ContextSwitchesInvoluntary => stats.switches_involuntary,
        }
    }
}
