//! Scheduler and process hooks: CPU time, context switches, run-queue latency, forks, exits.
//!
//! CPU time comes from `sched_stat_runtime`, which `update_curr` fires with exactly the delta it
//! charges to the task's cgroups (`cgroup_account_cputime`): the figure behind `cpu.stat
//! usage_usec`. `update_curr` can run for a task on another CPU (a remote wakeup, or a read of
//! its clock), so the delta is charged to the task in the arguments, never to whoever is
//! current. Idle time is never reported by this hook.

use aya_ebpf::{
    Global, bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns, macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use cleanroom_common::{PendingStats, drop_reason, hist_kind};

use crate::{
    escape,
    maps::{
        EXIT_PENDING, FORK_PENDING, PROCESS_EXITS, ProcessKey, RUNQ_SLOTS, RUNQ_START, count_drop,
        current_stats, pending_copy, push_wait, record_latency,
    },
    task::{
        OFF_SIGNAL_LIVE, OFF_SIGNAL_MAXRSS, OFF_TASK_IOAC_CANCELLED_WRITE_BYTES,
        OFF_TASK_IOAC_READ_BYTES, OFF_TASK_IOAC_WRITE_BYTES, OFF_TASK_MAJ_FLT, OFF_TASK_PID,
        OFF_TASK_SCHED_PCOUNT, OFF_TASK_SCHED_RUN_DELAY, OFF_TASK_SIGNAL, OFF_TASK_STATE,
        OFF_TASK_TGID, cgroup_id_of, dfl_cgroup_of, id_of_cgroup, leader_start_time, load_btf,
        load_known, read, read_optional,
    },
};

/// 1 where run-queue latency comes from the kernel's own `task_struct.sched_info` (set by the
/// agent where the kernel has it and keeps it: CONFIG_SCHED_INFO); the wakeup hooks are then
/// not attached. 0: timed from wakeups.
#[unsafe(no_mangle)]
pub static RUNQ_FROM_SCHED_INFO: Global<u64> = Global::new(0);

/// `TASK_DEAD` of `task_struct.__state`: the state of a task's very last switch.
const TASK_DEAD: u64 = 0x80;

/// `sched_stat_runtime(struct task_struct *tsk, u64 runtime)`.
#[btf_tracepoint(function = "sched_stat_runtime")]
pub fn sched_stat_runtime(ctx: BtfTracePointContext) -> u32 {
    let task: *const u8 = ctx.arg(0);
    let runtime: u64 = ctx.arg(1);
    if let Some(stats) = cgroup_id_of(task).and_then(current_stats) {
        stats.cpu_time_ns += runtime;
        stats.cpu_time_updates += 1;
    }
    0
}

/// Marks `task` runnable since `now`, for run-queue latency.
#[inline(always)]
fn mark_runnable(task: *const u8, now: u64) {
    let Some(pid) = read::<u32>(task, &OFF_TASK_PID).filter(|p| *p != 0) else {
        return;
    };
    if let Some(slot) = RUNQ_START.get_ptr_mut(pid & (RUNQ_SLOTS - 1)) {
        // SAFETY: an element of an array map; a racing writer can at worst make one wait
        // unmatched, which the reader detects by the pid.
        unsafe {
            (*slot).pid = pid;
            (*slot).ns = now;
        }
    }
}

/// The clock of run-queue latency.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// `sched_wakeup(struct task_struct *p)`.
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> u32 {
    mark_runnable(ctx.arg(0), now_ns());
    0
}

/// `sched_wakeup_new(struct task_struct *p)`.
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> u32 {
    mark_runnable(ctx.arg(0), now_ns());
    0
}

/// Whether a switch away from `prev` in `state` counts in the kernel's `nvcsw` as getrusage and
/// `/proc/PID/status` report it. The last switch of a thread that is not its process's leader
/// (state `TASK_DEAD`) does not: the thread's counts were folded into its process
/// (`__exit_signal`) before it. A leader's last switch does: its parent reads its counts when
/// it reaps it, after that switch.
#[inline(always)]
fn counted_in_nvcsw(prev: *const u8, state: u64) -> bool {
    if state & TASK_DEAD == 0 {
        return true;
    }
    read::<u32>(prev, &OFF_TASK_PID) == read::<u32>(prev, &OFF_TASK_TGID)
}

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)`. Runs in `__schedule` while `prev` is still current. A switch is
/// voluntary when `prev` blocked (a non-zero state) and was not preempted, as the kernel counts
/// `nvcsw` ([`counted_in_nvcsw`]). A `prev` still runnable goes back to the run queue: its wait
/// starts now. `next`'s wait ends now, charged to `next`'s cgroup.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    on_switch(ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3));
    0
}

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next)`, before
/// 5.18: `prev`'s state is read from the task (`__state`, or `state` before 5.14).
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_v1(ctx: BtfTracePointContext) -> u32 {
    let prev: *const u8 = ctx.arg(1);
    let state = read::<u32>(prev, &OFF_TASK_STATE).unwrap_or(0);
    on_switch(ctx.arg(0), prev, ctx.arg(2), u64::from(state));
    0
}

/// A switch from `prev` (in `prev_state`) to `next`.
#[inline(always)]
fn on_switch(preempt: u64, prev: *const u8, next: *const u8, prev_state: u64) {
    crate::process::on_switch_away(prev, prev_state);
    let runnable = prev_state & 0xffff_ffff == 0;
    // `prev` is the current task; read from it, without a helper.
    let Some(cgroup) = cgroup_id_of(prev) else {
        return;
    };
    if let Some(stats) = current_stats(cgroup) {
        if preempt & 0xff == 0 && !runnable {
            if counted_in_nvcsw(prev, prev_state) {
                stats.switches_voluntary += 1;
            }
        } else {
            stats.switches_involuntary += 1;
        }
        if RUNQ_FROM_SCHED_INFO.load() != 0 {
            wait_before_this_run(prev, stats);
        }
    }
    if RUNQ_FROM_SCHED_INFO.load() == 0 {
        wait_timed_from_wakeup(prev, runnable, next);
    }
}

/// Run-queue latency from the kernel's own accounting, at a switch away from `prev` (of
/// `cgroup`): each arrival of a task on a CPU adds one to `sched_info.pcount` and the time it
/// waited on the run queue before it to `sched_info.run_delay`, so between two switches away
/// (one arrival) the growth of `run_delay` is the wait that preceded this run. No clock read and
/// no wakeup hook: the scheduler timed it already. A task seen for the first time at its first
/// arrival (`pcount` 1) waited `run_delay` in all; one already running when the probes came has
/// its earlier waits left out. The wait goes to the pending copy of `prev`'s cgroup, `stats`.
#[inline(always)]
fn wait_before_this_run(prev: *const u8, stats: &mut PendingStats) {
    let Some(pid) = read::<u32>(prev, &OFF_TASK_PID).filter(|p| *p != 0) else {
        return;
    };
    let pcount: u64 = load_btf(prev, &OFF_TASK_SCHED_PCOUNT);
    let delay: u64 = load_btf(prev, &OFF_TASK_SCHED_RUN_DELAY);
    let Some(slot) = RUNQ_START.get_ptr_mut(pid & (RUNQ_SLOTS - 1)) else {
        return;
    };
    // SAFETY: an element of an array map, read then rewritten; only switches of tasks whose
    // pids share the slot write it, and the check word tells a slot two of them tore.
    let seen = unsafe { *slot };
    let seen_whole = seen.check == u64::from(seen.pid) ^ seen.ns ^ seen.pcount;
    let wait = if seen.pid == pid && seen_whole && pcount == seen.pcount + 1 {
        Some(delay.saturating_sub(seen.ns))
    } else if pcount == 1 {
        Some(delay)
    } else {
        None
    };
    // SAFETY: as above.
    unsafe {
        (*slot).pid = pid;
        (*slot).ns = delay;
        (*slot).pcount = pcount;
        (*slot).check = u64::from(pid) ^ delay ^ pcount;
    }
    if let Some(wait) = wait {
        push_wait(stats, wait);
    }
}

/// Run-queue latency timed by the probes, where the kernel keeps no `sched_info`: a wait starts
/// when a task is woken ([`sched_wakeup`]) or switched away from while still runnable (`prev`),
/// and ends when it is switched in (`next`). One clock read serves both ends.
#[inline(always)]
fn wait_timed_from_wakeup(prev: *const u8, runnable: bool, next: *const u8) {
    let now = now_ns();
    if runnable {
        mark_runnable(prev, now);
    }
    let Some(pid) = read::<u32>(next, &OFF_TASK_PID).filter(|p| *p != 0) else {
        return;
    };
    let Some(slot) = RUNQ_START.get_ptr_mut(pid & (RUNQ_SLOTS - 1)) else {
        return;
    };
    // SAFETY: an element of an array map, read and cleared right away.
    let (owner, since) = unsafe { ((*slot).pid, (*slot).ns) };
    if owner != pid || since == 0 {
        return;
    }
    // SAFETY: as above.
    unsafe { (*slot).ns = 0 };
    // `next` is not the current task here (`prev` is): its cgroup is read from it directly.
    match dfl_cgroup_of(next).and_then(id_of_cgroup) {
        Some(id) => record_latency(id, hist_kind::RUNQUEUE, 0, now.saturating_sub(since)),
        None => count_drop(drop_reason::READ_FAILED),
    }
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`: runs in the
/// parent. Counts new processes, not new threads, and keeps a watched run's new processes in
/// it ([`escape::on_fork`]).
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> u32 {
    let child: *const u8 = ctx.arg(1);
    let pid = read::<u32>(child, &OFF_TASK_PID);
    let tgid = read::<u32>(child, &OFF_TASK_TGID);
    if let (Some(pid), Some(tgid)) = (pid, tgid)
        && pid == tgid
        && let Some(parent_cgroup) = cgroup_id_of(ctx.arg(0))
    {
        if let Some(forks) = pending_copy(&FORK_PENDING, parent_cgroup) {
            forks.processes_forked += 1;
        }
        escape::on_fork(ctx.arg(0), parent_cgroup, child, tgid);
    }
    0
}

/// `sched_process_exit(struct task_struct *p, bool group_dead)` (Linux 6.16 on): runs in the
/// exiting task, after `signal->maxrss` is final and before its files are closed.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> u32 {
    on_task_exit(ctx.arg(0), ctx.arg::<u64>(1) & 0xff != 0);
    0
}

/// `sched_process_exit(struct task_struct *p)` (before 6.16), loaded where the form above is
/// refused. The last thread of a process is told by `signal->live`, which each exiting thread
/// has decremented by now: 0 means every thread is on its way out. Several threads exiting at
/// once can all see 0, so the first to claim the process in [`PROCESS_EXITS`] counts it.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit_v1(ctx: BtfTracePointContext) -> u32 {
    let task: *const u8 = ctx.arg(0);
    let live = read_optional::<*const u8>(task, &OFF_TASK_SIGNAL)
        .and_then(|signal| read_optional::<i32>(signal, &OFF_SIGNAL_LIVE));
    let group_dead = live == Some(0) && claim_process_exit(task);
    on_task_exit(task, group_dead);
    0
}

/// Whether this is the first time the process of `task` is seen leaving (see
/// [`sched_process_exit_v1`]): tgid and its leader's start time name it for good.
#[inline(always)]
fn claim_process_exit(task: *const u8) -> bool {
    let Some(tgid) = read::<u32>(task, &OFF_TASK_TGID) else {
        return false;
    };
    let key = ProcessKey {
        tgid,
        _pad: 0,
        start_ns: leader_start_time(task).unwrap_or(0),
    };
    PROCESS_EXITS
        .insert(&key, &1, u64::from(BPF_NOEXIST))
        .is_ok()
}

/// What a thread's exit adds: its own major-fault count and storage I/O (`ioac`: each thread
/// keeps its own until it exits); when it is the process's last thread, the process and its
/// peak RSS (which also ends its membership of a watched run).
#[inline(always)]
fn on_task_exit(task: *const u8, group_dead: bool) {
    // Plain values, not `Option`s, across the calls below: an `Option`'s payload is left
    // undefined when it is `None`, and older verifiers (6.1) refuse a program that copies an
    // uninitialised register even on a path that never uses it. `task` is the tracepoint's
    // BTF-typed argument: the optional offsets are loaded directly where the kernel has them.
    let major = read::<u64>(task, &OFF_TASK_MAJ_FLT).unwrap_or(0);
    let Some(cgroup) = cgroup_id_of(task) else {
        return;
    };
    if let Some(stats) = pending_copy(&EXIT_PENDING, cgroup) {
        stats.page_faults_major += major;
        stats.io_read_bytes += load_known::<u64>(task, &OFF_TASK_IOAC_READ_BYTES, 0);
        stats.io_write_bytes += load_known::<u64>(task, &OFF_TASK_IOAC_WRITE_BYTES, 0);
        stats.io_cancelled_write_bytes +=
            load_known::<u64>(task, &OFF_TASK_IOAC_CANCELLED_WRITE_BYTES, 0);
        if group_dead {
            stats.processes_exited += 1;
            let signal = load_known::<*const u8>(task, &OFF_TASK_SIGNAL, core::ptr::null());
            let rss = load_known::<u64>(signal, &OFF_SIGNAL_MAXRSS, 0);
            if rss > stats.process_peak_rss_pages {
                stats.process_peak_rss_pages = rss;
            }
        }
    }
    if group_dead {
        let run = escape::run_of_cgroup(cgroup).unwrap_or(0);
        crate::process::on_group_dead(run, task);
        escape::on_exit(run);
    }
}
