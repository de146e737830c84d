//! Reading kernel structures at offsets of the running kernel.
//!
//! Offsets are never compiled in: the agent resolves each entry of `cleanroom_common::OFFSETS`
//! from `/sys/kernel/btf/vmlinux` and sets these globals (read-only data) before loading. Every
//! pointer here comes from a `tp_btf` argument or `bpf_get_current_task_btf()`, so it is typed
//! by BTF: the verifier knows the offsets as constants, checks each load against the struct it
//! lands in, and turns it into a fault-safe load — no helper call, and a wrong offset fails the
//! load of the program instead of reading astray. An offset this kernel lacks stays at
//! `u64::MAX` and the agent leaves the hooks that need it detached.

use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_current_task_btf,
        bpf_probe_read_kernel,
    },
};
use cleanroom_common::drop_reason;

use crate::maps::count_drop;

macro_rules! offsets {
    ($($name:ident),* $(,)?) => {
        $(
            #[unsafe(no_mangle)]
            pub static $name: Global<u64> = Global::new(u64::MAX);
        )*
    };
}

offsets!(
    OFF_TASK_CGROUPS,
    OFF_TASK_PID,
    OFF_TASK_TGID,
    OFF_TASK_FLAGS,
    OFF_TASK_MAJ_FLT,
    OFF_TASK_START_TIME,
    OFF_TASK_GROUP_LEADER,
    OFF_TASK_COMM,
    OFF_CSS_SET_DFL_CGRP,
    OFF_CGROUP_KN,
    OFF_CGROUP_ROOT,
    OFF_KERNFS_NODE_ID,
    OFF_KERNFS_NODE_PARENT,
    OFF_BIO_BDEV,
    OFF_BIO_OPF,
    OFF_BIO_SIZE,
    OFF_BIO_BLKG,
    OFF_BDEV_DEV,
    OFF_BLKG_BLKCG,
    OFF_BLKCG_CGROUP,
    OFF_RQ_BIO,
    OFF_RQ_CMD_FLAGS,
    OFF_SOCK_CGROUP,
    OFF_TASK_IOAC_READ_BYTES,
    OFF_TASK_IOAC_WRITE_BYTES,
    OFF_TASK_IOAC_CANCELLED_WRITE_BYTES,
    OFF_TASK_SIGNAL,
    OFF_SIGNAL_MAXRSS,
    OFF_SIGNAL_LIVE,
    OFF_CGROUP_ROOT_HIERARCHY_ID,
    OFF_TASK_STATE,
    OFF_BIO_DISK,
    OFF_BIO_PARTNO,
    OFF_GENDISK_MAJOR,
    OFF_GENDISK_FIRST_MINOR,
    OFF_TASK_SUM_EXEC_RUNTIME,
    OFF_TASK_MIN_FLT,
    OFF_TASK_EXIT_CODE,
    OFF_TASK_REAL_PARENT,
    OFF_SIGNAL_SUM_SCHED_RUNTIME,
    OFF_SIGNAL_MIN_FLT,
    OFF_SIGNAL_MAJ_FLT,
    OFF_SIGNAL_IOAC_READ_BYTES,
    OFF_SIGNAL_IOAC_WRITE_BYTES,
    OFF_TASK_MM,
    OFF_MM_ARG_START,
    OFF_MM_ARG_END,
    OFF_SOCK_FAMILY,
    OFF_SOCK_DADDR,
    OFF_SOCK_V6_DADDR,
    OFF_SOCK_DPORT,
    OFF_SOCK_NUM,
    OFF_TASK_STACK,
    OFF_TASK_SCHED_PCOUNT,
    OFF_TASK_SCHED_RUN_DELAY,
);

/// 1 where the kernel has `bpf_get_current_task_btf` (5.11 on), set by the agent from the
/// kernel's BTF; else the current task is reached with `bpf_get_current_task` and read with
/// `bpf_probe_read_kernel`. The verifier knows this read-only value and never looks at the
/// branch not taken, so the missing helper is never seen on older kernels.
#[unsafe(no_mangle)]
pub static HAS_TASK_BTF_HELPER: Global<u64> = Global::new(1);

/// `PF_KTHREAD` of `task_struct.flags`.
const PF_KTHREAD: u32 = 0x0020_0000;

/// Reads a `T` at `base + offset` (a BTF-typed pointer); `None` if `base` is null. A load that
/// faults reads as zero.
#[inline(always)]
pub fn read<T: Copy>(base: *const u8, offset: &Global<u64>) -> Option<T> {
    if base.is_null() {
        return None;
    }
    Some(load_btf(base, offset))
}

/// Loads a `T` at `base + offset` directly, `base` being a BTF-typed pointer (see the module
/// doc): the verifier checks the access against the struct at load time.
#[inline(always)]
pub fn load_btf<T: Copy>(base: *const u8, offset: &Global<u64>) -> T {
    // SAFETY: see above; the verifier rejects the program rather than let this read stray, and
    // the load it emits cannot fault.
    unsafe { core::ptr::read_volatile(base.wrapping_add(offset.load() as usize).cast::<T>()) }
}

/// Reads a `T` at `base + offset` with `bpf_probe_read_kernel`, for offsets a kernel may lack
/// without losing the hook that reads them (the agent's `probe::OPTIONAL` names the metrics
/// that depend on them): `None` if the offset is unset or the read fails. Slower than [`read`],
/// so kept off the hot paths.
#[inline(always)]
pub fn read_optional<T: Copy>(base: *const u8, offset: &Global<u64>) -> Option<T> {
    let offset = offset.load();
    if base.is_null() || offset == u64::MAX {
        return None;
    }
    // SAFETY: the helper checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }.ok()
}

/// Loads a `T` at `base + offset` directly (as [`load_btf`]: `base` a BTF-typed pointer) where
/// this kernel has the offset, else `default`: for offsets a kernel may lack, without the
/// helper call of [`read_optional`]. The offset is a read-only value the verifier knows, so it
/// never looks at the load where the offset is unset.
#[inline(always)]
pub fn load_known<T: Copy>(base: *const u8, offset: &Global<u64>, default: T) -> T {
    if base.is_null() || offset.load() == u64::MAX {
        return default;
    }
    load_btf(base, offset)
}

/// `task->comm` (16 bytes), byte by byte: its offset need not be aligned for wider loads.
#[inline(always)]
pub fn comm_of(task: *const u8) -> [u8; 16] {
    let mut comm = [0u8; 16];
    if task.is_null() {
        return comm;
    }
    let base = task.wrapping_add(OFF_TASK_COMM.load() as usize);
    for (i, byte) in comm.iter_mut().enumerate() {
        // SAFETY: as in `load_btf`: a BTF-typed pointer, every byte inside `comm`; the verifier
        // checks each load against the struct at load time.
        *byte = unsafe { core::ptr::read_volatile(base.wrapping_add(i)) };
    }
    comm
}

/// `start_time` of `task`'s group leader: with the tgid, it names a process for good (a pid
/// alone can be reused).
#[inline(always)]
pub fn leader_start_time(task: *const u8) -> Option<u64> {
    read_ptr(task, &OFF_TASK_GROUP_LEADER).and_then(|l| read::<u64>(l, &OFF_TASK_START_TIME))
}

/// Reads a pointer at `base + offset`.
#[inline(always)]
pub fn read_ptr(base: *const u8, offset: &Global<u64>) -> Option<*const u8> {
    read::<*const u8>(base, offset).filter(|p| !p.is_null())
}

/// The current task's cgroup v2 id. Read from the task through BTF where the kernel has
/// `bpf_get_current_task_btf`: on the machines measured, `bpf_get_current_cgroup_id` costs more
/// than the four loads it makes (see BENCHMARKS.md).
#[inline(always)]
pub fn current_cgroup_id() -> u64 {
    if HAS_TASK_BTF_HELPER.load() != 0 {
        // SAFETY: helper without preconditions.
        let task = unsafe { bpf_get_current_task_btf() } as *const u8;
        if let Some(id) = dfl_cgroup_of(task).and_then(id_of_cgroup) {
            return id;
        }
    }
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_current_cgroup_id() }
}

/// Whether the current task is a kernel thread.
#[inline(always)]
pub fn current_is_kthread() -> bool {
    let flags = if HAS_TASK_BTF_HELPER.load() != 0 {
        // SAFETY: helper without preconditions.
        read::<u32>(
            unsafe { bpf_get_current_task_btf() } as *const u8,
            &OFF_TASK_FLAGS,
        )
    } else {
        // SAFETY: helper without preconditions.
        read_optional::<u32>(
            unsafe { bpf_get_current_task() } as *const u8,
            &OFF_TASK_FLAGS,
        )
    };
    flags.is_some_and(|f| f & PF_KTHREAD != 0)
}

/// The current task's cgroup v2 id if it is a user task; `None` for a kernel thread. One
/// fetch of the current task for both (see [`current_cgroup_id`]).
#[inline(always)]
pub fn current_user_cgroup_id() -> Option<u64> {
    if HAS_TASK_BTF_HELPER.load() == 0 {
        return (!current_is_kthread()).then(current_cgroup_id);
    }
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    let flags = read::<u32>(task, &OFF_TASK_FLAGS)?;
    if flags & PF_KTHREAD != 0 {
        return None;
    }
    Some(
        dfl_cgroup_of(task)
            .and_then(id_of_cgroup)
            // SAFETY: helper without preconditions.
            .unwrap_or_else(|| unsafe { bpf_get_current_cgroup_id() }),
    )
}

/// The v2 id of a `struct cgroup *`.
#[inline(always)]
pub fn id_of_cgroup(cgroup: *const u8) -> Option<u64> {
    read_ptr(cgroup, &OFF_CGROUP_KN).and_then(|kn| read::<u64>(kn, &OFF_KERNFS_NODE_ID))
}

/// The task's cgroup on the default (v2) hierarchy, as a `struct cgroup *`.
#[inline(always)]
pub fn dfl_cgroup_of(task: *const u8) -> Option<*const u8> {
    read_ptr(task, &OFF_TASK_CGROUPS).and_then(|cset| read_ptr(cset, &OFF_CSS_SET_DFL_CGRP))
}

/// Whether `cgroup` belongs to the default (v2) hierarchy: its root's hierarchy id is 0, the
/// `0::` of `/proc/PID/cgroup`.
#[inline(always)]
pub fn on_default_hierarchy(cgroup: *const u8) -> bool {
    read_ptr(cgroup, &OFF_CGROUP_ROOT)
        .and_then(|root| read::<i32>(root, &OFF_CGROUP_ROOT_HIERARCHY_ID))
        == Some(0)
}

/// The cgroup v2 id of `task` (a `struct task_struct *`), or `None` if it cannot be read. Four
/// loads, also for the current task: cheaper here than the helper (see [`current_cgroup_id`]).
#[inline(always)]
pub fn cgroup_id_of(task: *const u8) -> Option<u64> {
    let id = dfl_cgroup_of(task).and_then(id_of_cgroup);
    if id.is_none() {
        count_drop(drop_reason::READ_FAILED);
    }
    id
}
