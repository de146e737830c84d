//! Processes leaving a watched run's cgroups.
//!
//! A run's cgroup only holds what stays in it: a process that writes itself into another
//! cgroup's `cgroup.procs` takes everything it does afterwards with it, and the run's totals
//! silently miss it. `cgroup_attach_task` fires after a migration, when the source cgroup is
//! no longer known, so membership is kept here as it happens:
//!
//! - [`WATCHED`] holds each run's cgroups: the agent inserts the run's own cgroup before the
//!   command starts, `cgroup_mkdir` adds sub-cgroups made in a watched one (same run).
//!   [`PROFILED`], the cgroups the profiling programs sample, grows the same way.
//! - [`RUN_PROCS`] holds each run's processes: a process that attaches to a watched cgroup (the
//!   command itself does, before `exec`) and every process forked in one.
//! - A tracked process that attaches anywhere outside its run on the v2 hierarchy, or a child
//!   forked straight into such a cgroup (`CLONE_INTO_CGROUP`), is recorded in [`ESCAPES`].
//!
//! Cost: a process fork or exit does one lookup of the small [`WATCHED`] map, plus an insert
//! (fork) or delete (exit) of [`RUN_PROCS`] inside a run; attaching and making cgroups are rare.
//! `sched_switch` and `sched_stat_runtime` do nothing here.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use cleanroom_common::{Escape, RunProc, drop_reason, escape_via};

use crate::{
    maps::{ESCAPES, PROFILED, RUN_PROCS, WATCHED, bump_watch_generation, count_drop},
    task::{
        OFF_TASK_PID, OFF_TASK_TGID, comm_of, dfl_cgroup_of, id_of_cgroup, leader_start_time,
        on_default_hierarchy, read,
    },
};

/// `-E2BIG`: what a map update returns when the map is full.
pub const E2BIG: i32 = -7;

/// The run that cgroup `id` belongs to, if it is watched.
#[inline(always)]
pub fn run_of_cgroup(id: u64) -> Option<u64> {
    // SAFETY: a plain u64 value, copied out at once.
    WATCHED.get_ptr(&id).map(|p| unsafe { *p })
}

/// The profile that the tasks of cgroup `id` are sampled for, if they are profiled.
#[inline(always)]
pub fn profile_of_cgroup(id: u64) -> Option<u64> {
    // SAFETY: a plain u64 value, copied out at once.
    PROFILED.get_ptr(&id).map(|p| unsafe { *p })
}

/// Starts tracking process `tgid` (started at `start_time`) as part of `run_id`.
#[inline(always)]
fn track(tgid: u32, run_id: u64, start_time: u64) {
    let entry = RunProc { run_id, start_time };
    if RUN_PROCS.insert(&tgid, &entry, 0) == Err(E2BIG) {
        count_drop(drop_reason::RUN_PROCS_MAP_FULL);
    }
}

/// Records that `task` (of process `tgid`) left `run_id` for cgroup `to`. The first escape of
/// a process is kept until the agent reads it.
#[inline(always)]
fn record(run_id: u64, to: u64, task: *const u8, tgid: u32, via: u32) {
    let escape = Escape {
        run_id,
        to_cgroup_id: to,
        pid: read::<u32>(task, &OFF_TASK_PID).unwrap_or(tgid),
        tgid,
        via,
        _pad: 0,
        comm: comm_of(task),
    };
    if ESCAPES.insert(&tgid, &escape, u64::from(BPF_NOEXIST)) == Err(E2BIG) {
        count_drop(drop_reason::ESCAPES_MAP_FULL);
    }
}

/// `sched_process_fork`, for a new process `child` (tgid `tgid`) forked by `parent`, whose
/// cgroup is `parent_cgroup`.
#[inline(always)]
pub fn on_fork(parent: *const u8, parent_cgroup: u64, child: *const u8, tgid: u32) {
    let Some(run_id) = run_of_cgroup(parent_cgroup) else {
        return;
    };
    let Some(start_time) = leader_start_time(child) else {
        count_drop(drop_reason::READ_FAILED);
        return;
    };
    // A child normally starts in its parent's cgroup; `clone3(CLONE_INTO_CGROUP)` puts it
    // elsewhere without any attach event.
    // Plain pointers, not `Option`s: comparing two `Option`s reads the undefined payload of a
    // `None`, which older verifiers (5.10) refuse.
    let child_cgroup = dfl_cgroup_of(child).unwrap_or(core::ptr::null());
    let parent_cgroup_ptr = dfl_cgroup_of(parent).unwrap_or(core::ptr::null());
    if child_cgroup != parent_cgroup_ptr {
        let Some(child_id) = id_of_cgroup(child_cgroup) else {
            count_drop(drop_reason::READ_FAILED);
            return;
        };
        // 0 for none (a cgroup id, hence a run id, is never 0): matching on the `Option`
        // lets the compiler load the payload of a `None`, which 5.10's verifier refuses.
        let child_run = run_of_cgroup(child_id).unwrap_or(0);
        if child_run != run_id {
            record(run_id, child_id, child, tgid, escape_via::FORKED_INTO);
            if child_run != 0 {
                track(tgid, child_run, start_time);
            }
            return;
        }
    }
    track(tgid, run_id, start_time);
    crate::process::on_fork(read::<u32>(parent, &OFF_TASK_TGID).unwrap_or(0), tgid);
}

/// `sched_process_exit` of the last thread of the current process, in watched run `run` (0:
/// none). Only a process in a watched cgroup can be tracked (one that left was untracked then).
#[inline(always)]
pub fn on_exit(run: u64) {
    if run != 0 {
        let _ = RUN_PROCS.remove(&((bpf_get_current_pid_tgid() >> 32) as u32));
    }
}

/// `cgroup_mkdir` of v2 cgroup `id` in `parent_id`: a sub-cgroup of a run is inside the run.
#[inline(always)]
pub fn on_mkdir(id: u64, parent_id: u64) {
    if let Some(run_id) = run_of_cgroup(parent_id) {
        if WATCHED.insert(&id, &run_id, 0) == Err(E2BIG) {
            count_drop(drop_reason::WATCHED_MAP_FULL);
        }
        bump_watch_generation();
    }
    if let Some(profile) = profile_of_cgroup(parent_id) {
        if PROFILED.insert(&id, &profile, 0) == Err(E2BIG) {
            count_drop(drop_reason::PROFILED_MAP_FULL);
        }
    }
}

/// `cgroup_rmdir` of v2 cgroup `id`.
#[inline(always)]
pub fn on_rmdir(id: u64) {
    if run_of_cgroup(id).is_some() {
        let _ = WATCHED.remove(&id);
        bump_watch_generation();
    }
    if profile_of_cgroup(id).is_some() {
        let _ = PROFILED.remove(&id);
    }
}

/// `cgroup_attach_task(struct cgroup *dst_cgrp, const char *path, struct task_struct *task,
/// bool threadgroup)`: fires after `task` (its whole thread group when `threadgroup`) moved to
/// `dst_cgrp`, on any hierarchy; only v2 moves matter (the run's CPU time is counted there).
#[btf_tracepoint(function = "cgroup_attach_task")]
pub fn cgroup_attach_task(ctx: BtfTracePointContext) -> u32 {
    let dst: *const u8 = ctx.arg(0);
    let task: *const u8 = ctx.arg(2);
    let threadgroup: u64 = ctx.arg(3);
    if !on_default_hierarchy(dst) {
        return 0;
    }
    // One at a time: a tuple of `Option`s copies the undefined payload of a `None` (see below).
    let Some(dst_id) = id_of_cgroup(dst) else {
        count_drop(drop_reason::READ_FAILED);
        return 0;
    };
    let Some(tgid) = read::<u32>(task, &OFF_TASK_TGID) else {
        count_drop(drop_reason::READ_FAILED);
        return 0;
    };
    let Some(start_time) = leader_start_time(task) else {
        count_drop(drop_reason::READ_FAILED);
        return 0;
    };
    // Run ids as plain values, 0 for none (a run id is a cgroup id, never 0): an `Option`'s
    // payload is undefined when it is `None`, and verifiers refuse a program that copies an
    // uninitialised register, even on a path that never uses it.
    let dst_run = run_of_cgroup(dst_id).unwrap_or(0);
    // SAFETY: a plain value, copied out at once; an entry of a process that exited unseen
    // (same pid, earlier start) is not this process.
    let tracked_run = match RUN_PROCS.get_ptr(&tgid) {
        Some(p) => {
            // SAFETY: as above.
            let p = unsafe { *p };
            if p.start_time == start_time {
                p.run_id
            } else {
                0
            }
        }
        None => 0,
    };
    if tracked_run != 0 && tracked_run != dst_run {
        record(tracked_run, dst_id, task, tgid, escape_via::MOVED);
        if dst_run != 0 {
            track(tgid, dst_run, start_time);
        } else if threadgroup & 0xff != 0 {
            // The whole process left; a single thread leaving keeps the rest in the run.
            let _ = RUN_PROCS.remove(&tgid);
        }
    } else if tracked_run == 0 && dst_run != 0 {
        track(tgid, dst_run, start_time);
    }
    0
}
