//! Scheduler hooks: CPU time and context switches.
//!
//! CPU time comes from `sched_stat_runtime`, which `update_curr` fires with exactly the delta it
//! charges to the task's cgroups (`cgroup_account_cputime`): the figure behind `cpu.stat
//! usage_usec`. `update_curr` can run for a task on another CPU (a remote wakeup, or a read of
//! its clock), so the delta is charged to the task in the arguments, never to whoever is
//! current. Idle time is never reported by this hook.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{maps::stats_of, task::cgroup_id_of};

/// `sched_stat_runtime(struct task_struct *tsk, u64 runtime)`.
#[btf_tracepoint(function = "sched_stat_runtime")]
pub fn sched_stat_runtime(ctx: BtfTracePointContext) -> u32 {
    let task: *const u8 = ctx.arg(0);
    let runtime: u64 = ctx.arg(1);
    if let Some(stats) = cgroup_id_of(task).and_then(stats_of) {
        stats.cpu_time_ns += runtime;
    }
    0
}

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)`. Runs in `__schedule` while `prev` is still current, so the
/// current cgroup is `prev`'s. A switch is voluntary when `prev` blocked (a non-zero state) and
/// was not preempted, as the kernel counts `nvcsw`.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    let preempt: u64 = ctx.arg(0);
    let prev: *const u8 = ctx.arg(1);
    let prev_state: u64 = ctx.arg(3);
    if let Some(stats) = cgroup_id_of(prev).and_then(stats_of) {
        if preempt == 0 && prev_state & 0xffff_ffff != 0 {
            stats.switches_voluntary += 1;
        } else {
            stats.switches_involuntary += 1;
        }
    }
    0
}
