//! Stack samples of watched runs' tasks, for the CPU profile.
//!
//! The agent opens a sampling event on each CPU (cpu-clock, or cycles where there is a PMU) and
//! attaches [`profile_cpu`] to it. A sample of a task of a watched run sends, through a ring
//! buffer, its kernel stack and what user space needs to unwind its user stack with the
//! binaries' `.eh_frame`: the user registers and a copy of the top of the user stack (frame
//! pointers alone give junk for binaries built without them, the usual release build).
//! Samples the buffer had no room for are counted.

use aya_ebpf::{
    EbpfContext,
    bindings::pt_regs,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_stack,
        bpf_ktime_get_ns, bpf_probe_read_kernel, generated::bpf_probe_read_user,
    },
    macros::{map, perf_event},
    maps::RingBuf,
    programs::PerfEventContext,
};
use cleanroom_common::{
    KERNEL_FRAMES, STACK_SAMPLES_BYTES, StackSample, USER_STACK_BYTES, drop_reason,
};

use crate::{
    escape::run_of_cgroup,
    maps::count_drop,
    task::{OFF_TASK_STACK, current_cgroup_id, read_optional},
};

/// The samples, for the agent to read.
#[map]
pub static STACK_SAMPLES: RingBuf = RingBuf::with_byte_size(STACK_SAMPLES_BYTES, 0);

/// x86_64's `THREAD_SIZE`: a task's user registers are the `pt_regs` at the top of its kernel
/// stack (`task_pt_regs`).
const THREAD_SIZE: usize = 16_384;

/// A page.
const PAGE: u64 = 4_096;

/// A sample: if the current task belongs to a watched run, its stacks.
#[perf_event]
pub fn profile_cpu(ctx: PerfEventContext) -> u32 {
    if let Some(run_id) = run_of_cgroup(current_cgroup_id()) {
        sample(&ctx, run_id);
    }
    0
}

/// The current task's sample, for run `run_id`.
#[inline(always)]
fn sample(ctx: &PerfEventContext, run_id: u64) {
    let Some(mut entry) = STACK_SAMPLES.reserve::<StackSample>(0) else {
        count_drop(drop_reason::STACK_SAMPLE_LOST);
        return;
    };
    let out = entry.as_mut_ptr();
    // SAFETY: the context's own `bpf_perf_event_data`, whose first field is the registers.
    let regs = unsafe { &*(ctx.as_ptr() as *const pt_regs) };
    let in_user_mode = regs.cs & 3 == 3;
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `out` is the reserved record, ours until submitted; every helper below writes
    // inside it, at most the sizes of its fields.
    unsafe {
        (*out).run_id = run_id;
        (*out).time_ns = bpf_ktime_get_ns();
        (*out).tgid = (pid_tgid >> 32) as u32;
        (*out).pid = pid_tgid as u32;
        (*out).kernel_stack_bytes = 0;
        (*out).user_stack_bytes = 0;
        let user = if in_user_mode {
            Some((regs.rip, regs.rsp, regs.rbp))
        } else {
            let n = bpf_get_stack(
                ctx.as_ptr(),
                (*out).kernel_stack.as_mut_ptr().cast(),
                (KERNEL_FRAMES * 8) as u32,
                0,
            );
            if n > 0 {
                (*out).kernel_stack_bytes = n as u32;
            }
            user_regs()
        };
        let (ip, sp, bp) = user.unwrap_or((0, 0, 0));
        (*out).user_ip = ip;
        (*out).user_sp = sp;
        (*out).user_bp = bp;
        (*out).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        if sp != 0 {
            (*out).user_stack_bytes = copy_user_stack(sp, (*out).user_stack.as_mut_ptr());
        }
    }
    entry.submit(0);
}

/// The current task's user registers (ip, sp, bp), from the `pt_regs` at the top of its
/// kernel stack; `None` for a kernel thread or where they cannot be read.
#[inline(always)]
fn user_regs() -> Option<(u64, u64, u64)> {
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let stack = read_optional::<*const u8>(task, &OFF_TASK_STACK)?;
    if stack.is_null() {
        return None;
    }
    let at = stack.wrapping_add(THREAD_SIZE - core::mem::size_of::<pt_regs>());
    // SAFETY: the helper checks the address and fails instead of faulting.
    let regs = unsafe { bpf_probe_read_kernel(at.cast::<pt_regs>()) }.ok()?;
    (regs.cs & 3 == 3 && regs.rsp != 0).then_some((regs.rip, regs.rsp, regs.rbp))
}

/// Copies the user stack from `sp` up into `to` (room for [`cleanroom_common::USER_STACK_ROOM`]
/// bytes): to the next page boundary, then page by page while the pages are readable, at most
/// [`USER_STACK_BYTES`] in all. Returns the bytes copied.
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
    let mut copied = first;
    for _ in 0..(USER_STACK_BYTES as u64 / PAGE - 1) {
        // SAFETY: `copied` ≤ 4 pages, so a page from it stays inside the room (5 pages).
        let dst = unsafe { to.add((copied & (4 * PAGE - 1)) as usize) };
        if unsafe { bpf_probe_read_user(dst.cast(), PAGE as u32, (sp + copied) as *const _) } != 0 {
            break;
        }
        copied += PAGE;
    }
    copied as u32
}
