//! One record per process of a watched run, with what the kernel accounted to it: marked at
//! its last thread's `sched_process_exit`, sent at that thread's last context switch, when its
//! CPU time is final (the exit path after the tracepoint runs for a few hundred µs more).
//!
//! A process's command line is taken at its `exec` (its new arguments are in its memory
//! then) or inherited from its parent at its fork, kept by tgid, and sent with its record.
//!
//! Nothing here runs on a hot path but a test of the switched-out task's state: the record is
//! built only for a dead task that was marked.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user_buf},
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use cleanroom_common::{
    COMMAND_LINE_BYTES, CommandLine, Exiting, MAX_COMMAND_LINES, MAX_EXITING,
    PROCESS_RECORDS_BYTES, ProcessExit, drop_reason,
};

use crate::{
    escape::{E2BIG, run_of_cgroup},
    maps::{atomic_add, count_drop},
    sockets::take_process,
    task::{
        OFF_MM_ARG_END, OFF_MM_ARG_START, OFF_SIGNAL_IOAC_READ_BYTES, OFF_SIGNAL_IOAC_WRITE_BYTES,
        OFF_SIGNAL_MAJ_FLT, OFF_SIGNAL_MIN_FLT, OFF_SIGNAL_SUM_SCHED_RUNTIME, OFF_TASK_EXIT_CODE,
        OFF_TASK_IOAC_READ_BYTES, OFF_TASK_IOAC_WRITE_BYTES, OFF_TASK_MAJ_FLT, OFF_TASK_MIN_FLT,
        OFF_TASK_MM, OFF_TASK_PID, OFF_TASK_REAL_PARENT, OFF_TASK_SIGNAL,
        OFF_TASK_SUM_EXEC_RUNTIME, OFF_TASK_TGID, comm_of, current_cgroup_id, leader_start_time,
        load_known, read, read_optional, read_ptr,
    },
};

/// `TASK_DEAD` of `task_struct.__state`: set just before a task's last switch.
const TASK_DEAD: u64 = 0x80;

/// pid of a watched run's process's last thread, from its exit to its last switch → run id.
#[map]
pub static EXITING: HashMap<u32, Exiting> = HashMap::with_max_entries(MAX_EXITING, 0);

/// The records, for the agent to read.
#[map]
pub static PROCESS_RECORDS: RingBuf = RingBuf::with_byte_size(PROCESS_RECORDS_BYTES, 0);

/// tgid of a watched run's process → its command line, from its exec or fork to its record.
#[map]
pub static COMMAND_LINES: HashMap<u32, CommandLine> =
    HashMap::with_max_entries(MAX_COMMAND_LINES, 0);

/// How many entries [`COMMAND_LINES`] and `sockets::PROCESS_NET` hold between them: counted up
/// when one is made, down when one goes. While it is 0, an exiting process that is not a run's
/// has none to drop, and its exit does not look: the two lookups in maps no other hook reads
/// miss the cache, and were most of what an exit cost (see BENCHMARKS.md).
#[map]
static PROCESS_ENTRIES: Array<u64> = Array::with_max_entries(1, 0);

/// An entry was made in [`COMMAND_LINES`] or `sockets::PROCESS_NET`.
#[inline(always)]
pub fn entry_made() {
    count_entries(1);
}

/// An entry of [`COMMAND_LINES`] or `sockets::PROCESS_NET` was removed.
#[inline(always)]
pub fn entry_gone() {
    count_entries(1u64.wrapping_neg());
}

/// Adds `delta` (wrapping: minus one is `u64::MAX`) to [`PROCESS_ENTRIES`].
#[inline(always)]
fn count_entries(delta: u64) {
    if let Some(n) = PROCESS_ENTRIES.get_ptr_mut(0) {
        // SAFETY: an element of an array map, only changed by atomic adds.
        atomic_add(unsafe { &mut *n }, delta);
    }
}

/// Whether no process has an entry in [`COMMAND_LINES`] or `sockets::PROCESS_NET`. Exact for
/// the process asking about itself: its entries are made by itself (or, at its fork, by its
/// parent before it runs), each counted as soon as it is made.
#[inline(always)]
fn no_process_entries() -> bool {
    // SAFETY: an element of an array map, read whole.
    PROCESS_ENTRIES
        .get_ptr(0)
        .is_some_and(|n| unsafe { core::ptr::read_volatile(n) } == 0)
}

/// Removes `tgid`'s command line, counting it if there was one.
#[inline(always)]
fn forget_command_line(tgid: u32) {
    if COMMAND_LINES.remove(&tgid).is_ok() {
        entry_gone();
    }
}

/// Room to read a command line into before it goes into [`COMMAND_LINES`] (too big for the
/// stack).
#[map]
static COMMAND_LINE_SCRATCH: PerCpuArray<CommandLine> = PerCpuArray::with_max_entries(1, 0);

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`: runs
/// in `p` once its new program is loaded, its arguments in its memory.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> u32 {
    on_exec(ctx.arg(0));
    0
}

/// A process of a watched run ran a new program: its command line, kept.
#[inline(always)]
fn on_exec(task: *const u8) {
    if run_of_cgroup(current_cgroup_id()).is_none() {
        return;
    }
    let Some(mm) = read_ptr(task, &OFF_TASK_MM) else {
        return;
    };
    let start = read::<u64>(mm, &OFF_MM_ARG_START).unwrap_or(0);
    let len = read::<u64>(mm, &OFF_MM_ARG_END)
        .unwrap_or(0)
        .saturating_sub(start);
    let tgid = read::<u32>(task, &OFF_TASK_TGID).unwrap_or(0);
    let Some(scratch) = COMMAND_LINE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch value, not shared while the program runs.
    let line = unsafe { &mut *scratch };
    let n = if len > COMMAND_LINE_BYTES as u64 {
        COMMAND_LINE_BYTES
    } else {
        len as usize
    };
    line.len = len.min(u64::from(u32::MAX)) as u32;
    // SAFETY: the helper checks the user address and fails instead of faulting.
    if n > 0
        && unsafe { bpf_probe_read_user_buf(start as *const u8, &mut line.bytes[..n]) }.is_err()
    {
        line.len = 0;
    }
    // A second exec of the process replaces its line: counted once.
    let new = COMMAND_LINES.get_ptr(&tgid).is_none();
    match COMMAND_LINES.insert(&tgid, line, 0) {
        Ok(()) if new => entry_made(),
        Err(E2BIG) => count_drop(drop_reason::COMMAND_LINES_MAP_FULL),
        _ => {}
    }
}

/// A watched run's process `parent_tgid` forked `child_tgid`: the child has its parent's command
/// line until it runs a program of its own.
#[inline(always)]
pub fn on_fork(parent_tgid: u32, child_tgid: u32) {
    // A pointer, not an `Option` of the value (see `on_switch_away`).
    let Some(line) = COMMAND_LINES.get_ptr(&parent_tgid) else {
        return;
    };
    // SAFETY: a map value, handed straight to the update helper.
    match COMMAND_LINES.insert(&child_tgid, unsafe { &*line }, u64::from(BPF_NOEXIST)) {
        Ok(()) => entry_made(),
        Err(E2BIG) => count_drop(drop_reason::COMMAND_LINES_MAP_FULL),
        Err(_) => {}
    }
}

/// `task`, the last thread of a process in watched run `run` (0: none), is exiting: marked if
/// the process belongs to a run. One that left its run forgets its command line now.
#[inline(always)]
pub fn on_group_dead(run: u64, task: *const u8) {
    if run == 0 {
        // Almost every process ending on the host was never a run's: none looked for while no
        // process has an entry; else looked up before removing, as a removal takes the
        // bucket's lock.
        if no_process_entries() {
            return;
        }
        let tgid = read::<u32>(task, &OFF_TASK_TGID).unwrap_or(0);
        if COMMAND_LINES.get_ptr(&tgid).is_some() {
            forget_command_line(tgid);
        }
        let _ = take_process(tgid);
        return;
    }
    let pid = read::<u32>(task, &OFF_TASK_PID).unwrap_or(0);
    let signal = load_known::<*const u8>(task, &OFF_TASK_SIGNAL, core::ptr::null());
    let group = |off| load_known::<u64>(signal, off, 0);
    let exiting = Exiting {
        run_id: run,
        cpu_ns: group(&OFF_SIGNAL_SUM_SCHED_RUNTIME),
        minor_faults: group(&OFF_SIGNAL_MIN_FLT),
        major_faults: group(&OFF_SIGNAL_MAJ_FLT),
        io_read_bytes: group(&OFF_SIGNAL_IOAC_READ_BYTES),
        io_write_bytes: group(&OFF_SIGNAL_IOAC_WRITE_BYTES),
    };
    if EXITING.insert(&pid, &exiting, 0).is_err() {
        count_drop(drop_reason::PROCESS_RECORD_LOST);
    }
}

/// A switch away from `prev` in `prev_state`: if it is a marked task's last, its record.
#[inline(always)]
pub fn on_switch_away(prev: *const u8, prev_state: u64) {
    if prev_state & TASK_DEAD == 0 {
        return;
    }
    let pid = read::<u32>(prev, &OFF_TASK_PID).unwrap_or(0);
    // A pointer, not an `Option` of the value: older verifiers refuse copying the undefined
    // payload of a `None`.
    let Some(entry) = EXITING.get_ptr(&pid) else {
        return;
    };
    // SAFETY: a map value, copied out at once, before the entry is removed.
    let group = unsafe { *entry };
    let _ = EXITING.remove(&pid);
    let own = |off| read_optional::<u64>(prev, off).unwrap_or(0);
    let parent =
        read_optional::<*const u8>(prev, &OFF_TASK_REAL_PARENT).unwrap_or(core::ptr::null());
    let tgid = read::<u32>(prev, &OFF_TASK_TGID).unwrap_or(0);
    // Written in place: with its command line the record is too big for the stack.
    let Some(mut entry) = PROCESS_RECORDS.reserve::<ProcessExit>(0) else {
        count_drop(drop_reason::PROCESS_RECORD_LOST);
        forget_command_line(tgid);
        let _ = take_process(tgid);
        return;
    };
    let out = entry.as_mut_ptr();
    // SAFETY: `out` is the reserved record, ours until submitted; `line` is a map value read
    // before its entry is removed.
    unsafe {
        (*out).run_id = group.run_id;
        (*out).start_ns = leader_start_time(prev).unwrap_or(0);
        // SAFETY: helper without preconditions.
        (*out).end_ns = bpf_ktime_get_ns();
        (*out).cpu_ns = own(&OFF_TASK_SUM_EXEC_RUNTIME) + group.cpu_ns;
        (*out).minor_faults = own(&OFF_TASK_MIN_FLT) + group.minor_faults;
        (*out).major_faults = own(&OFF_TASK_MAJ_FLT) + group.major_faults;
        (*out).io_read_bytes = own(&OFF_TASK_IOAC_READ_BYTES) + group.io_read_bytes;
        (*out).io_write_bytes = own(&OFF_TASK_IOAC_WRITE_BYTES) + group.io_write_bytes;
        (*out).net = take_process(tgid);
        (*out).tgid = tgid;
        (*out).ppid = read_optional::<u32>(parent, &OFF_TASK_TGID).unwrap_or(0);
        (*out).exit_code = read_optional::<u32>(prev, &OFF_TASK_EXIT_CODE).unwrap_or(0);
        (*out).comm = comm_of(prev);
        match COMMAND_LINES.get_ptr(&tgid) {
            Some(line) => {
                (*out).command_line_len = (*line).len;
                (*out).command_line = (*line).bytes;
            }
            None => {
                (*out).command_line_len = 0;
                (*out).command_line = [0; COMMAND_LINE_BYTES];
            }
        }
    }
    forget_command_line(tgid);
    entry.submit(0);
}
