//! Reading a task's cgroup v2 id, at offsets of the running kernel.
//!
//! `task->cgroups->dfl_cgrp->kn->id` is what `bpf_get_current_cgroup_id()` returns for the
//! current task. For any other task the chain is read with `bpf_probe_read_kernel`, at offsets
//! the agent resolved from `/sys/kernel/btf/vmlinux` and set in these globals before loading. A
//! zero offset means "not resolved": the read is refused rather than guessed.

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_task, bpf_probe_read_kernel},
};
use cleanroom_common::drop_reason;

use crate::maps::count_drop;

#[unsafe(no_mangle)]
static OFF_TASK_CGROUPS: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_CSS_SET_DFL_CGRP: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_CGROUP_KN: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_KERNFS_NODE_ID: Global<u64> = Global::new(0);

/// Reads the pointer at `base + offset`.
#[inline(always)]
fn read_ptr(base: *const u8, offset: u64) -> Option<*const u8> {
    if base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<*const u8>()) }.ok()
}

/// The cgroup v2 id of `task` (a `struct task_struct *`), or `None` if it cannot be read.
#[inline(always)]
pub fn cgroup_id_of(task: *const u8) -> Option<u64> {
    // SAFETY: helpers without preconditions.
    if task as u64 == unsafe { bpf_get_current_task() } {
        // SAFETY: as above.
        return Some(unsafe { bpf_get_current_cgroup_id() });
    }
    let off_id = OFF_KERNFS_NODE_ID.load();
    let id = read_ptr(task, OFF_TASK_CGROUPS.load())
        .and_then(|css_set| read_ptr(css_set, OFF_CSS_SET_DFL_CGRP.load()))
        .and_then(|cgroup| read_ptr(cgroup, OFF_CGROUP_KN.load()))
        .filter(|kn| !kn.is_null() && off_id != 0)
        // SAFETY: as in read_ptr.
        .and_then(|kn| {
            unsafe { bpf_probe_read_kernel(kn.wrapping_add(off_id as usize).cast::<u64>()) }.ok()
        });
    if id.is_none() {
        count_drop(drop_reason::READ_FAILED);
    }
    id
}
