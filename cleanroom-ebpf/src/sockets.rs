//! Which process a watched run's packets belong to.
//!
//! A packet reaches `cgroup_skb` with its socket but not its process: received ones in softirq,
//! whose current task is whoever was interrupted, and even sent ones may leave from a timer or
//! an ACK. So each socket of a run is given an owner in process context — the process that
//! last sent or received on it (`sock_send_length`, `sock_recv_length`: 6.4 on), or, on any
//! kernel, the one that connected, listened or closed it (`inet_sock_set_state`) — and each
//! packet is counted to its socket's owner ([`PROCESS_NET`]), read into the process's record
//! when it ends. A socket handed to a child belongs to the child once it uses it.
//!
//! A socket is known by its address (`struct sock *`), the same to `cgroup_skb` and to the
//! tracepoints. Traffic before an owner is known (data that arrived before `accept`) waits in
//! the socket's entry and goes to the first owner. Traffic after the owner ended (the peer's
//! last ACK) is in the run's totals only. Without the 6.4 tracepoints, an accepted connection
//! is its closer's, and an unconnected UDP socket no process's.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, map},
    maps::{HashMap, LruHashMap},
    programs::BtfTracePointContext,
};
use cleanroom_common::{MAX_PROCESS_NET, MAX_SOCKETS, ProcessNet, SocketOwner, drop_reason};

use crate::{
    maps::{atomic_add, count_drop},
    net::{
        TCP_CLOSE, TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_LAST_ACK, TCP_LISTEN, TCP_SYN_RECV,
        TCP_SYN_SENT, socket_run, watched_run,
    },
    process::{entry_gone, entry_made},
    task::current_cgroup_id,
};

/// `struct sock *` of a watched run's socket → its owner. A TCP socket's entry goes when it
/// closes; a UDP socket's, whose end no tracepoint shows, when the least recently used goes.
#[map]
pub static SOCKETS: LruHashMap<u64, SocketOwner> = LruHashMap::with_max_entries(MAX_SOCKETS, 0);

/// tgid of a watched run's process → the traffic of the sockets it owned, until its record is
/// made (`process::on_switch_away`) or it leaves its run.
#[map]
pub static PROCESS_NET: HashMap<u32, ProcessNet> =
    HashMap::with_max_entries(MAX_PROCESS_NET, BPF_F_NO_PREALLOC);

/// `sock_send_length(struct sock *sk, int ret, int flags)` (6.4 on): after every send,
/// `write` or `sendfile` on a socket, in the sending process.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> u32 {
    claim(ctx.arg(0));
    0
}

/// `sock_recv_length(struct sock *sk, int ret, int flags)` (6.4 on): after every receive or
/// `read` on a socket, in the receiving process.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> u32 {
    claim(ctx.arg(0));
    0
}

/// A TCP socket changed state, in process context for these (`connect`, `listen`, `close`,
/// `shutdown`): the current process uses it.
#[inline(always)]
pub fn on_tcp_state(sk: *const u8, old: i32, new: i32) {
    match new {
        TCP_SYN_SENT | TCP_LISTEN | TCP_LAST_ACK => claim(sk),
        TCP_FIN_WAIT1 if old == TCP_ESTABLISHED || old == TCP_SYN_RECV => claim(sk),
        // A connection a listener accepted, made in softirq: no owner until one uses it (its
        // memory may be an old socket's). A closed socket's entry goes too. Only a watched
        // run's socket is looked for: its packets are the only ones counted to an owner, and
        // its cgroup is three loads where the lookup is a hash. Looked up before it is removed:
        // a removal takes the bucket's lock.
        TCP_SYN_RECV | TCP_CLOSE => {
            let key = sk as u64;
            if socket_run(sk).is_some() && SOCKETS.get_ptr(&key).is_some() {
                let _ = SOCKETS.remove(&key);
            }
        }
        _ => {}
    }
}

/// The current process uses socket `sk`: if both belong to a watched run, the socket is the
/// process's from now on, with the traffic that waited for an owner. The socket's run is asked
/// first: only a watched run's socket has its packets counted to an owner, and its cgroup is
/// three loads from a line the caller has just used, where the current task's is four loads
/// from the task. Measured during iperf3 on loopback, this hook's work went from ≈ 35 to
/// ≈ 15 ns a send (see BENCHMARKS.md).
#[inline(always)]
fn claim(sk: *const u8) {
    if sk.is_null() || socket_run(sk).is_none() || watched_run(current_cgroup_id()).is_none() {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(entry) = socket_of(sk as u64) else {
        return;
    };
    // SAFETY: a live map element; `tgid` is a plain store, the pending counters only change by
    // atomic adds.
    let entry = unsafe { &mut *entry };
    if entry.tgid == tgid {
        return;
    }
    // New packets go to the new owner from here on.
    entry.tgid = tgid;
    let Some(process) = ensure_process(tgid) else {
        return;
    };
    let pending = entry.pending;
    if pending.tx_packets | pending.rx_packets == 0 {
        return;
    }
    add(process, &pending);
    // Subtracted rather than zeroed: a packet counted meanwhile on another CPU stays.
    let p = &mut entry.pending;
    atomic_add(&mut p.tx_bytes, pending.tx_bytes.wrapping_neg());
    atomic_add(&mut p.tx_packets, pending.tx_packets.wrapping_neg());
    atomic_add(&mut p.rx_bytes, pending.rx_bytes.wrapping_neg());
    atomic_add(&mut p.rx_packets, pending.rx_packets.wrapping_neg());
}

/// The entry of socket `sk`, made without an owner if it has none yet.
#[inline(always)]
fn socket_of(sk: u64) -> Option<*mut SocketOwner> {
    if let Some(entry) = SOCKETS.get_ptr_mut(&sk) {
        return Some(entry);
    }
    // Another CPU may make it meanwhile (EEXIST); either way look it up again.
    let _ = SOCKETS.insert(&sk, &SocketOwner::default(), u64::from(BPF_NOEXIST));
    let entry = SOCKETS.get_ptr_mut(&sk);
    if entry.is_none() {
        count_drop(drop_reason::SOCKETS_MAP_FULL);
    }
    entry
}

/// The counters of process `tgid`, made at zero if it has none yet.
#[inline(always)]
fn ensure_process(tgid: u32) -> Option<&'static mut ProcessNet> {
    if let Some(p) = PROCESS_NET.get_ptr_mut(&tgid) {
        // SAFETY: a live map element, only updated with atomic adds.
        return Some(unsafe { &mut *p });
    }
    if PROCESS_NET
        .insert(&tgid, &ProcessNet::default(), u64::from(BPF_NOEXIST))
        .is_ok()
    {
        entry_made();
    }
    match PROCESS_NET.get_ptr_mut(&tgid) {
        // SAFETY: as above.
        Some(p) => Some(unsafe { &mut *p }),
        None => {
            count_drop(drop_reason::SOCKETS_MAP_FULL);
            None
        }
    }
}

/// Adds `from` to `to` atomically.
#[inline(always)]
fn add(to: &mut ProcessNet, from: &ProcessNet) {
    atomic_add(&mut to.tx_bytes, from.tx_bytes);
    atomic_add(&mut to.tx_packets, from.tx_packets);
    atomic_add(&mut to.rx_bytes, from.rx_bytes);
    atomic_add(&mut to.rx_packets, from.rx_packets);
}

/// A packet of `len` bytes of a watched run's socket `sk` (the address `cgroup_skb` reads from
/// `__sk_buff.sk`; 0 for none): counted to the socket's owner, or kept until it has one.
#[inline(always)]
pub fn count_to_process(sk: u64, len: u64, egress: bool) {
    if sk == 0 {
        return;
    }
    let Some(entry) = socket_of(sk) else {
        return;
    };
    // SAFETY: a live map element, its counters only updated with atomic adds.
    let entry = unsafe { &mut *entry };
    let tgid = entry.tgid;
    if tgid == 0 {
        count_packet(&mut entry.pending, len, egress);
    } else if let Some(process) = PROCESS_NET.get_ptr_mut(&tgid) {
        // SAFETY: a live map element, only updated with atomic adds.
        count_packet(unsafe { &mut *process }, len, egress);
    }
    // Else its owner has ended: the packet is in the run's totals only.
}

/// Counts one packet of `len` bytes into `to`. Only the two counters it changes: an atomic add
/// of a constant 0 may be compiled to an atomic `or`, which kernels before 5.12 refuse.
#[inline(always)]
fn count_packet(to: &mut ProcessNet, len: u64, egress: bool) {
    let (bytes, packets) = if egress {
        (&mut to.tx_bytes, &mut to.tx_packets)
    } else {
        (&mut to.rx_bytes, &mut to.rx_packets)
    };
    atomic_add(bytes, len);
    atomic_add(packets, 1);
}

/// Process `tgid` ended or left its run: its counters, taken out.
#[inline(always)]
pub fn take_process(tgid: u32) -> ProcessNet {
    // A pointer, not an `Option` of the value (see `process::on_switch_away`).
    let net = match PROCESS_NET.get_ptr(&tgid) {
        // SAFETY: a map value, copied out before its entry is removed.
        Some(p) => unsafe { *p },
        None => return ProcessNet::default(),
    };
    if PROCESS_NET.remove(&tgid).is_ok() {
        entry_gone();
    }
    net
}
