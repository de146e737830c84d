//! Every map of the object, with its capacity, and the helpers that update them.
//!
//! Counters are per-CPU (no atomics on the hottest paths), and the hottest hooks (CPU time,
//! switches, page faults) count into per-CPU pending copies for the two cgroups the CPU counted
//! last ([`current_stats`]), a plain array element, instead of looking the cgroup up in a hash
//! each time; forks and exits count into a copy of their own for the cgroup each CPU counted
//! last ([`pending_copy`]). Histograms are shared and updated with atomic adds, since a per-CPU
//! copy of a 2.7 KiB histogram per cgroup would not scale with CPUs. In-flight starts (bio
//! owners, request issue times, run-queue waits) live in arrays of slots, connects in an LRU
//! map, so a start whose end is never seen cannot leak.

use core::sync::atomic::{Ordering, compiler_fence};

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use cleanroom_common::{
    BlockKey, BlockPending, BlockStats, CgroupNode, CgroupPending, CgroupStats, ConnKey, ConnStats,
    Escape, ExitPending, ForkPending, HistKey, Histogram, LATENCY_WAYS, LatencySet, MAX_BLOCK_KEYS,
    MAX_CGROUP_TREE, MAX_CGROUPS, MAX_CONNECTIONS, MAX_ESCAPES, MAX_HISTOGRAMS, MAX_IN_FLIGHT,
    MAX_PROFILED, MAX_RUN_PROCS, MAX_WATCHED, NetPending, PENDING_FULL_COUNT, PENDING_ONE,
    PendingCounters, PendingLatencies, PendingSet, PendingStats, RunProc, drop_reason, hist_bucket,
    hist_kind, pending_bucket, pending_count,
};

/// cgroup v2 id → counters, one copy per CPU.
#[map]
pub static CGROUP_STATS: PerCpuHashMap<u64, CgroupStats> =
    PerCpuHashMap::with_max_entries(MAX_CGROUPS, 0);

/// The counters of the two cgroups each CPU counted last, not yet in [`CGROUP_STATS`] (see
/// [`cleanroom_common::PendingSet`] and [`current_stats`]).
#[map]
pub static PENDING_STATS: PerCpuArray<PendingSet> = PerCpuArray::with_max_entries(1, 0);

/// The packet counters of the socket cgroup each CPU's `cgroup_skb` programs counted last, not
/// yet in [`CGROUP_STATS`] (see [`cleanroom_common::NetPending`] and `net::count_packet`).
#[map]
pub static NET_PENDING: PerCpuArray<NetPending> = PerCpuArray::with_max_entries(1, 0);

/// The fork counter of the cgroup whose processes' forks each CPU counted last, not yet in
/// [`CGROUP_STATS`] (see [`cleanroom_common::CgroupPending`] and [`pending_copy`]).
#[map]
pub static FORK_PENDING: PerCpuArray<ForkPending> = PerCpuArray::with_max_entries(1, 0);

/// The exit counters of the cgroup whose thread exits each CPU counted last, not yet in
/// [`CGROUP_STATS`] (as [`FORK_PENDING`]).
#[map]
pub static EXIT_PENDING: PerCpuArray<ExitPending> = PerCpuArray::with_max_entries(1, 0);

/// Block and TCP connect latencies each CPU has not added to their histograms yet (see
/// [`cleanroom_common::LatencySet`] and [`record_latency_batched`]).
#[map]
pub static LATENCY_PENDING: PerCpuArray<LatencySet> = PerCpuArray::with_max_entries(1, 0);

/// Block counters each CPU has not added to [`BLOCK_STATS`] yet (see
/// [`cleanroom_common::BlockPending`] and `block::count_bio`).
#[map]
pub static BLOCK_PENDING: PerCpuArray<BlockPending> = PerCpuArray::with_max_entries(1, 0);

/// How often [`WATCHED`] changed: element 0 counts the agent's changes, element 1 the
/// programs' ([`bump_watch_generation`]). A copy of a lookup in [`WATCHED`] made at another sum
/// is stale.
#[map]
pub static WATCH_GENERATION: Array<u64> = Array::with_max_entries(2, 0);

/// The sum of [`WATCH_GENERATION`].
#[inline(always)]
pub fn watch_generation() -> u64 {
    let mut sum = 0u64;
    for i in 0..2 {
        if let Some(g) = WATCH_GENERATION.get_ptr(i) {
            // SAFETY: an element of an array map; a torn read is impossible for an aligned u64.
            sum = sum.wrapping_add(unsafe { core::ptr::read_volatile(g) });
        }
    }
    sum
}

/// Tells the copies of [`WATCHED`] lookups that a program changed it.
#[inline(always)]
pub fn bump_watch_generation() {
    if let Some(g) = WATCH_GENERATION.get_ptr_mut(1) {
        // SAFETY: an element of an array map, only ever updated with atomic adds here.
        atomic_add(unsafe { &mut *g }, 1);
    }
}

/// (cgroup, device) → block I/O counters, one copy per CPU.
#[map]
pub static BLOCK_STATS: PerCpuHashMap<BlockKey, BlockStats> =
    PerCpuHashMap::with_max_entries(MAX_BLOCK_KEYS, 0);

/// (cgroup, kind) → latency histogram. Allocated on first use.
#[map]
pub static HISTOGRAMS: HashMap<HistKey, Histogram> =
    HashMap::with_max_entries(MAX_HISTOGRAMS, BPF_F_NO_PREALLOC);

/// One all-zero histogram to insert from (too big for the 512-byte BPF stack).
#[map]
static ZERO_HISTOGRAM: Array<Histogram> = Array::with_max_entries(1, 0);

/// cgroup v2 id → parent id (and whether removed), for cgroups made or removed while loaded.
#[map]
pub static CGROUP_TREE: HashMap<u64, CgroupNode> = HashMap::with_max_entries(MAX_CGROUP_TREE, 0);

/// cgroup v2 id → run id, for the cgroups of watched runs: the agent inserts a run's own
/// cgroup (its id is the run id) before the command starts; `cgroup_mkdir` adds the sub-cgroups
/// made in it, `cgroup_rmdir` takes them out.
#[map]
pub static WATCHED: HashMap<u64, u64> = HashMap::with_max_entries(MAX_WATCHED, 0);

/// cgroup v2 id → profile (run) id, for the cgroups whose tasks the profiling programs sample:
/// user space inserts a run's cgroups (as in [`WATCHED`]) or a cgroup the agent watches and
/// its sub-cgroups; `cgroup_mkdir` adds sub-cgroups made in one, `cgroup_rmdir` takes them out.
/// Apart from [`WATCHED`] so that profiling a cgroup does not also track its processes.
#[map]
pub static PROFILED: HashMap<u64, u64> = HashMap::with_max_entries(MAX_PROFILED, 0);

/// tgid → the run it belongs to. A hash, not an LRU: an entry evicted silently would let its
/// process leave unseen; a full map is counted instead. Entries go at process exit, and when the
/// agent stops watching the run.
#[map]
pub static RUN_PROCS: HashMap<u32, RunProc> = HashMap::with_max_entries(MAX_RUN_PROCS, 0);

/// tgid → how it left its run's cgroups, until the agent reads it.
#[map]
pub static ESCAPES: HashMap<u32, Escape> = HashMap::with_max_entries(MAX_ESCAPES, 0);

/// Events that could not be counted, by [`drop_reason`].
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_reason::COUNT, 0);

/// Slots of [`BIO_OWNER`] and [`RQ_START`]; a power of two.
pub const IN_FLIGHT_SLOTS: u32 = 1 << 15;

/// One word per CPU through which a pointer becomes a plain number ([`address`]).
#[map]
static ADDRESS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The address of the kernel object at `ptr`, as a number the program may compute with. The
/// verifier allows no arithmetic but adding to a BTF pointer, and a tracepoint's arguments are
/// BTF pointers; a pointer stored to map memory (which a program loaded with CAP_PERFMON may
/// do) reads back as a number. 0 when the word cannot be had.
#[inline(always)]
pub fn address(ptr: *const u8) -> u64 {
    let Some(word) = ADDRESS.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's element of a per-CPU array; programs on one CPU do not nest, and the
    // volatile pair keeps the compiler from folding the round trip away.
    unsafe {
        core::ptr::write_volatile(word, ptr as u64);
        core::ptr::read_volatile(word)
    }
}

/// The slot of the kernel object at `address` in an array of [`IN_FLIGHT_SLOTS`]: a
/// multiplicative hash of its address (the low bits of a slab address are alike; the high bits
/// of the product mix them all).
#[inline(always)]
pub fn in_flight_slot(address: u64) -> u32 {
    (address.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - IN_FLIGHT_SLOTS.trailing_zeros())) as u32
}

/// Who owns a bio, from its submission until its request is issued.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BioSlot {
    /// The bio; 0 once taken.
    pub bio: u64,
    /// The cgroup that owns it.
    pub owner: u64,
    /// `bio ^ owner`: a slot two CPUs wrote at once holds one's bio and the other's owner,
    /// which this tells.
    pub check: u64,
}

/// bio → the cgroup that owns it, indexed by [`in_flight_slot`] of the bio. An array, not a
/// hash: the block hooks run for every I/O, and an LRU hash takes locks on each insert and
/// delete. Two bios in flight at once whose slots collide share one; the later overwrites the
/// earlier, whose request then goes unmeasured (`LATENCY_UNMATCHED`). Its bytes are counted at
/// submission either way.
#[map]
pub static BIO_OWNER: Array<BioSlot> = Array::with_max_entries(IN_FLIGHT_SLOTS, 0);

/// A process for good: its tgid and its leader's start time.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcessKey {
    /// Its tgid.
    pub tgid: u32,
    /// Zero.
    pub _pad: u32,
    /// `start_time` of its leader.
    pub start_ns: u64,
}

/// Processes whose exit was counted, on kernels whose `sched_process_exit` does not say which
/// thread is the last (see `sched::sched_process_exit_v1`). LRU: an entry is needed only while
/// the process's threads are exiting.
#[map]
pub static PROCESS_EXITS: LruHashMap<ProcessKey, u8> =
    LruHashMap::with_max_entries(MAX_IN_FLIGHT, 0);

/// A block request in flight.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RqStart {
    /// The request; 0 once completed.
    pub rq: u64,
    /// When it was issued to the device.
    pub issued_ns: u64,
    /// The owning cgroup.
    pub owner: u64,
    /// `hist_kind::BLOCK_READ` or `BLOCK_WRITE`.
    pub kind: u32,
    /// The device.
    pub dev: u32,
    /// `rq ^ issued_ns ^ owner`: tells a slot two CPUs wrote at once.
    pub check: u64,
}

/// request → issue time and owner, indexed by [`in_flight_slot`] of the request; as
/// [`BIO_OWNER`], an array whose colliding requests lose their latency.
#[map]
pub static RQ_START: Array<RqStart> = Array::with_max_entries(IN_FLIGHT_SLOTS, 0);

/// A task's run-queue state, one of two kinds (see `sched::RUNQ_FROM_SCHED_INFO`): when it
/// became runnable (woken, or preempted while runnable), or what the kernel's `sched_info` of
/// it said at its last switch away.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RunqSlot {
    /// The task; a slot holds the last task whose pid maps to it.
    pub pid: u32,
    /// Zero.
    pub _pad: u32,
    /// When it became runnable (0 once consumed); or its `sched_info.run_delay`.
    pub ns: u64,
    /// Its `sched_info.pcount` (arrivals on a CPU); unused when timed from wakeups.
    pub pcount: u64,
    /// `pid ^ ns ^ pcount`: tells a slot two CPUs wrote at once (two tasks sharing it).
    pub check: u64,
}

/// Slots of [`RUNQ_START`]; a power of two.
pub const RUNQ_SLOTS: u32 = 1 << 16;

/// Run-queue wait starts, indexed by `pid % RUNQ_SLOTS`. An array, not a hash: the scheduler
/// hooks are the hottest of all, and an array element is a plain load for the verifier. Two
/// runnable tasks whose pids collide (same pid modulo 65 536) share a slot; the later overwrites
/// the earlier, whose wait then goes unmeasured.
#[map]
pub static RUNQ_START: Array<RunqSlot> = Array::with_max_entries(RUNQ_SLOTS, 0);

/// A watched run's traffic by remote endpoint. Shared (updated with atomic adds) and allocated
/// on first use: only runs' sockets have entries.
#[map]
pub static CONNECTIONS: HashMap<ConnKey, ConnStats> =
    HashMap::with_max_entries(MAX_CONNECTIONS, BPF_F_NO_PREALLOC);

/// The counters of `key`, creating them at zero on first use.
#[inline(always)]
pub fn connection_of(key: &ConnKey) -> Option<&'static mut ConnStats> {
    if let Some(v) = CONNECTIONS.get_ptr_mut(key) {
        // SAFETY: a live map element, only updated with atomic adds.
        return Some(unsafe { &mut *v });
    }
    let _ = CONNECTIONS.insert(key, &ConnStats::default(), u64::from(BPF_NOEXIST));
    match CONNECTIONS.get_ptr_mut(key) {
        // SAFETY: as above.
        Some(v) => Some(unsafe { &mut *v }),
        None => {
            count_drop(drop_reason::CONNECTIONS_MAP_FULL);
            None
        }
    }
}

/// cgroup → when a TCP socket of it first listened. Every cgroup's, not only watched runs': a
/// container may listen before the run has found its cgroup. LRU: listens are rare, and the
/// ones a run asks for are recent.
#[map]
pub static FIRST_LISTEN: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4_096, 0);

/// A TCP connect in flight.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnectSlot {
    /// The socket's address; 0 once taken.
    pub sk: u64,
    /// When it entered `SYN_SENT`.
    pub start_ns: u64,
    /// `sk ^ start_ns`: tells a slot two CPUs wrote at once.
    pub check: u64,
}

/// sock → when it entered `SYN_SENT`, indexed by [`in_flight_slot`] of the socket; as
/// [`BIO_OWNER`], an array (no lock, no helper call) whose colliding connects lose their
/// latency.
#[map]
pub static CONNECT_START: Array<ConnectSlot> = Array::with_max_entries(IN_FLIGHT_SLOTS, 0);

/// Counts one lost event under `reason`.
#[inline(always)]
pub fn count_drop(reason: u32) {
    if let Some(slot) = DROPS.get_ptr_mut(reason) {
        // SAFETY: a per-CPU slot, and programs do not nest on one CPU, so nothing else writes it
        // while this program runs.
        unsafe { *slot += 1 };
    }
}

/// Keeps `owner` as the owner of `bio` until its request is issued ([`BIO_OWNER`]).
#[inline(always)]
pub fn keep_owner(bio: u64, owner: u64) {
    if bio == 0 {
        return;
    }
    if let Some(slot) = BIO_OWNER.get_ptr_mut(in_flight_slot(bio)) {
        // SAFETY: an element of an array map; a racing writer is told by the check.
        unsafe {
            (*slot).bio = bio;
            (*slot).owner = owner;
            (*slot).check = bio ^ owner;
        }
    }
}

/// This CPU's counters for cgroup `cgroup_id`, creating them at zero on first use.
#[inline(always)]
pub fn stats_of(cgroup_id: u64) -> Option<&'static mut CgroupStats> {
    per_cpu_entry(&CGROUP_STATS, cgroup_id, drop_reason::STATS_MAP_FULL)
}

/// This CPU's pending counters in `map` (a one-element per-CPU array of one program, see
/// [`CgroupPending`]) for cgroup `cgroup_id`: those of the copy when it is this cgroup's; else
/// the copy is first added to its cgroup's entry and made this cgroup's, empty.
#[inline(always)]
pub fn pending_copy<C: PendingCounters>(
    map: &'static PerCpuArray<CgroupPending<C>>,
    cgroup_id: u64,
) -> Option<&'static mut C> {
    let copy = map.get_ptr_mut(0)?;
    // SAFETY: this CPU's element of a per-CPU array, updated by one program only, which never
    // runs inside itself on one CPU; the element lives as long as the map.
    let copy = unsafe { &mut *copy };
    if copy.cgroup_id != cgroup_id {
        if copy.cgroup_id != 0
            && let Some(entry) = existing_stats(copy.cgroup_id)
        {
            copy.add_to(entry);
        }
        // The entry is made now, so that the copy finds it when it is added (see
        // [`existing_stats`]).
        let _ = stats_of(cgroup_id);
        *copy = CgroupPending {
            cgroup_id,
            counters: C::default(),
        };
    }
    Some(&mut copy.counters)
}

/// This CPU's pending counters for cgroup `cgroup_id`, for the hottest hooks: one of the two
/// pending copies ([`PENDING_STATS`]) when it is this cgroup's, a plain array element; else the
/// copy used least recently is first added to its cgroup's entry and made this cgroup's. Only
/// for hooks that run with interrupts off in the task whose cgroup they count or the scheduler
/// (CPU time, switches, page faults): two of them never run on one CPU at once.
#[inline(always)]
pub fn current_stats(cgroup_id: u64) -> Option<&'static mut PendingStats> {
    let set = PENDING_STATS.get_ptr_mut(0)?;
    // SAFETY: this CPU's element of a per-CPU array; the hooks that use it do not nest (see
    // above), and the element lives as long as the map.
    let set = unsafe { &mut *set };
    let [first, second] = &mut set.ways;
    if first.cgroup_id == cgroup_id {
        set.last_used = 0;
        return Some(first);
    }
    if second.cgroup_id == cgroup_id {
        set.last_used = 1;
        return Some(second);
    }
    let (way, index) = if set.last_used == 0 {
        (second, 1)
    } else {
        (first, 0)
    };
    set.last_used = index;
    if way.cgroup_id != 0
        && let Some(entry) = existing_stats(way.cgroup_id)
    {
        flush_waits(way);
        way.add_to(entry);
    }
    // The entry is made now, so that the copy finds it when it is added (see
    // [`existing_stats`]).
    let _ = stats_of(cgroup_id);
    *way = PendingStats {
        cgroup_id,
        ..PendingStats::default()
    };
    Some(way)
}

/// This CPU's counters for cgroup `cgroup_id` if it has an entry, for adding a pending copy to
/// it. A copy's entry is made when the copy is taken for its cgroup; one gone since is the
/// agent's doing — it forgets the cgroups it saw removed — and the copy, of a cgroup that is no
/// more, is dropped rather than made into an entry nobody would remove.
#[inline(always)]
pub fn existing_stats(cgroup_id: u64) -> Option<&'static mut CgroupStats> {
    // SAFETY: as in `per_cpu_entry`.
    CGROUP_STATS
        .get_ptr_mut(&cgroup_id)
        .map(|v| unsafe { &mut *v })
}

/// This CPU's block counters for `key` if it has an entry (see [`existing_stats`]).
#[inline(always)]
pub fn existing_block_stats(key: &BlockKey) -> Option<&'static mut BlockStats> {
    // SAFETY: as in `per_cpu_entry`.
    BLOCK_STATS.get_ptr_mut(key).map(|v| unsafe { &mut *v })
}

/// This CPU's block counters for `key`, creating them at zero on first use.
#[inline(always)]
pub fn block_stats_of(key: BlockKey) -> Option<&'static mut BlockStats> {
    per_cpu_entry(&BLOCK_STATS, key, drop_reason::BLOCK_MAP_FULL)
}

#[inline(always)]
fn per_cpu_entry<K, V: Default>(
    map: &'static PerCpuHashMap<K, V>,
    key: K,
    full: u32,
) -> Option<&'static mut V> {
    if let Some(v) = map.get_ptr_mut(&key) {
        // SAFETY: a per-CPU value, written only by programs running on this CPU, which do not
        // nest; the element lives as long as the map.
        return Some(unsafe { &mut *v });
    }
    // Another CPU may insert the same key meanwhile (EEXIST); either way look it up again.
    let _ = map.insert(&key, V::default(), u64::from(BPF_NOEXIST));
    match map.get_ptr_mut(&key) {
        // SAFETY: as above.
        Some(v) => Some(unsafe { &mut *v }),
        None => {
            count_drop(full);
            None
        }
    }
}

/// Takes a per-CPU pending copy for one update by its `busy` word: `false` when a program
/// this one interrupted on this CPU is updating it (count straight into the entry then). The
/// copies of hooks that can interrupt one another (packets, bios, block completions) use it;
/// [`release`] gives the copy back.
#[inline(always)]
pub fn claim(busy: &mut u64) -> bool {
    // SAFETY: a word of this CPU's element of a per-CPU array, read and written whole.
    if unsafe { core::ptr::read_volatile(busy) } != 0 {
        return false;
    }
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(busy, 1) };
    compiler_fence(Ordering::SeqCst);
    true
}

/// Gives back a copy taken with [`claim`], after its update.
#[inline(always)]
pub fn release(busy: &mut u64) {
    compiler_fence(Ordering::SeqCst);
    // SAFETY: as in `claim`.
    unsafe { core::ptr::write_volatile(busy, 0) };
}

/// Adds `value` to `target` atomically.
#[inline(always)]
pub fn atomic_add(target: &mut u64, value: u64) {
    // SAFETY: `target` is a valid, aligned u64 in a map value shared between CPUs. The BPF
    // target offers no `AtomicU64::fetch_add`; the intrinsic compiles to BPF's atomic add.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            target, value,
        )
    };
}

/// The shared histogram of `key`, created empty on first use.
#[inline(always)]
fn histogram_of(key: &HistKey) -> Option<&'static mut Histogram> {
    let hist = match HISTOGRAMS.get_ptr_mut(key) {
        Some(h) => h,
        None => {
            let zero = ZERO_HISTOGRAM.get_ptr(0)?;
            // SAFETY: a map value of the right type, only read by the helper.
            let _ = HISTOGRAMS.insert(key, unsafe { &*zero }, u64::from(BPF_NOEXIST));
            match HISTOGRAMS.get_ptr_mut(key) {
                Some(h) => h,
                None => {
                    count_drop(drop_reason::HIST_MAP_FULL);
                    return None;
                }
            }
        }
    };
    // SAFETY: a live map element; every field is only updated with atomic adds (or, for `max`,
    // a plain store that can at worst lose a concurrent maximum).
    Some(unsafe { &mut *hist })
}

/// Records one latency of `kind` for `cgroup_id` (on block device `dev`, or 0).
#[inline(always)]
pub fn record_latency(cgroup_id: u64, kind: u32, dev: u32, value_ns: u64) {
    let key = HistKey {
        cgroup_id,
        kind,
        dev,
    };
    let Some(hist) = histogram_of(&key) else {
        return;
    };
    if let Some(bucket) = hist.buckets.get_mut(hist_bucket(value_ns)) {
        atomic_add(bucket, 1);
    }
    atomic_add(&mut hist.count, 1);
    atomic_add(&mut hist.sum, value_ns);
    if value_ns > hist.max {
        hist.max = value_ns;
    }
}

/// Keeps a run-queue wait of the pending copy's cgroup in the copy, adding the ones it holds
/// to the histogram first when it has no room for the wait's bucket ([`PendingStats::waits`]).
#[inline(always)]
pub fn push_wait(way: &mut PendingStats, wait_ns: u64) {
    let bucket = hist_bucket(wait_ns) as u64;
    if !push_latency(&mut way.waits, bucket, wait_ns) {
        flush_waits(way);
        restart_latencies(&mut way.waits, bucket, wait_ns);
    }
}

/// Adds the run-queue waits a pending copy holds to its cgroup's histogram.
#[inline(always)]
fn flush_waits(way: &mut PendingStats) {
    let key = HistKey {
        cgroup_id: way.cgroup_id,
        kind: hist_kind::RUNQUEUE,
        dev: 0,
    };
    // Only for a cgroup with an entry (see `current_stats`): the histogram may be made.
    add_latencies(&key, &mut way.waits, true);
}

/// Counts `value_ns`, of `bucket`, in `pending` (in its bucket's entry, its sum and its
/// maximum). False, and `pending` unchanged, when it has no room: no entry of this bucket and
/// none free, or that entry's count is full ([`PENDING_FULL_COUNT`]).
#[inline(always)]
fn push_latency(pending: &mut PendingLatencies, bucket: u64, value_ns: u64) -> bool {
    let used = pending.count;
    let mut counted = false;
    for (i, entry) in pending.buckets.iter_mut().enumerate() {
        if i as u64 >= used {
            *entry = PENDING_ONE | bucket;
            pending.count = used + 1;
            counted = true;
            break;
        }
        if pending_bucket(*entry) == bucket {
            if pending_count(*entry) >= PENDING_FULL_COUNT {
                return false;
            }
            *entry += PENDING_ONE;
            counted = true;
            break;
        }
    }
    if counted {
        pending.sum = pending.sum.wrapping_add(value_ns);
        if value_ns > pending.max {
            pending.max = value_ns;
        }
    }
    counted
}

/// Makes `value_ns`, of `bucket`, the only latency in `pending`, just emptied by
/// [`add_latencies`].
#[inline(always)]
fn restart_latencies(pending: &mut PendingLatencies, bucket: u64, value_ns: u64) {
    pending.buckets[0] = PENDING_ONE | bucket;
    pending.count = 1;
    pending.sum = value_ns;
    pending.max = value_ns;
}

/// Adds the latencies `pending` holds to the histogram of `key` and empties it: one lookup, one
/// add per distinct bucket, and one count and sum for all of them. The histogram is made if it
/// has none and `make`; else they are dropped (see [`record_latency_batched`]).
#[inline(always)]
fn add_latencies(key: &HistKey, pending: &mut PendingLatencies, make: bool) {
    let n = pending.count;
    pending.count = 0;
    if n == 0 {
        return;
    }
    let (sum, max) = (pending.sum, pending.max);
    pending.sum = 0;
    pending.max = 0;
    let hist = if make {
        histogram_of(key)
    } else {
        // SAFETY: as in `histogram_of`.
        HISTOGRAMS.get_ptr_mut(key).map(|h| unsafe { &mut *h })
    };
    let Some(hist) = hist else {
        return;
    };
    let mut count = 0u64;
    for (i, &entry) in pending.buckets.iter().enumerate() {
        if i as u64 >= n {
            break;
        }
        let in_bucket = pending_count(entry);
        if let Some(b) = hist.buckets.get_mut(pending_bucket(entry) as usize) {
            atomic_add(b, in_bucket);
        }
        count += in_bucket;
    }
    atomic_add(&mut hist.count, count);
    atomic_add(&mut hist.sum, sum);
    if max > hist.max {
        hist.max = max;
    }
}

/// Records a latency of histogram `key` (a block I/O's, a TCP connect's): kept in one of this
/// CPU's [`LATENCY_PENDING`] copies, which is added to its histogram when full or when taken for
/// another histogram. A program that interrupted another's update of the set (a block
/// completion in a hard interrupt, a connect completing in a soft one) records straight into
/// the histogram.
#[inline(always)]
pub fn record_latency_batched(key: HistKey, value_ns: u64) {
    let Some(set) = LATENCY_PENDING.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's element of a per-CPU array; a program interrupting this one on this
    // CPU sees `busy` and leaves the set alone.
    let set = unsafe { &mut *set };
    if !claim(&mut set.busy) {
        record_latency(key.cgroup_id, key.kind, key.dev, value_ns);
        return;
    }
    let mut found = LATENCY_WAYS;
    for (i, way) in set.ways.iter().enumerate() {
        if way.key.cgroup_id == key.cgroup_id && way.key.kind == key.kind && way.key.dev == key.dev
        {
            found = i;
            break;
        }
    }
    if found == LATENCY_WAYS {
        found = (set.next_victim as usize) % LATENCY_WAYS;
        set.next_victim = ((found + 1) % LATENCY_WAYS) as u64;
        if let Some(way) = set.ways.get_mut(found) {
            add_latencies(&way.key, &mut way.latencies, false);
            way.key = key;
        }
        // The histogram is made now; a copy whose histogram is gone when it is added (the
        // agent forgot its cgroup, removed) is dropped instead of making it again.
        let _ = histogram_of(&key);
    }
    if let Some(way) = set.ways.get_mut(found) {
        let bucket = hist_bucket(value_ns) as u64;
        if !push_latency(&mut way.latencies, bucket, value_ns) {
            add_latencies(&way.key, &mut way.latencies, false);
            restart_latencies(&mut way.latencies, bucket, value_ns);
        }
    }
    release(&mut set.busy);
}
