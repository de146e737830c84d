//! Network hooks: bytes and packets per socket cgroup (`cgroup_skb` on the v2 root), TCP
//! retransmits and connect latency (charged to the socket's cgroup, never to softirq's current).

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_cgroup_id},
    macros::{btf_tracepoint, cgroup_skb},
    programs::{BtfTracePointContext, SkBuffContext},
};
use cleanroom_common::hist_kind;

use crate::{
    maps::{CONNECT_START, record_latency, stats_of},
    task::{OFF_SOCK_CGROUP, id_of_cgroup, read_ptr},
};

/// `TCP_ESTABLISHED` and `TCP_SYN_SENT` (include/net/tcp_states.h).
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;

/// Lets every packet through: these programs only count.
const ALLOW: i32 = 1;

/// The v2 id of the socket's cgroup.
#[inline(always)]
fn skb_cgroup(ctx: &SkBuffContext) -> u64 {
    // SAFETY: the context's own `__sk_buff`.
    unsafe { bpf_skb_cgroup_id(ctx.skb.skb) }
}

/// `cgroup_skb/ingress`: a packet delivered to a socket. `len` is from the IP header on.
#[cgroup_skb(ingress)]
pub fn cgroup_skb_ingress(ctx: SkBuffContext) -> i32 {
    if let Some(stats) = stats_of(skb_cgroup(&ctx)) {
        stats.net_rx_bytes += u64::from(ctx.len());
        stats.net_rx_packets += 1;
    }
    ALLOW
}

/// `cgroup_skb/egress`: a packet sent by a socket.
#[cgroup_skb(egress)]
pub fn cgroup_skb_egress(ctx: SkBuffContext) -> i32 {
    if let Some(stats) = stats_of(skb_cgroup(&ctx)) {
        stats.net_tx_bytes += u64::from(ctx.len());
        stats.net_tx_packets += 1;
    }
    ALLOW
}

/// The v2 id of a `struct sock *`'s cgroup.
#[inline(always)]
fn sock_cgroup(sk: *const u8) -> Option<u64> {
    read_ptr(sk, &OFF_SOCK_CGROUP).and_then(id_of_cgroup)
}

/// `tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, int err)`.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> u32 {
    if let Some(stats) = sock_cgroup(ctx.arg(0)).and_then(stats_of) {
        stats.tcp_retransmits += 1;
    }
    0
}

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`: connect latency is
/// the time from `SYN_SENT` to `ESTABLISHED`.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if new == TCP_SYN_SENT {
        let _ = CONNECT_START.insert(sk as u64, now, 0);
    } else if old == TCP_SYN_SENT {
        // SAFETY: a map value read once, right away.
        if let Some(start) = unsafe { CONNECT_START.get(sk as u64) }.copied() {
            let _ = CONNECT_START.remove(sk as u64);
            if new == TCP_ESTABLISHED {
                if let Some(id) = sock_cgroup(sk) {
                    record_latency(id, hist_kind::TCP_CONNECT, 0, now.saturating_sub(start));
                }
            }
        }
    }
    0
}
