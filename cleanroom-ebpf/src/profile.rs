//! Stack samples of the tasks of profiled cgroups ([`PROFILED`](crate::maps::PROFILED)), for
//! the profiles: on CPU, off CPU, page faults and block I/O.
//!
//! Each sample sends, through a ring buffer, the task's kernel stack and what user space needs
//! to unwind its user stack with the binaries' `.eh_frame`: the user registers and a copy of the
//! top of the user stack (frame pointers alone give junk for binaries built without them, the
//! usual release build).
//!
//! - On CPU: the agent opens a sampling event on each CPU (cpu-clock, or cycles where there is
//!   a PMU) and attaches [`profile_cpu`] to it.
//! - Off CPU: [`profile_switch`] sends a task's stacks as it switches out voluntarily, and at
//!   its switch back in a small [`OffCpuEnd`] with the time it was out; user space joins the
//!   two. Stacks are copied within a budget per task (a token bucket: [`COPY_COST_NS`],
//!   [`COPY_BURST_NS`]) and only while the buffer is less than half full, so a task switching
//!   100,000 times a second cannot flood it; every wait's time is still sent, marked as
//!   without stacks.
//! - Page faults and block I/O: [`profile_fault`] and [`profile_block`] send one sample per
//!   period (faults, bytes) of the profiled cgroups' events on each CPU, weighted by the events
//!   since the last (as `perf record -c N` does).
//!
//! Samples and wait ends the buffer had no room for are counted.
//!
//! The reader is woken only once the buffer holds a batch ([`WAKE_AT_BYTES`]; [`wake_flags`]):
//! a wakeup for each sample cost the machine more than the reading of it. Below that, it reads
//! at its own pace (every 100 ms).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, pt_regs},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_stack,
        bpf_ktime_get_ns,
        generated::{bpf_probe_read_kernel as bpf_probe_read_kernel_raw, bpf_probe_read_user},
    },
    macros::{btf_tracepoint, map, perf_event},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, PerfEventContext},
};
use cleanroom_common::{
    KERNEL_FRAMES, MAX_OFF_CPU_TASKS, OffCpuEnd, STACK_SAMPLES_BYTES, StackSample,
    USER_STACK_BYTES, drop_reason, profile_period, sample_kind,
};

use crate::{
    escape::profile_of_cgroup,
    maps::count_drop,
    task::{
        OFF_BIO_OPF, OFF_BIO_SIZE, OFF_TASK_MM, OFF_TASK_PID, OFF_TASK_STACK, OFF_TASK_STATE,
        OFF_TASK_TGID, current_cgroup_id, current_is_kthread, read, read_optional,
    },
};

/// The samples and off-CPU wait ends, for the agent to read.
#[map]
pub static STACK_SAMPLES: RingBuf = RingBuf::with_byte_size(STACK_SAMPLES_BYTES, 0);

/// Bytes waiting in [`STACK_SAMPLES`] from which each record wakes the reader: some 50
/// samples, an eighth of the buffer.
const WAKE_AT_BYTES: u64 = STACK_SAMPLES_BYTES as u64 / 8;

/// How a record is handed over: without waking the reader while the buffer holds less than
/// [`WAKE_AT_BYTES`], else waking it (by default the kernel wakes it only for a record put in
/// an empty buffer, which a batch never is).
#[inline(always)]
fn wake_flags() -> u64 {
    if STACK_SAMPLES.query(u64::from(BPF_RB_AVAIL_DATA)) < WAKE_AT_BYTES {
        u64::from(BPF_RB_NO_WAKEUP)
    } else {
        u64::from(BPF_RB_FORCE_WAKEUP)
    }
}

/// [`profile_period`] slot → events per sample; 0 (never set) means every event.
#[map]
pub static PROFILE_PERIODS: Array<u64> = Array::with_max_entries(profile_period::COUNT, 0);

/// [`profile_period`] slot → this CPU's events since its last sample.
#[map]
static PERIOD_PROGRESS: PerCpuArray<u64> = PerCpuArray::with_max_entries(profile_period::COUNT, 0);

/// A profiled task: its off-CPU wait in progress, and its budget of stack copies.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OffCpuTask {
    /// Its run.
    pub run_id: u64,
    /// When it switched out; 0 while it is on a CPU.
    pub out_ns: u64,
    /// Its budget, in ns of [`COPY_COST_NS`], at [`Self::credit_at`].
    pub credit_ns: u64,
    /// When the budget was last brought up to date.
    pub credit_at: u64,
    /// Its state as it switched out.
    pub state: u32,
    /// Whether its stacks were sent at the switch-out.
    pub captured: u32,
}

/// pid → its [`OffCpuTask`].
#[map]
pub static OFF_CPU: LruHashMap<u32, OffCpuTask> =
    LruHashMap::with_max_entries(MAX_OFF_CPU_TASKS, 0);

/// A stack copy at a switch-out costs this much of a task's budget, which grows by the time
/// that passes: at most 1,000 copies a second per task, on average.
pub const COPY_COST_NS: u64 = 1_000_000;

/// The most a task's budget holds: 16 copies in a row.
pub const COPY_BURST_NS: u64 = 16 * COPY_COST_NS;

/// `TASK_DEAD`: the state of a task's very last switch.
const TASK_DEAD: u64 = 0x80;

/// `REQ_OP_READ` and `REQ_OP_WRITE`, the low 8 bits of `bi_opf`.
const REQ_OP_MASK: u32 = 0xff;
const REQ_OP_WRITE: u32 = 1;

/// x86_64's `THREAD_SIZE`: a task's user registers are the `pt_regs` at the top of its kernel
/// stack (`task_pt_regs`).
const THREAD_SIZE: usize = 16_384;

/// A page.
const PAGE: u64 = 4_096;

/// A sample: if the current task is in a profiled cgroup, its stacks.
#[perf_event]
pub fn profile_cpu(ctx: PerfEventContext) -> u32 {
    if let Some(run_id) = profile_of_cgroup(current_cgroup_id()) {
        // SAFETY: the context's own `bpf_perf_event_data`, whose first field is the registers.
        let regs = unsafe { &*(ctx.as_ptr() as *const pt_regs) };
        let head = Head {
            run_id,
            kind: sample_kind::CPU,
            state: 0,
            weight: 1,
        };
        // SAFETY: helper without preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        let in_user_mode = regs.cs & 3 == 3;
        let user = if in_user_mode {
            (regs.rip, regs.rsp, regs.rbp)
        } else {
            read_user_regs(task_regs())
        };
        // One inlined copy of `send`: older verifiers walk every path of each.
        send(ctx.as_ptr(), head, now, user, !in_user_mode);
    }
    0
}

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)`: `prev` (current) switching out, `next` switching in.
#[btf_tracepoint(function = "sched_switch")]
pub fn profile_switch(ctx: BtfTracePointContext) -> u32 {
    on_switch(&ctx, ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(3));
    0
}

/// The same, before 5.18: `prev`'s state is read from the task.
#[btf_tracepoint(function = "sched_switch")]
pub fn profile_switch_v1(ctx: BtfTracePointContext) -> u32 {
    let prev: *const u8 = ctx.arg(1);
    let state = read::<u32>(prev, &OFF_TASK_STATE).unwrap_or(0);
    on_switch(&ctx, ctx.arg(0), prev, ctx.arg(2), u64::from(state));
    0
}

/// A switch from `prev` (in `prev_state`) to `next`: a profiled task that blocks starts a wait
/// (its stacks sent when its budget allows), and `next`'s wait, if it had one, ends.
#[inline(always)]
fn on_switch(
    ctx: &BtfTracePointContext,
    preempt: u64,
    prev: *const u8,
    next: *const u8,
    prev_state: u64,
) {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let state = prev_state & 0xffff_ffff;
    if preempt & 0xff == 0
        && state != 0
        && state & TASK_DEAD == 0
        && let Some(run_id) = profile_of_cgroup(current_cgroup_id())
        && let Some(pid) = read::<u32>(prev, &OFF_TASK_PID)
    {
        switch_out(ctx, run_id, pid, state as u32, now);
    }
    if let Some(pid) = read::<u32>(next, &OFF_TASK_PID).filter(|p| *p != 0) {
        switch_in(next, pid, now);
    }
}

/// Task `pid` of run `run_id` blocks in `state` at `now`.
#[inline(always)]
fn switch_out(ctx: &BtfTracePointContext, run_id: u64, pid: u32, state: u32, now: u64) {
    let mut task = match OFF_CPU.get_ptr(&pid) {
        // SAFETY: a value of the map, copied out at once.
        Some(t) => unsafe { *t },
        None => OffCpuTask {
            run_id,
            out_ns: 0,
            credit_ns: COPY_BURST_NS,
            credit_at: now,
            state: 0,
            captured: 0,
        },
    };
    let credit = task
        .credit_ns
        .saturating_add(now.saturating_sub(task.credit_at))
        .min(COPY_BURST_NS);
    let room =
        STACK_SAMPLES.query(u64::from(BPF_RB_AVAIL_DATA)) < u64::from(STACK_SAMPLES_BYTES) / 2;
    let copy = credit >= COPY_COST_NS && room;
    let head = Head {
        run_id,
        kind: sample_kind::OFF_CPU,
        state,
        weight: 0,
    };
    let captured = copy && send(ctx.as_ptr(), head, now, read_user_regs(task_regs()), true);
    task.run_id = run_id;
    task.out_ns = now;
    task.credit_ns = if captured {
        credit - COPY_COST_NS
    } else {
        credit
    };
    task.credit_at = now;
    task.state = state;
    task.captured = u32::from(captured);
    let _ = OFF_CPU.insert(&pid, &task, 0);
}

/// Task `pid` switches back in at `now`: the end of its wait, if it had one.
#[inline(always)]
fn switch_in(next: *const u8, pid: u32, now: u64) {
    let Some(task) = OFF_CPU.get_ptr_mut(&pid) else {
        return;
    };
    // SAFETY: a value of the map; a wait ends only here, on the CPU the task switches in on.
    let (run_id, out_ns, captured, state) = unsafe {
        (
            (*task).run_id,
            (*task).out_ns,
            (*task).captured,
            (*task).state,
        )
    };
    if out_ns == 0 {
        return;
    }
    // SAFETY: as above.
    unsafe { (*task).out_ns = 0 };
    let end = OffCpuEnd {
        run_id,
        out_ns,
        in_ns: now,
        pid,
        tgid: read::<u32>(next, &OFF_TASK_TGID).unwrap_or(pid),
        captured,
        state,
    };
    if STACK_SAMPLES
        .output::<OffCpuEnd>(&end, wake_flags())
        .is_err()
    {
        count_drop(drop_reason::OFF_CPU_END_LOST);
    }
}

/// `page_fault_user(unsigned long address, struct pt_regs *regs, unsigned long error_code)`:
/// one sample per period of a profiled cgroup's faults on this CPU, with the user registers of
/// the fault.
#[btf_tracepoint(function = "page_fault_user")]
pub fn profile_fault(ctx: BtfTracePointContext) -> u32 {
    let Some(run_id) = profile_of_cgroup(current_cgroup_id()) else {
        return 0;
    };
    let weight = period_due(profile_period::FAULTS, 1);
    if weight == 0 {
        return 0;
    }
    let user = read_user_regs(ctx.arg::<*const pt_regs>(1));
    let head = Head {
        run_id,
        kind: sample_kind::FAULT,
        state: 0,
        weight,
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    send(ctx.as_ptr(), head, now, user, false);
    0
}

/// `block_bio_queue(struct bio *bio)`: runs in the submitter.
#[btf_tracepoint(function = "block_bio_queue")]
pub fn profile_block(ctx: BtfTracePointContext) -> u32 {
    on_bio(&ctx, ctx.arg(0));
    0
}

/// `block_bio_queue(struct request_queue *q, struct bio *bio)`, before 5.11.
#[btf_tracepoint(function = "block_bio_queue")]
pub fn profile_block_q(ctx: BtfTracePointContext) -> u32 {
    on_bio(&ctx, ctx.arg(1));
    0
}

/// A bio a profiled task submits itself (not a kernel thread writing back for it): one
/// sample per period of such bytes on this CPU, with the submitter's stacks. The state says
/// whether it reads (0) or writes (1).
#[inline(always)]
fn on_bio(ctx: &BtfTracePointContext, bio: *const u8) {
    if current_is_kthread() {
        return;
    }
    let Some(run_id) = profile_of_cgroup(current_cgroup_id()) else {
        return;
    };
    let Some(opf) = read::<u32>(bio, &OFF_BIO_OPF) else {
        return;
    };
    let Some(size) = read::<u32>(bio, &OFF_BIO_SIZE) else {
        return;
    };
    let op = opf & REQ_OP_MASK;
    if op > REQ_OP_WRITE || size == 0 {
        return;
    }
    let weight = period_due(profile_period::BLOCK_BYTES, u64::from(size));
    if weight == 0 {
        return;
    }
    let head = Head {
        run_id,
        kind: sample_kind::BLOCK,
        state: op,
        weight,
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    send(ctx.as_ptr(), head, now, read_user_regs(task_regs()), true);
}

/// Adds `events` to this CPU's progress in `slot`'s period; when a period is complete, resets
/// it and gives the events it held (the weight of a sample), else 0. A plain value, not an
/// `Option`: see [`read_user_regs`].
#[inline(always)]
fn period_due(slot: u32, events: u64) -> u64 {
    // SAFETY: a plain u64 value, copied out at once.
    let period = PROFILE_PERIODS.get_ptr(slot).map_or(0, |p| unsafe { *p });
    let Some(progress) = PERIOD_PROGRESS.get_ptr_mut(slot) else {
        return 0;
    };
    // SAFETY: a per-CPU slot, and programs do not nest on one CPU.
    unsafe {
        let total = *progress + events;
        if total < period {
            *progress = total;
            return 0;
        }
        *progress = 0;
        total
    }
}

/// What a sample is, apart from its stacks.
#[derive(Clone, Copy)]
struct Head {
    run_id: u64,
    kind: u32,
    state: u32,
    weight: u64,
}

/// Sends the current task's sample: `head`, its user stack from `user` (ip, sp, bp; sp 0 for
/// none), and its kernel stack if `kernel` (from the context `ctx`). False when the buffer had
/// no room (the sample is counted as lost).
#[inline(always)]
fn send(ctx: *mut c_void, head: Head, now: u64, user: (u64, u64, u64), kernel: bool) -> bool {
    let Some(mut entry) = STACK_SAMPLES.reserve::<StackSample>(0) else {
        count_drop(drop_reason::STACK_SAMPLE_LOST);
        return false;
    };
    let out = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `out` is the reserved record, ours until submitted; every helper below writes
    // inside it, at most the sizes of its fields.
    unsafe {
        (*out).run_id = head.run_id;
        (*out).time_ns = now;
        (*out).tgid = (pid_tgid >> 32) as u32;
        (*out).pid = pid_tgid as u32;
        (*out).kind = head.kind;
        (*out).state = head.state;
        (*out).weight = head.weight;
        (*out).kernel_stack_bytes = 0;
        (*out).user_stack_bytes = 0;
        if kernel {
            let n = bpf_get_stack(
                ctx,
                (*out).kernel_stack.as_mut_ptr().cast(),
                (KERNEL_FRAMES * 8) as u32,
                0,
            );
            if n > 0 {
                (*out).kernel_stack_bytes = n as u32;
            }
        }
        let (ip, sp, bp) = user;
        (*out).user_ip = ip;
        (*out).user_sp = sp;
        (*out).user_bp = bp;
        (*out).mm = current_mm();
        (*out).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        if sp != 0 {
            (*out).user_stack_bytes = copy_user_stack(sp, (*out).user_stack.as_mut_ptr());
        }
    }
    entry.submit(wake_flags());
    true
}

/// The current task's address space (`task->mm`) as a number; 0 where it cannot be read.
#[inline(always)]
fn current_mm() -> u64 {
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    match read_optional::<u64>(task, &OFF_TASK_MM) {
        Some(mm) => mm,
        None => 0,
    }
}

/// Where the current task's user registers are: the `pt_regs` at the top of its kernel stack
/// (`task_pt_regs`); null where that cannot be read.
#[inline(always)]
fn task_regs() -> *const pt_regs {
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    match read_optional::<*const u8>(task, &OFF_TASK_STACK) {
        Some(stack) if !stack.is_null() => stack
            .wrapping_add(THREAD_SIZE - core::mem::size_of::<pt_regs>())
            .cast(),
        _ => core::ptr::null(),
    }
}

/// The user registers (ip, sp, bp) in the `pt_regs` at `at`; zeros where they cannot be read
/// or are not a user mode's. Every value is set on every path: older verifiers (5.10) refuse a
/// program that copies an `Option`'s undefined payload.
#[inline(always)]
fn read_user_regs(at: *const pt_regs) -> (u64, u64, u64) {
    if at.is_null() {
        return (0, 0, 0);
    }
    // SAFETY: all-zero is a valid `pt_regs` (plain integers).
    let mut regs: pt_regs = unsafe { core::mem::zeroed() };
    // SAFETY: the helper writes at most `size_of::<pt_regs>()` bytes into `regs`, checks the
    // address it reads and fails instead of faulting.
    let failed = unsafe {
        bpf_probe_read_kernel_raw(
            (&mut regs as *mut pt_regs).cast(),
            core::mem::size_of::<pt_regs>() as u32,
            at.cast(),
        )
    } != 0;
    if failed || regs.cs & 3 != 3 || regs.rsp == 0 {
        return (0, 0, 0);
    }
    (regs.rip, regs.rsp, regs.rbp)
}

/// Copies the user stack from `sp` up into `to` (room for [`cleanroom_common::USER_STACK_ROOM`]
/// bytes): to the next page boundary, then page by page while the pages are readable, at most
/// the bytes user space set in [`PROFILE_PERIODS`] (and [`USER_STACK_BYTES`]) in all. Returns
/// the bytes copied.
///
/// # Safety
/// `to` must be valid for [`cleanroom_common::USER_STACK_ROOM`] bytes.
#[inline(always)]
unsafe fn copy_user_stack(sp: u64, to: *mut u8) -> u32 {
    // 1..=PAGE bytes: the verifier sees the bound of the mask.
    let first = ((PAGE - (sp & (PAGE - 1)) - 1) & (PAGE - 1)) + 1;
    // SAFETY: `first` ≤ PAGE bytes into `to`; the helper fails instead of faulting.
    if unsafe { bpf_probe_read_user(to.cast(), first as u32, sp as *const _) } != 0 {
        return 0;
    }
    let limit = PROFILE_PERIODS
        .get_ptr(profile_period::STACK_BYTES)
        // SAFETY: a plain u64 value, copied out at once.
        .map_or(0, |p| unsafe { *p });
    let limit = if limit == 0 {
        USER_STACK_BYTES as u64
    } else {
        limit
    };
    let mut copied = first;
    for _ in 0..(USER_STACK_BYTES as u64 / PAGE - 1) {
        if copied + PAGE > limit {
            break;
        }
        // SAFETY: `copied` ≤ 4 pages, so a page from it stays inside the room (5 pages).
        let dst = unsafe { to.add((copied & (4 * PAGE - 1)) as usize) };
        if unsafe { bpf_probe_read_user(dst.cast(), PAGE as u32, (sp + copied) as *const _) } != 0 {
            break;
        }
        copied += PAGE;
    }
    copied as u32
}
