//! Network hooks: bytes and packets per socket cgroup (`cgroup_skb` on the v2 root), TCP
//! retransmits and connect latency (charged to the socket's cgroup, never to softirq's current).
//!
//! For a watched run's sockets the same events are also kept per remote endpoint
//! ([`CONNECTIONS`]): a packet's endpoints come from its own IP and TCP/UDP headers (so an
//! unconnected UDP socket's datagrams go to each destination), a retransmit's or connect's from
//! the socket.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_ns, bpf_skb_cgroup_id},
    macros::{btf_tracepoint, cgroup_skb},
    programs::{BtfTracePointContext, SkBuffContext},
};
use cleanroom_common::{ConnKey, HistKey, NetPending, PendingCounters, hist_kind};

use crate::{
    escape::run_of_cgroup,
    maps::{
        CONNECT_START, FIRST_LISTEN, NET_PENDING, address, atomic_add, claim, connection_of,
        existing_stats, in_flight_slot, record_latency_batched, release, stats_of,
        watch_generation,
    },
    sockets::{count_to_process, on_tcp_state},
    task::{
        OFF_SOCK_CGROUP, OFF_SOCK_DADDR, OFF_SOCK_DPORT, OFF_SOCK_FAMILY, OFF_SOCK_NUM,
        OFF_SOCK_V6_DADDR, id_of_cgroup, read_optional, read_ptr,
    },
};

/// `AF_INET` and `AF_INET6`.
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `IPPROTO_TCP` and `IPPROTO_UDP`.
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// TCP states (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_SYN_RECV: i32 = 3;
pub const TCP_FIN_WAIT1: i32 = 4;
pub const TCP_CLOSE: i32 = 7;
pub const TCP_LAST_ACK: i32 = 9;
pub const TCP_LISTEN: i32 = 10;

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
    let cgroup = skb_cgroup(&ctx);
    if let Some(run_id) = count_packet(cgroup, u64::from(ctx.len()), false) {
        count_connection(&ctx, run_id, false);
    }
    ALLOW
}

/// `cgroup_skb/egress`: a packet sent by a socket.
#[cgroup_skb(egress)]
pub fn cgroup_skb_egress(ctx: SkBuffContext) -> i32 {
    let cgroup = skb_cgroup(&ctx);
    if let Some(run_id) = count_packet(cgroup, u64::from(ctx.len()), true) {
        count_connection(&ctx, run_id, true);
    }
    ALLOW
}

/// Counts a packet of `len` bytes of a socket in `cgroup`; gives the watched run the cgroup
/// belongs to. Counted in the CPU's pending copy ([`NET_PENDING`]) when it is this cgroup's
/// (else the copy is first added to its cgroup's entry and made this cgroup's), and the run is
/// the copy's unless [`WATCHED`](crate::maps::WATCHED) changed since: no hash lookup for the
/// packets of one cgroup in a row. A program that interrupted another's update of the copy
/// counts into the entry instead.
#[inline(always)]
fn count_packet(cgroup: u64, len: u64, egress: bool) -> Option<u64> {
    let pending = NET_PENDING.get_ptr_mut(0)?;
    // SAFETY: this CPU's element of a per-CPU array; a program interrupting this one on this CPU
    // sees `busy` and leaves the copy alone (below).
    let pending = unsafe { &mut *pending };
    if !claim(&mut pending.busy) {
        if let Some(stats) = stats_of(cgroup) {
            add_packet(
                &mut stats.net_rx_bytes,
                &mut stats.net_tx_bytes,
                len,
                egress,
            );
            add_packet(
                &mut stats.net_rx_packets,
                &mut stats.net_tx_packets,
                1,
                egress,
            );
        }
        return run_of_cgroup(cgroup);
    }
    let generation = watch_generation();
    if pending.cgroup_id != cgroup {
        // As the scheduler's pending copies (`maps::current_stats`): added only to an entry
        // that still exists, the new cgroup's made now.
        if pending.cgroup_id != 0
            && let Some(entry) = existing_stats(pending.cgroup_id)
        {
            pending.add_to(entry);
        }
        let _ = stats_of(cgroup);
        *pending = NetPending {
            cgroup_id: cgroup,
            run_id: run_of_cgroup(cgroup).unwrap_or(0),
            watch_generation: generation,
            busy: 1,
            ..NetPending::default()
        };
    } else if pending.watch_generation != generation {
        pending.run_id = run_of_cgroup(cgroup).unwrap_or(0);
        pending.watch_generation = generation;
    }
    add_packet(&mut pending.rx_bytes, &mut pending.tx_bytes, len, egress);
    add_packet(&mut pending.rx_packets, &mut pending.tx_packets, 1, egress);
    let run_id = pending.run_id;
    release(&mut pending.busy);
    (run_id != 0).then_some(run_id)
}

/// The watched run of socket cgroup `cgroup`, from this CPU's pending packet copy when it is
/// that cgroup's and [`WATCHED`](crate::maps::WATCHED) has not changed since (else looked up):
/// for the socket hooks of process context, which send and receive what the copy counts. Only
/// read here; a packet counted in between (an interrupt) is told by the cgroup read twice.
#[inline(always)]
pub fn watched_run(cgroup: u64) -> Option<u64> {
    if let Some(pending) = NET_PENDING.get_ptr(0) {
        // SAFETY: this CPU's element of a per-CPU array, only read, field by field.
        let (before, run_id, generation) = unsafe {
            (
                core::ptr::read_volatile(&(*pending).cgroup_id),
                core::ptr::read_volatile(&(*pending).run_id),
                core::ptr::read_volatile(&(*pending).watch_generation),
            )
        };
        // SAFETY: as above.
        let after = unsafe { core::ptr::read_volatile(&(*pending).cgroup_id) };
        if before == cgroup && after == cgroup && generation == watch_generation() {
            return (run_id != 0).then_some(run_id);
        }
    }
    run_of_cgroup(cgroup)
}

/// Adds `n` to `tx` for a packet sent, to `rx` for one received.
#[inline(always)]
fn add_packet(rx: &mut u64, tx: &mut u64, n: u64, egress: bool) {
    if egress {
        *tx += n;
    } else {
        *rx += n;
    }
}

/// A packet of a socket of watched run `run_id`: counted to its remote endpoint and to its
/// process.
#[inline(always)]
fn count_connection(ctx: &SkBuffContext, run_id: u64, egress: bool) {
    let len = u64::from(ctx.len());
    // SAFETY: the context's own `__sk_buff`; the verifier turns this load into one of
    // `skb->sk`, the socket (or null).
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk } as u64;
    count_to_process(sk, len, egress);
    let Some(key) = packet_endpoint(ctx, run_id, egress) else {
        return;
    };
    if let Some(conn) = connection_of(&key) {
        if egress {
            atomic_add(&mut conn.tx_bytes, len);
            atomic_add(&mut conn.tx_packets, 1);
        } else {
            atomic_add(&mut conn.rx_bytes, len);
            atomic_add(&mut conn.rx_packets, 1);
        }
    }
}

/// The remote endpoint of a packet (the destination of one sent, the source of one received),
/// from its IP header and, for TCP and UDP, its ports. `None` for what is not IP.
#[inline(always)]
fn packet_endpoint(ctx: &SkBuffContext, run_id: u64, egress: bool) -> Option<ConnKey> {
    let first: u8 = ctx.load(0).ok()?;
    let mut key = ConnKey {
        run_id,
        ..ConnKey::default()
    };
    let l4 = match first >> 4 {
        4 => {
            let header: [u8; 20] = ctx.load(0).ok()?;
            key.family = 4;
            key.protocol = header[9];
            let at = if egress { 16 } else { 12 };
            key.remote_addr[0] = header[at];
            key.remote_addr[1] = header[at + 1];
            key.remote_addr[2] = header[at + 2];
            key.remote_addr[3] = header[at + 3];
            usize::from(first & 0x0f) * 4
        }
        6 => {
            key.family = 6;
            key.protocol = ctx.load::<u8>(6).ok()?;
            key.remote_addr = ctx.load(if egress { 24 } else { 8 }).ok()?;
            40
        }
        _ => return None,
    };
    if key.protocol == IPPROTO_TCP || key.protocol == IPPROTO_UDP {
        let ports: [u8; 4] = ctx.load(l4).unwrap_or([0; 4]);
        let src = u16::from_be_bytes([ports[0], ports[1]]);
        let dst = u16::from_be_bytes([ports[2], ports[3]]);
        (key.remote_port, key.local_port) = if egress { (dst, src) } else { (src, dst) };
    }
    Some(key)
}

/// The remote endpoint of a TCP socket of run `run_id`, as its packets name it (an IPv6
/// socket talking to an IPv4-mapped address sends IPv4).
#[inline(always)]
fn socket_endpoint(sk: *const u8, run_id: u64) -> Option<ConnKey> {
    let mut key = ConnKey {
        run_id,
        protocol: IPPROTO_TCP,
        ..ConnKey::default()
    };
    match read_optional::<u16>(sk, &OFF_SOCK_FAMILY)? {
        AF_INET => {
            key.family = 4;
            let addr = read_optional::<[u8; 4]>(sk, &OFF_SOCK_DADDR)?;
            key.remote_addr[..4].copy_from_slice(&addr);
        }
        AF_INET6 => {
            let addr = read_optional::<[u8; 16]>(sk, &OFF_SOCK_V6_DADDR)?;
            let mapped = addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff;
            if mapped {
                key.family = 4;
                key.remote_addr[..4].copy_from_slice(&addr[12..]);
            } else {
                key.family = 6;
                key.remote_addr = addr;
            }
        }
        _ => return None,
    }
    key.remote_port = u16::from_be(read_optional::<u16>(sk, &OFF_SOCK_DPORT)?);
    key.local_port = read_optional::<u16>(sk, &OFF_SOCK_NUM)?;
    Some(key)
}

/// The per-endpoint counters of socket `sk` in cgroup `cgroup`, if it belongs to a watched run.
#[inline(always)]
fn socket_connection(
    sk: *const u8,
    cgroup: u64,
) -> Option<&'static mut cleanroom_common::ConnStats> {
    let run_id = watched_run(cgroup)?;
    connection_of(&socket_endpoint(sk, run_id)?)
}

/// The watched run socket `sk` belongs to (by its cgroup, as `cgroup_skb` counts its packets),
/// if any.
#[inline(always)]
pub fn socket_run(sk: *const u8) -> Option<u64> {
    sock_cgroup(sk).and_then(watched_run)
}

/// The v2 id of a `struct sock *`'s cgroup.
#[inline(always)]
fn sock_cgroup(sk: *const u8) -> Option<u64> {
    read_ptr(sk, &OFF_SOCK_CGROUP).and_then(id_of_cgroup)
}

/// `tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, int err)`.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> u32 {
    let sk: *const u8 = ctx.arg(0);
    let Some(cgroup) = sock_cgroup(sk) else {
        return 0;
    };
    if let Some(stats) = stats_of(cgroup) {
        stats.tcp_retransmits += 1;
    }
    if let Some(conn) = socket_connection(sk, cgroup) {
        atomic_add(&mut conn.retransmits, 1);
    }
    0
}

/// `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`: connect latency is
/// the time from `SYN_SENT` to `ESTABLISHED`; each cgroup's first `LISTEN` is kept (when a
/// container a run started began to serve).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    let sk: *const u8 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    on_tcp_state(sk, old, new);
    if new == TCP_SYN_SENT {
        let at = address(sk);
        if at == 0 {
            return 0;
        }
        let Some(slot) = CONNECT_START.get_ptr_mut(in_flight_slot(at)) else {
            return 0;
        };
        let now = now_ns();
        // SAFETY: an element of an array map; a racing writer is told by the check.
        unsafe {
            (*slot).sk = at;
            (*slot).start_ns = now;
            (*slot).check = at ^ now;
        }
    } else if new == TCP_LISTEN {
        if let Some(id) = sock_cgroup(sk) {
            let _ = FIRST_LISTEN.insert(&id, &now_ns(), u64::from(BPF_NOEXIST));
        }
    } else if old == TCP_SYN_SENT {
        let at = address(sk);
        let Some(slot) = CONNECT_START.get_ptr_mut(in_flight_slot(at)) else {
            return 0;
        };
        // SAFETY: an element of an array map, read and taken at once.
        let (tag, start, check) = unsafe { ((*slot).sk, (*slot).start_ns, (*slot).check) };
        // A connect begun before the probes came, or whose slot another took, has no start.
        if at == 0 || tag != at || check != tag ^ start {
            return 0;
        }
        // SAFETY: as above.
        unsafe { (*slot).sk = 0 };
        if new == TCP_ESTABLISHED
            && let Some(id) = sock_cgroup(sk)
        {
            let took = now_ns().saturating_sub(start);
            record_latency_batched(
                HistKey {
                    cgroup_id: id,
                    kind: hist_kind::TCP_CONNECT,
                    dev: 0,
                },
                took,
            );
            if let Some(conn) = socket_connection(sk, id) {
                atomic_add(&mut conn.connects, 1);
                atomic_add(&mut conn.connect_ns_sum, took);
                if took > conn.connect_ns_max {
                    conn.connect_ns_max = took;
                }
            }
        }
    }
    0
}

/// The clock of connect latency.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_ns() }
}
