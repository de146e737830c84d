//! Page-fault hooks. Both run in the faulting task, so the current cgroup is the right one.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{maps::current_stats, task::current_cgroup_id};

/// `page_fault_user(unsigned long address, struct pt_regs *regs, unsigned long error_code)`.
#[btf_tracepoint(function = "page_fault_user")]
pub fn page_fault_user(_ctx: BtfTracePointContext) -> u32 {
    if let Some(stats) = current_stats(current_cgroup_id()) {
        stats.page_faults_user += 1;
    }
    0
}

/// `page_fault_kernel(...)`: a fault taken in kernel mode, e.g. while copying to user memory.
#[btf_tracepoint(function = "page_fault_kernel")]
pub fn page_fault_kernel(_ctx: BtfTracePointContext) -> u32 {
    if let Some(stats) = current_stats(current_cgroup_id()) {
        stats.page_faults_kernel += 1;
    }
    0
}
