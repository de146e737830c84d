//! The floor: an empty program on every hook Cleanroom uses, with the same names, so the
//! benchmark (`cargo xtask bench`) can tell what a hook costs by itself from what Cleanroom's
//! programs add to it.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{btf_tracepoint, cgroup_skb},
    programs::{BtfTracePointContext, SkBuffContext},
};

macro_rules! empty_tp_btf {
    ($($name:ident),* $(,)?) => {
        $(
            #[btf_tracepoint]
            pub fn $name(_ctx: BtfTracePointContext) -> u32 {
                0
            }
        )*
    };
}

empty_tp_btf!(
    sched_stat_runtime,
    sched_switch,
    sched_wakeup,
    sched_wakeup_new,
    sched_process_fork,
    sched_process_exit,
    sched_process_exec,
    page_fault_user,
    page_fault_kernel,
    block_bio_queue,
    block_split,
    block_rq_issue,
    block_rq_complete,
    tcp_retransmit_skb,
    inet_sock_set_state,
    sock_send_length,
    sock_recv_length,
    cgroup_mkdir,
    cgroup_rmdir,
    cgroup_attach_task,
);

/// Lets the packet through, counting nothing.
#[cgroup_skb(ingress)]
pub fn cgroup_skb_ingress(_ctx: SkBuffContext) -> i32 {
    1
}

/// Lets the packet through, counting nothing.
#[cgroup_skb(egress)]
pub fn cgroup_skb_egress(_ctx: SkBuffContext) -> i32 {
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Same license as the real programs, so both load under the same rules.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 4] = *b"GPL\0";
