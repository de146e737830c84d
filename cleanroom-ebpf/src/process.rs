//! One record per process of a watched run, with what the kernel accounted to it: marked at
//! its last thread's `sched_process_exit`, sent at that thread's last context switch, when its
//! CPU time is final (the exit path after the tracepoint runs for a few hundred µs more).
//!
//! Nothing here runs on a hot path but a test of the switched-out task's state: the record is
//! built only for a dead task that was marked.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{HashMap, RingBuf},
};
use cleanroom_common::{Exiting, MAX_EXITING, PROCESS_RECORDS_BYTES, ProcessExit, drop_reason};

use crate::{
    escape::run_of_cgroup,
    maps::count_drop,
    task::{
        OFF_SIGNAL_IOAC_READ_BYTES, OFF_SIGNAL_IOAC_WRITE_BYTES, OFF_SIGNAL_MAJ_FLT,
        OFF_SIGNAL_MIN_FLT, OFF_SIGNAL_SUM_SCHED_RUNTIME, OFF_TASK_EXIT_CODE,
        OFF_TASK_IOAC_READ_BYTES, OFF_TASK_IOAC_WRITE_BYTES, OFF_TASK_MAJ_FLT, OFF_TASK_MIN_FLT,
        OFF_TASK_PID, OFF_TASK_REAL_PARENT, OFF_TASK_SIGNAL, OFF_TASK_SUM_EXEC_RUNTIME,
        OFF_TASK_TGID, comm_of, leader_start_time, read, read_optional,
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

/// `task`, the last thread of a process in cgroup `cgroup`, is exiting: marked if the process
/// belongs to a watched run.
#[inline(always)]
pub fn on_group_dead(cgroup: u64, task: *const u8) {
    let run = run_of_cgroup(cgroup).unwrap_or(0);
    if run == 0 {
        return;
    }
    let pid = read::<u32>(task, &OFF_TASK_PID).unwrap_or(0);
    let signal = read_optional::<*const u8>(task, &OFF_TASK_SIGNAL).unwrap_or(core::ptr::null());
    let group = |off| read_optional::<u64>(signal, off).unwrap_or(0);
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
    let record = ProcessExit {
        run_id: group.run_id,
        start_ns: leader_start_time(prev).unwrap_or(0),
        // SAFETY: helper without preconditions.
        end_ns: unsafe { bpf_ktime_get_ns() },
        cpu_ns: own(&OFF_TASK_SUM_EXEC_RUNTIME) + group.cpu_ns,
        minor_faults: own(&OFF_TASK_MIN_FLT) + group.minor_faults,
        major_faults: own(&OFF_TASK_MAJ_FLT) + group.major_faults,
        io_read_bytes: own(&OFF_TASK_IOAC_READ_BYTES) + group.io_read_bytes,
        io_write_bytes: own(&OFF_TASK_IOAC_WRITE_BYTES) + group.io_write_bytes,
        tgid: read::<u32>(prev, &OFF_TASK_TGID).unwrap_or(0),
        ppid: read_optional::<u32>(parent, &OFF_TASK_TGID).unwrap_or(0),
        exit_code: read_optional::<u32>(prev, &OFF_TASK_EXIT_CODE).unwrap_or(0),
        _pad: 0,
        comm: comm_of(prev),
    };
    if PROCESS_RECORDS.output::<ProcessExit>(&record, 0).is_err() {
        count_drop(drop_reason::PROCESS_RECORD_LOST);
    }
}
