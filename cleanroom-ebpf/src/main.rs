//! Cleanroom's kernel programs.
//!
//! Every program aggregates in the kernel, per cgroup v2 id, into the per-CPU counters of
//! [`maps`]; nothing per event crosses to user space. Each hook family has its own module, named
//! after the events it handles. Offsets of kernel structures are never compiled in: the agent
//! reads them from the running kernel's BTF and sets them as load-time globals ([`task`]).
//! Two records are per process: [`escape`]'s, a process that leaves a watched run's cgroup,
//! written when it leaves (a rare event) and read by the agent at the end of the run; and
//! [`process`]'s, each process of a watched run with its own figures, sent when it ends
//! (its network traffic counted by [`sockets`], which knows each socket's process).
#![no_std]
#![no_main]
// Atomic adds on shared histograms (see maps::atomic_add).
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic add on the BPF target")]

mod block;
mod cgroup;
mod escape;
mod fault;
mod maps;
mod net;
mod process;
mod profile;
mod sched;
mod sockets;
mod task;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; BPF programs cannot panic.
    loop {}
}

/// GPL is required for the tracing helpers used here (`bpf_probe_read_kernel`).
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 4] = *b"GPL\0";
