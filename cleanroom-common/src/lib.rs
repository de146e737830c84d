//! Wire types shared by the kernel programs (`cleanroom-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]`, fixed-width and free of `bool`, `Option` and enums, so the
//! kernel and user side read the same bytes the same way. Map and program names live here as
//! constants so that no name is spelled twice across crates.
#![no_std]

/// Names of the maps of the BPF object.
pub mod maps {
    /// Per-CPU hash: cgroup v2 id (`u64`) → [`crate::CgroupStats`].
    pub const CGROUP_STATS: &str = "CGROUP_STATS";
    /// Per-CPU array of `u64` drop counters, indexed by [`crate::drop_reason`] values.
    pub const DROPS: &str = "DROPS";
}

/// Names of the programs of the BPF object (the Rust function names in `cleanroom-ebpf`).
pub mod programs {
    /// `tp_btf/sched_stat_runtime`: CPU time, charged where the kernel charges its cgroups.
    pub const SCHED_STAT_RUNTIME: &str = "sched_stat_runtime";
    /// `tp_btf/sched_switch`: voluntary and involuntary context switches.
    pub const SCHED_SWITCH: &str = "sched_switch";
}

/// Names of the load-time globals (`.rodata`) that the agent sets before loading.
pub mod globals {
    /// Byte offset of `task_struct.cgroups` in the running kernel.
    pub const OFF_TASK_CGROUPS: &str = "OFF_TASK_CGROUPS";
    /// Byte offset of `css_set.dfl_cgrp`.
    pub const OFF_CSS_SET_DFL_CGRP: &str = "OFF_CSS_SET_DFL_CGRP";
    /// Byte offset of `cgroup.kn`.
    pub const OFF_CGROUP_KN: &str = "OFF_CGROUP_KN";
    /// Byte offset of `kernfs_node.id`.
    pub const OFF_KERNFS_NODE_ID: &str = "OFF_KERNFS_NODE_ID";
}

/// Capacity of [`maps::CGROUP_STATS`]: the number of distinct cgroups counted at once.
pub const MAX_CGROUPS: u32 = 10_240;

/// Counters kept per cgroup v2 id and per CPU. They only ever grow; user space sums the CPUs and
/// takes differences, and never resets them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Nanoseconds on CPU, as charged by `update_curr` (the figure behind `cpu.stat usage_usec`).
    pub cpu_time_ns: u64,
    /// Switches away from a task that blocked (it gave up the CPU itself).
    pub switches_voluntary: u64,
    /// Switches away from a task that was preempted while still runnable.
    pub switches_involuntary: u64,
}

const _: () = assert!(core::mem::size_of::<CgroupStats>() == 24);

impl CgroupStats {
    /// Field-wise wrapping sum, used to add up CPUs and cgroups.
    #[must_use]
    pub fn wrapping_add(self, other: Self) -> Self {
        Self {
            cpu_time_ns: self.cpu_time_ns.wrapping_add(other.cpu_time_ns),
            switches_voluntary: self
                .switches_voluntary
                .wrapping_add(other.switches_voluntary),
            switches_involuntary: self
                .switches_involuntary
                .wrapping_add(other.switches_involuntary),
        }
    }
}

/// Reasons an event could not be counted; indices into [`maps::DROPS`].
pub mod drop_reason {
    /// [`crate::maps::CGROUP_STATS`] was full, so a new cgroup's event was lost.
    pub const STATS_MAP_FULL: u32 = 0;
    /// A kernel structure could not be read (bad offset or racing free).
    pub const READ_FAILED: u32 = 1;
    /// Number of reasons (size of the drops array).
    pub const COUNT: u32 = 2;
}

#[cfg(feature = "user")]
// SAFETY: `CgroupStats` is `repr(C)`, made only of `u64`s, has no padding and every bit pattern is
// a valid value.
unsafe impl aya::Pod for CgroupStats {}
