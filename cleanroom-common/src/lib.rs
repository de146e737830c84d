//! Wire types shared by the kernel programs (`cleanroom-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]`, fixed-width and free of `bool`, `Option` and enums, so the
//! kernel and user side read the same bytes the same way. Map and program names live here as
//! constants so that no name is spelled twice across crates.
#![no_std]

/// Names of the maps of the BPF object.
pub mod maps {
    /// Per-CPU hash: cgroup v2 id (`u64`) → [`crate::CgroupStats`].
    pub const CGROUP_STATS: &str = "CGROUP_STATS";
    /// Per-CPU array of one [`crate::PendingSet`]: counters of the two cgroups a CPU counted
    /// last, not yet added to [`CGROUP_STATS`]; a reader adds them to the cgroups they name.
    pub const PENDING_STATS: &str = "PENDING_STATS";
    /// Per-CPU array of one [`crate::NetPending`]: the packet counters of the socket cgroup a
    /// CPU's `cgroup_skb` programs counted last; a reader adds them to the cgroup they name.
    pub const NET_PENDING: &str = "NET_PENDING";
    /// Per-CPU array of one [`crate::ForkPending`] ([`crate::CgroupPending`]): the fork
    /// counter of the cgroup whose processes' forks a CPU counted last; a reader adds it to the
    /// cgroup it names.
    pub const FORK_PENDING: &str = "FORK_PENDING";
    /// Per-CPU array of one [`crate::ExitPending`]: the exit counters of the cgroup whose
    /// thread exits a CPU counted last; a reader adds them to the cgroup they name.
    pub const EXIT_PENDING: &str = "EXIT_PENDING";
    /// Per-CPU array of one [`crate::LatencySet`]: block and TCP connect latencies a CPU measured
    /// and has not added to their histograms yet; a reader adds them.
    pub const LATENCY_PENDING: &str = "LATENCY_PENDING";
    /// Per-CPU array of one [`crate::BlockPending`]: block counters a CPU counted and has not
    /// added to [`BLOCK_STATS`] yet; a reader adds them.
    pub const BLOCK_PENDING: &str = "BLOCK_PENDING";
    /// Array of two `u64`: how often [`WATCHED`] changed — element 0 by the agent, element 1
    /// by the programs — so that a copy of a lookup in it ([`crate::NetPending::run_id`]) can
    /// tell it is stale.
    pub const WATCH_GENERATION: &str = "WATCH_GENERATION";
    /// Per-CPU hash: [`crate::BlockKey`] → [`crate::BlockStats`].
    pub const BLOCK_STATS: &str = "BLOCK_STATS";
    /// Hash: [`crate::HistKey`] → [`crate::Histogram`], updated with atomic adds.
    pub const HISTOGRAMS: &str = "HISTOGRAMS";
    /// Hash: cgroup v2 id → [`crate::CgroupNode`] for cgroups made while loaded.
    pub const CGROUP_TREE: &str = "CGROUP_TREE";
    /// Per-CPU array of `u64` drop counters, indexed by [`crate::drop_reason`] values.
    pub const DROPS: &str = "DROPS";
    /// Hash: cgroup v2 id → run id (`u64`): the cgroups of each watched run (its own cgroup,
    /// whose id is the run id, and the sub-cgroups made in it).
    pub const WATCHED: &str = "WATCHED";
    /// Hash: cgroup v2 id → run id (`u64`): the cgroups whose tasks are profiled, for each
    /// profile (a run's cgroups, as in [`WATCHED`]; a cgroup the agent watches and its
    /// sub-cgroups).
    pub const PROFILED: &str = "PROFILED";
    /// Hash: tgid (`u32`) → [`crate::RunProc`]: the processes of watched runs.
    pub const RUN_PROCS: &str = "RUN_PROCS";
    /// Hash: tgid (`u32`) → [`crate::Escape`]: processes that left their run's cgroups.
    pub const ESCAPES: &str = "ESCAPES";
    /// Hash: pid (`u32`) of a watched run's process's last thread, between its
    /// `sched_process_exit` and its last switch → [`crate::Exiting`].
    pub const EXITING: &str = "EXITING";
    /// Ring buffer of [`crate::ProcessExit`] records, one per process of a watched run, sent
    /// at its last thread's last context switch (when its CPU time is final).
    pub const PROCESS_RECORDS: &str = "PROCESS_RECORDS";
    /// Hash: tgid (`u32`) of a watched run's process → [`crate::CommandLine`], taken at its
    /// `exec` (or inherited at its fork) and sent with its [`crate::ProcessExit`].
    pub const COMMAND_LINES: &str = "COMMAND_LINES";
    /// Hash: [`crate::ConnKey`] → [`crate::ConnStats`]: the traffic of each watched run's
    /// sockets by remote endpoint, updated with atomic adds.
    pub const CONNECTIONS: &str = "CONNECTIONS";
    /// LRU hash: cgroup v2 id (`u64`) → when a TCP socket of it first listened (ns since boot,
    /// CLOCK_MONOTONIC).
    pub const FIRST_LISTEN: &str = "FIRST_LISTEN";
    /// Sockets of watched runs → the process they belong to.
    pub const SOCKETS: &str = "SOCKETS";
    /// Processes of watched runs → their network traffic.
    pub const PROCESS_NET: &str = "PROCESS_NET";
    /// Stack samples of watched runs' tasks, for the profile.
    pub const STACK_SAMPLES: &str = "STACK_SAMPLES";
    /// Array: [`crate::profile_period`] slot → events between two samples of its kind, set by
    /// the agent when it starts profiling.
    pub const PROFILE_PERIODS: &str = "PROFILE_PERIODS";
    /// LRU hash: pid → a task's off-CPU wait in progress and its budget of stack copies.
    pub const OFF_CPU: &str = "OFF_CPU";
}

/// Names of the programs of the BPF object (the Rust function names in `cleanroom-ebpf`).
pub mod programs {
    /// `tp_btf/sched_stat_runtime`: CPU time, charged where the kernel charges its cgroups.
    pub const SCHED_STAT_RUNTIME: &str = "sched_stat_runtime";
    /// `tp_btf/sched_switch`: context switches; run-queue latency ends here.
    pub const SCHED_SWITCH: &str = "sched_switch";
    /// `tp_btf/sched_wakeup`: run-queue latency starts here.
    pub const SCHED_WAKEUP: &str = "sched_wakeup";
    /// `tp_btf/sched_wakeup_new`: run-queue latency of new tasks starts here.
    pub const SCHED_WAKEUP_NEW: &str = "sched_wakeup_new";
    /// `tp_btf/sched_process_fork`: processes forked.
    pub const SCHED_PROCESS_FORK: &str = "sched_process_fork";
    /// `tp_btf/sched_process_exit`: processes exited, and what exiting tasks accounted.
    pub const SCHED_PROCESS_EXIT: &str = "sched_process_exit";
    /// The same, for kernels whose tracepoint has no `group_dead` argument (before 6.16).
    pub const SCHED_PROCESS_EXIT_V1: &str = "sched_process_exit_v1";
    /// `tp_btf/sched_process_exec`: a watched run's process's command line, after `exec`.
    pub const SCHED_PROCESS_EXEC: &str = "sched_process_exec";
    /// `tp_btf/page_fault_user`: faults taken in user mode.
    pub const PAGE_FAULT_USER: &str = "page_fault_user";
    /// `tp_btf/page_fault_kernel`: faults taken in kernel mode.
    pub const PAGE_FAULT_KERNEL: &str = "page_fault_kernel";
    /// `tp_btf/block_bio_queue`: block bytes and ops, and the owner of each bio.
    pub const BLOCK_BIO_QUEUE: &str = "block_bio_queue";
    /// `tp_btf/block_split`: the owner of a split-off bio.
    pub const BLOCK_SPLIT: &str = "block_split";
    /// The forms of the block hooks with a `request_queue` first argument (before 5.11).
    pub const BLOCK_BIO_QUEUE_Q: &str = "block_bio_queue_q";
    /// See [`BLOCK_BIO_QUEUE_Q`].
    pub const BLOCK_SPLIT_Q: &str = "block_split_q";
    /// See [`BLOCK_BIO_QUEUE_Q`].
    pub const BLOCK_RQ_ISSUE_Q: &str = "block_rq_issue_q";
    /// `block_rq_issue` with its one argument but the device in `bio->bi_disk` (5.10 kernels
    /// that took the newer tracepoint from a stable update, as Debian 11's do).
    pub const BLOCK_RQ_ISSUE_DISK: &str = "block_rq_issue_disk";
    /// `sched_switch` without its `prev_state` argument (before 5.18).
    pub const SCHED_SWITCH_V1: &str = "sched_switch_v1";
    /// `tp_btf/block_rq_issue`: block latency starts here.
    pub const BLOCK_RQ_ISSUE: &str = "block_rq_issue";
    /// `tp_btf/block_rq_complete`: block latency ends here.
    pub const BLOCK_RQ_COMPLETE: &str = "block_rq_complete";
    /// `cgroup_skb/ingress` on the v2 root: bytes and packets received.
    pub const CGROUP_SKB_INGRESS: &str = "cgroup_skb_ingress";
    /// `cgroup_skb/egress` on the v2 root: bytes and packets sent.
    pub const CGROUP_SKB_EGRESS: &str = "cgroup_skb_egress";
    /// `tp_btf/tcp_retransmit_skb`: TCP retransmits.
    pub const TCP_RETRANSMIT_SKB: &str = "tcp_retransmit_skb";
    /// `tp_btf/inet_sock_set_state`: TCP connect latency.
    pub const INET_SOCK_SET_STATE: &str = "inet_sock_set_state";
    /// `tp_btf/cgroup_mkdir`: records the parent of each new cgroup.
    pub const CGROUP_MKDIR: &str = "cgroup_mkdir";
    /// `tp_btf/cgroup_rmdir`: marks cgroups that are gone.
    pub const CGROUP_RMDIR: &str = "cgroup_rmdir";
    /// `tp_btf/cgroup_attach_task`: processes joining or leaving a watched run's cgroups.
    pub const CGROUP_ATTACH_TASK: &str = "cgroup_attach_task";
    /// `perf_event` (cpu-clock or cycles, on each CPU): a stack sample of a watched run's task.
    pub const PROFILE_CPU: &str = "profile_cpu";
    /// `tp_btf/sched_switch`, while profiling: off-CPU waits of watched runs' tasks.
    pub const PROFILE_SWITCH: &str = "profile_switch";
    /// The same, for the three-argument `sched_switch` (before 5.18).
    pub const PROFILE_SWITCH_V1: &str = "profile_switch_v1";
    /// `tp_btf/page_fault_user`, while profiling: one fault sample in every N.
    pub const PROFILE_FAULT: &str = "profile_fault";
    /// `tp_btf/block_bio_queue`, while profiling: one block sample per N bytes submitted.
    pub const PROFILE_BLOCK: &str = "profile_block";
    /// The same, for the two-argument `block_bio_queue` (before 5.11).
    pub const PROFILE_BLOCK_Q: &str = "profile_block_q";
    /// `tp_btf/sock_send_length`: a process sent on a socket (6.4 on).
    pub const SOCK_SEND_LENGTH: &str = "sock_send_length";
    /// `tp_btf/sock_recv_length`: a process received from a socket (6.4 on).
    pub const SOCK_RECV_LENGTH: &str = "sock_recv_length";
}

/// Kernel structure offsets the programs read at, set as load-time globals (`.rodata`) from
/// the running kernel's BTF. Each entry: global name, struct, member path.
pub const OFFSETS: &[(&str, &str, &str)] = &[
    ("OFF_TASK_CGROUPS", "task_struct", "cgroups"),
    ("OFF_TASK_PID", "task_struct", "pid"),
    ("OFF_TASK_TGID", "task_struct", "tgid"),
    ("OFF_TASK_FLAGS", "task_struct", "flags"),
    ("OFF_TASK_MAJ_FLT", "task_struct", "maj_flt"),
    ("OFF_TASK_START_TIME", "task_struct", "start_time"),
    ("OFF_TASK_GROUP_LEADER", "task_struct", "group_leader"),
    ("OFF_TASK_COMM", "task_struct", "comm"),
    ("OFF_CSS_SET_DFL_CGRP", "css_set", "dfl_cgrp"),
    ("OFF_CGROUP_KN", "cgroup", "kn"),
    ("OFF_CGROUP_ROOT", "cgroup", "root"),
    ("OFF_KERNFS_NODE_ID", "kernfs_node", "id"),
    ("OFF_KERNFS_NODE_PARENT", "kernfs_node", "__parent|parent"),
    ("OFF_BIO_BDEV", "bio", "bi_bdev"),
    ("OFF_BIO_OPF", "bio", "bi_opf"),
    ("OFF_BIO_SIZE", "bio", "bi_iter.bi_size"),
    ("OFF_BIO_BLKG", "bio", "bi_blkg"),
    ("OFF_BDEV_DEV", "block_device", "bd_dev"),
    ("OFF_BLKG_BLKCG", "blkcg_gq", "blkcg"),
    ("OFF_BLKCG_CGROUP", "blkcg", "css.cgroup"),
    ("OFF_RQ_BIO", "request", "bio"),
    ("OFF_RQ_CMD_FLAGS", "request", "cmd_flags"),
    ("OFF_SOCK_CGROUP", "sock", "sk_cgrp_data.cgroup"),
    ("OFF_TASK_IOAC_READ_BYTES", "task_struct", "ioac.read_bytes"),
    (
        "OFF_TASK_IOAC_WRITE_BYTES",
        "task_struct",
        "ioac.write_bytes",
    ),
    (
        "OFF_TASK_IOAC_CANCELLED_WRITE_BYTES",
        "task_struct",
        "ioac.cancelled_write_bytes",
    ),
    ("OFF_TASK_SIGNAL", "task_struct", "signal"),
    ("OFF_SIGNAL_MAXRSS", "signal_struct", "maxrss"),
    ("OFF_SIGNAL_LIVE", "signal_struct", "live.counter"),
    (
        "OFF_CGROUP_ROOT_HIERARCHY_ID",
        "cgroup_root",
        "hierarchy_id",
    ),
    // The older forms of hooks (see the agent's fallbacks) read these; a kernel has
    // `task_struct.__state` (5.14 on) or `.state`, and `bio.bi_bdev` (5.12 on) or `.bi_disk`.
    ("OFF_TASK_STATE", "task_struct", "__state|state"),
    ("OFF_BIO_DISK", "bio", "bi_disk"),
    ("OFF_BIO_PARTNO", "bio", "bi_partno"),
    ("OFF_GENDISK_MAJOR", "gendisk", "major"),
    ("OFF_GENDISK_FIRST_MINOR", "gendisk", "first_minor"),
    // A process's figures at its end (read where present; else the run says per-process
    // figures are unavailable).
    (
        "OFF_TASK_SUM_EXEC_RUNTIME",
        "task_struct",
        "se.sum_exec_runtime",
    ),
    ("OFF_TASK_MIN_FLT", "task_struct", "min_flt"),
    ("OFF_TASK_EXIT_CODE", "task_struct", "exit_code"),
    ("OFF_TASK_REAL_PARENT", "task_struct", "real_parent"),
    (
        "OFF_SIGNAL_SUM_SCHED_RUNTIME",
        "signal_struct",
        "sum_sched_runtime",
    ),
    ("OFF_SIGNAL_MIN_FLT", "signal_struct", "min_flt"),
    ("OFF_SIGNAL_MAJ_FLT", "signal_struct", "maj_flt"),
    (
        "OFF_SIGNAL_IOAC_READ_BYTES",
        "signal_struct",
        "ioac.read_bytes",
    ),
    (
        "OFF_SIGNAL_IOAC_WRITE_BYTES",
        "signal_struct",
        "ioac.write_bytes",
    ),
    // A socket's endpoints, for its retransmits and connects per connection (read where
    // present).
    ("OFF_SOCK_FAMILY", "sock_common", "skc_family"),
    ("OFF_SOCK_DADDR", "sock_common", "skc_daddr"),
    ("OFF_SOCK_V6_DADDR", "sock_common", "skc_v6_daddr"),
    ("OFF_SOCK_DPORT", "sock_common", "skc_dport"),
    ("OFF_SOCK_NUM", "sock_common", "skc_num"),
    // A process's command line, read at its exec.
    ("OFF_TASK_MM", "task_struct", "mm"),
    ("OFF_MM_ARG_START", "mm_struct", "arg_start"),
    ("OFF_MM_ARG_END", "mm_struct", "arg_end"),
    // A task's user registers, below the top of its kernel stack (profiling).
    ("OFF_TASK_STACK", "task_struct", "stack"),
    // The kernel's own run-queue accounting of a task (CONFIG_SCHED_INFO): its arrivals on a
    // CPU and the time it waited before them. Where absent, run-queue latency is timed from
    // wakeups instead.
    ("OFF_TASK_SCHED_PCOUNT", "task_struct", "sched_info.pcount"),
    (
        "OFF_TASK_SCHED_RUN_DELAY",
        "task_struct",
        "sched_info.run_delay",
    ),
];

/// Offsets of another kernel generation's layout: a kernel has either `bio.bi_bdev` (5.12 on) or
/// `bio.bi_disk` and `bio.bi_partno` (before), and the programs for the other are not loaded.
/// Their absence is not a fault.
pub const LAYOUT_ALTERNATIVES: &[&str] = &[
    "OFF_BIO_BDEV",
    "OFF_BDEV_DEV",
    "OFF_BIO_DISK",
    "OFF_BIO_PARTNO",
];

/// Capacity of [`maps::CGROUP_STATS`]: the number of distinct cgroups counted at once.
pub const MAX_CGROUPS: u32 = 10_240;

/// Counters kept per cgroup v2 id and per CPU. They only ever grow; user space sums the CPUs and
/// takes differences, and never resets them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Nanoseconds on CPU, as charged by `update_curr` (the figure behind `cpu.stat usage_usec`).
    pub cpu_time_ns: u64,
    /// Switches away from a task that blocked (it gave up the CPU itself).
    pub switches_voluntary: u64,
    /// Switches away from a task that was preempted while still runnable.
    pub switches_involuntary: u64,
    /// Page faults taken in user mode.
    pub page_faults_user: u64,
    /// Page faults taken in kernel mode (e.g. copying to or from user memory).
    pub page_faults_kernel: u64,
    /// Major faults (that needed I/O), summed from each task's own count when it exits.
    pub page_faults_major: u64,
    /// New processes (not threads) forked by the cgroup's tasks.
    pub processes_forked: u64,
    /// Processes whose last thread exited.
    pub processes_exited: u64,
    /// Bytes received by the cgroup's sockets (IP header and payload).
    pub net_rx_bytes: u64,
    /// Bytes sent by the cgroup's sockets (IP header and payload).
    pub net_tx_bytes: u64,
    /// Packets received (GRO/GSO aggregates count once, as on the interface).
    pub net_rx_packets: u64,
    /// Packets sent.
    pub net_tx_packets: u64,
    /// TCP segments retransmitted by the cgroup's sockets.
    pub tcp_retransmits: u64,
    /// Bytes the tasks caused to be read from storage (`task->ioac.read_bytes`, summed when
    /// each thread exits).
    pub io_read_bytes: u64,
    /// Bytes the tasks wrote to storage: dirtied in the page cache or written directly
    /// (`task->ioac.write_bytes`, summed when each thread exits).
    pub io_write_bytes: u64,
    /// Bytes dirtied and then dropped before writeback (`task->ioac.cancelled_write_bytes`).
    pub io_cancelled_write_bytes: u64,
    /// The largest peak RSS of one process, in pages (`signal->maxrss` when its last thread
    /// exits). A maximum, not a sum: [`CgroupStats::wrapping_add`] keeps the larger.
    pub process_peak_rss_pages: u64,
    /// Times `sched_stat_runtime` charged CPU time to the cgroup's tasks: the events of that
    /// hook, counted so that a report can say what the probes cost the run.
    pub cpu_time_updates: u64,
}

const _: () = assert!(core::mem::size_of::<CgroupStats>() == 18 * 8);

/// The counters of the hottest hooks (CPU time, switches, page faults) for the cgroup whose
/// events a CPU had last, not yet added to the cgroup's entry in [`maps::CGROUP_STATS`].
/// Consecutive events of a CPU mostly belong to one cgroup (the task running there): those hooks
/// count them here, in a per-CPU array whose element (one cache line) costs no hash lookup, and
/// add them to the cgroup's entry when an event of another cgroup comes. Part of the cgroup's
/// figures: a reader adds it ([`PendingStats::add_to`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingStats {
    /// The cgroup; 0 when none yet.
    pub cgroup_id: u64,
    /// As [`CgroupStats::cpu_time_ns`].
    pub cpu_time_ns: u64,
    /// As [`CgroupStats::cpu_time_updates`].
    pub cpu_time_updates: u64,
    /// As [`CgroupStats::switches_voluntary`].
    pub switches_voluntary: u64,
    /// As [`CgroupStats::switches_involuntary`].
    pub switches_involuntary: u64,
    /// As [`CgroupStats::page_faults_user`].
    pub page_faults_user: u64,
    /// As [`CgroupStats::page_faults_kernel`].
    pub page_faults_kernel: u64,
    /// Run-queue waits measured for the cgroup and not yet in its [`hist_kind::RUNQUEUE`]
    /// histogram, counted by bucket; a reader adds them ([`PendingLatencies::histogram`]).
    pub waits: PendingLatencies,
}

/// The packet counters of the socket cgroup whose packets a CPU's `cgroup_skb` programs counted
/// last, not yet added to its entry in [`maps::CGROUP_STATS`] (as [`PendingStats`] for the
/// scheduler's hooks), with the cgroup's run as [`maps::WATCHED`] said it at
/// `watch_generation`. Those programs can interrupt one another (a packet received in a softirq
/// while one is sent): one that finds the copy `busy` counts straight into the entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetPending {
    /// The socket cgroup; 0 when none yet.
    pub cgroup_id: u64,
    /// Its watched run, 0 for none, as of `watch_generation`.
    pub run_id: u64,
    /// The sum of [`maps::WATCH_GENERATION`] when `run_id` was looked up.
    pub watch_generation: u64,
    /// Non-zero while a program updates this copy.
    pub busy: u64,
    /// As [`CgroupStats::net_rx_bytes`].
    pub rx_bytes: u64,
    /// As [`CgroupStats::net_tx_bytes`].
    pub tx_bytes: u64,
    /// As [`CgroupStats::net_rx_packets`].
    pub rx_packets: u64,
    /// As [`CgroupStats::net_tx_packets`].
    pub tx_packets: u64,
}

const _: () = assert!(core::mem::size_of::<NetPending>() == 8 * 8);

impl PendingCounters for NetPending {
    /// Adds the pending packet counters to `stats`.
    #[inline(always)]
    fn add_to(&self, stats: &mut CgroupStats) {
        stats.net_rx_bytes = stats.net_rx_bytes.wrapping_add(self.rx_bytes);
        stats.net_tx_bytes = stats.net_tx_bytes.wrapping_add(self.tx_bytes);
        stats.net_rx_packets = stats.net_rx_packets.wrapping_add(self.rx_packets);
        stats.net_tx_packets = stats.net_tx_packets.wrapping_add(self.tx_packets);
    }

    fn take_fields(into: &mut CgroupStats, from: &CgroupStats) {
        into.net_rx_bytes = from.net_rx_bytes;
        into.net_tx_bytes = from.net_tx_bytes;
        into.net_rx_packets = from.net_rx_packets;
        into.net_tx_packets = from.net_tx_packets;
    }
}

/// A CPU's pending copy of some of one cgroup's counters (`C`), kept by one program only for
/// the cgroup whose events it counted last, not yet added to its entry in
/// [`maps::CGROUP_STATS`]: `sched_process_fork`'s ([`ForkPending`]) and `sched_process_exit`'s
/// ([`ExitPending`]). A burst of forks or exits from one cgroup — a test suite's processes
/// starting and ending — is counted in a per-CPU array element instead of one hash lookup each.
/// The kernel never runs a program inside itself on one CPU — tracepoints run their programs
/// with preemption off, and newer kernels also drop (and count as missed) a nested run — so the
/// copy needs no `busy` word, unlike [`NetPending`]. Part of the cgroup's figures: a reader
/// adds it ([`CgroupPending::add_to`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupPending<C> {
    /// The cgroup; 0 when none yet.
    pub cgroup_id: u64,
    /// Its counters.
    pub counters: C,
}

/// Counters a pending copy keeps of one cgroup beside its entry in [`maps::CGROUP_STATS`]:
/// those of [`PendingStats`], [`NetPending`] and the [`CgroupPending`] copies.
pub trait PendingCounters: Copy + Default {
    /// Adds them to `stats`.
    fn add_to(&self, stats: &mut CgroupStats);
    /// Sets the fields of `into` that these counters keep to those of `from`.
    fn take_fields(into: &mut CgroupStats, from: &CgroupStats);
}

impl<C: PendingCounters> CgroupPending<C> {
    /// Adds the pending counters to `stats`.
    #[inline(always)]
    pub fn add_to(&self, stats: &mut CgroupStats) {
        self.counters.add_to(stats);
    }
}

/// The fork counter of the cgroup whose processes' forks a CPU counted last.
pub type ForkPending = CgroupPending<ForkCounts>;

/// The exit counters of the cgroup whose thread exits a CPU counted last.
pub type ExitPending = CgroupPending<ExitCounts>;

/// What `sched_process_fork` counts of a cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkCounts {
    /// As [`CgroupStats::processes_forked`].
    pub processes_forked: u64,
}

const _: () = assert!(core::mem::size_of::<ForkPending>() == 2 * 8);

impl PendingCounters for ForkCounts {
    #[inline(always)]
    fn add_to(&self, stats: &mut CgroupStats) {
        stats.processes_forked = stats.processes_forked.wrapping_add(self.processes_forked);
    }

    fn take_fields(into: &mut CgroupStats, from: &CgroupStats) {
        into.processes_forked = from.processes_forked;
    }
}

/// What `sched_process_exit` counts of a cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitCounts {
    /// As [`CgroupStats::page_faults_major`].
    pub page_faults_major: u64,
    /// As [`CgroupStats::processes_exited`].
    pub processes_exited: u64,
    /// As [`CgroupStats::io_read_bytes`].
    pub io_read_bytes: u64,
    /// As [`CgroupStats::io_write_bytes`].
    pub io_write_bytes: u64,
    /// As [`CgroupStats::io_cancelled_write_bytes`].
    pub io_cancelled_write_bytes: u64,
    /// As [`CgroupStats::process_peak_rss_pages`]: the largest of the pending exits.
    pub process_peak_rss_pages: u64,
}

const _: () = assert!(core::mem::size_of::<ExitPending>() == 7 * 8);

impl PendingCounters for ExitCounts {
    /// Adds the pending exit counters to `stats` (the peak RSS as a maximum).
    #[inline(always)]
    fn add_to(&self, stats: &mut CgroupStats) {
        stats.page_faults_major = stats.page_faults_major.wrapping_add(self.page_faults_major);
        stats.processes_exited = stats.processes_exited.wrapping_add(self.processes_exited);
        stats.io_read_bytes = stats.io_read_bytes.wrapping_add(self.io_read_bytes);
        stats.io_write_bytes = stats.io_write_bytes.wrapping_add(self.io_write_bytes);
        stats.io_cancelled_write_bytes = stats
            .io_cancelled_write_bytes
            .wrapping_add(self.io_cancelled_write_bytes);
        if self.process_peak_rss_pages > stats.process_peak_rss_pages {
            stats.process_peak_rss_pages = self.process_peak_rss_pages;
        }
    }

    fn take_fields(into: &mut CgroupStats, from: &CgroupStats) {
        into.page_faults_major = from.page_faults_major;
        into.processes_exited = from.processes_exited;
        into.io_read_bytes = from.io_read_bytes;
        into.io_write_bytes = from.io_write_bytes;
        into.io_cancelled_write_bytes = from.io_cancelled_write_bytes;
        into.process_peak_rss_pages = from.process_peak_rss_pages;
    }
}

/// Latencies measured and not yet added to their histogram (a kernel-side buffer, see
/// [`PendingStats::waits`] and [`LatencyPending`]): how many fell in each of up to
/// [`PENDING_WAITS`] distinct buckets ([`hist_bucket`]), their sum and their largest. They are
/// added to the shared histogram only when an eighth distinct bucket comes (or the copy is
/// taken for another histogram): latencies of one source mostly fall in a few buckets, so the
/// shared histogram's cache lines, which every CPU writes, are touched once for many latencies
/// instead of once each. Buckets rather than values: the bucket of each is found when it is
/// measured, so adding them later takes no branch per value (which the verifier would walk in
/// every combination).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingLatencies {
    /// Each distinct bucket (low 32 bits) with how many latencies fell in it (high 32 bits).
    pub buckets: [u64; PENDING_WAITS],
    /// How many of `buckets` are in use.
    pub count: u64,
    /// The sum of the pending latencies (ns).
    pub sum: u64,
    /// The largest of them (ns).
    pub max: u64,
}

const _: () = assert!(core::mem::size_of::<PendingLatencies>() == 10 * 8);

/// One latency in a [`PendingLatencies`] entry: its count's unit.
pub const PENDING_ONE: u64 = 1 << 32;

/// The bucket of a [`PendingLatencies`] entry.
#[inline(always)]
pub const fn pending_bucket(entry: u64) -> u64 {
    entry & (PENDING_ONE - 1)
}

/// How many latencies a [`PendingLatencies`] entry holds.
#[inline(always)]
pub const fn pending_count(entry: u64) -> u64 {
    entry >> 32
}

/// A [`PendingLatencies`] entry's count past which the copy is added to its histogram first:
/// far from overflowing into nothing, and never reached in practice (2^31 latencies of one
/// bucket without another coming).
pub const PENDING_FULL_COUNT: u64 = 1 << 31;

impl PendingLatencies {
    /// The pending latencies as a histogram, or `None` when there are none.
    pub fn histogram(&self) -> Option<Histogram> {
        let n = (self.count as usize).min(PENDING_WAITS);
        if n == 0 {
            return None;
        }
        let mut h = Histogram::EMPTY;
        for &entry in &self.buckets[..n] {
            let bucket = (pending_bucket(entry) as usize).min(HIST_BUCKETS - 1);
            h.buckets[bucket] += pending_count(entry);
            h.count += pending_count(entry);
        }
        h.sum = self.sum;
        h.max = self.max;
        Some(h)
    }
}

/// Latencies a CPU measured for the histogram `key` and has not added to it yet, counted
/// by bucket ([`PendingLatencies`]) until more distinct buckets come than it holds, or the copy
/// is taken for another histogram ([`LatencySet`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyPending {
    /// The histogram; `cgroup_id` 0 when none yet.
    pub key: HistKey,
    /// The latencies.
    pub latencies: PendingLatencies,
}

const _: () = assert!(core::mem::size_of::<LatencyPending>() == 12 * 8);

/// The block counters of one (cgroup, device) a CPU counted and has not added to its entry in
/// [`maps::BLOCK_STATS`] yet ([`BlockPending`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockWay {
    /// The cgroup and device; `cgroup_id` 0 when none yet.
    pub key: BlockKey,
    /// The counters.
    pub stats: BlockStats,
}

/// A CPU's pending block counters for the two (cgroup, device) it counted last, as
/// [`PendingSet`] for the scheduler's counters: a loop device's bios alternate with the disk's
/// below it. Bios can be submitted from an interrupt while a task submits one: a program that
/// finds the set `busy` counts straight into the entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockPending {
    /// Non-zero while a program updates the set.
    pub busy: u64,
    /// Which of `ways` had the last bio (0 or 1).
    pub last_used: u64,
    /// The copies.
    pub ways: [BlockWay; 2],
}

const _: () = assert!(core::mem::size_of::<BlockPending>() == (2 + 2 * 6) * 8);

/// Pending copies per CPU in a [`LatencySet`].
pub const LATENCY_WAYS: usize = 4;

/// A CPU's pending latencies for the [`LATENCY_WAYS`] histograms it recorded last: a device's
/// reads and writes alternate, a loop device's I/O completes beside the disk's below it, and
/// TCP connects complete among them. A latency of a fifth histogram takes the copy
/// `next_victim` names (in turn). Completions can interrupt one another (a hard interrupt
/// during a soft one): one that finds the set `busy` adds its latency to the histogram at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySet {
    /// Non-zero while a program updates the set.
    pub busy: u64,
    /// The copy the next new histogram takes.
    pub next_victim: u64,
    /// The copies.
    pub ways: [LatencyPending; LATENCY_WAYS],
}

const _: () = assert!(core::mem::size_of::<LatencySet>() == (2 + 12 * LATENCY_WAYS) * 8);

/// Distinct buckets a pending copy of latencies holds before they are added to their
/// histogram.
pub const PENDING_WAITS: usize = 7;

const _: () = assert!(core::mem::size_of::<PendingStats>() == 17 * 8);

/// A CPU's pending counters ([`PendingStats`]) for the two cgroups it counted last. Two, not
/// one: a CPU often alternates between two cgroups — a task and the idle task (the root), or a
/// task doing I/O and the kernel worker serving it — and one copy would be added to a hash entry
/// at every change. A third cgroup's event adds the copy used least recently and takes its
/// place.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingSet {
    /// The two copies.
    pub ways: [PendingStats; 2],
    /// Which of `ways` had the last event (0 or 1).
    pub last_used: u64,
}

const _: () = assert!(core::mem::size_of::<PendingSet>() == 35 * 8);

impl PendingCounters for PendingStats {
    /// Adds the pending counters to `stats`.
    #[inline(always)]
    fn add_to(&self, stats: &mut CgroupStats) {
        stats.cpu_time_ns = stats.cpu_time_ns.wrapping_add(self.cpu_time_ns);
        stats.cpu_time_updates = stats.cpu_time_updates.wrapping_add(self.cpu_time_updates);
        stats.switches_voluntary = stats
            .switches_voluntary
            .wrapping_add(self.switches_voluntary);
        stats.switches_involuntary = stats
            .switches_involuntary
            .wrapping_add(self.switches_involuntary);
        stats.page_faults_user = stats.page_faults_user.wrapping_add(self.page_faults_user);
        stats.page_faults_kernel = stats
            .page_faults_kernel
            .wrapping_add(self.page_faults_kernel);
    }

    fn take_fields(into: &mut CgroupStats, from: &CgroupStats) {
        into.cpu_time_ns = from.cpu_time_ns;
        into.cpu_time_updates = from.cpu_time_updates;
        into.switches_voluntary = from.switches_voluntary;
        into.switches_involuntary = from.switches_involuntary;
        into.page_faults_user = from.page_faults_user;
        into.page_faults_kernel = from.page_faults_kernel;
    }
}

impl CgroupStats {
    /// Field-wise wrapping sum (the maximum for `process_peak_rss_pages`), used to add up CPUs
    /// and cgroups.
    #[must_use]
    pub fn wrapping_add(self, o: Self) -> Self {
        Self {
            cpu_time_ns: self.cpu_time_ns.wrapping_add(o.cpu_time_ns),
            switches_voluntary: self.switches_voluntary.wrapping_add(o.switches_voluntary),
            switches_involuntary: self
                .switches_involuntary
                .wrapping_add(o.switches_involuntary),
            page_faults_user: self.page_faults_user.wrapping_add(o.page_faults_user),
            page_faults_kernel: self.page_faults_kernel.wrapping_add(o.page_faults_kernel),
            page_faults_major: self.page_faults_major.wrapping_add(o.page_faults_major),
            processes_forked: self.processes_forked.wrapping_add(o.processes_forked),
            processes_exited: self.processes_exited.wrapping_add(o.processes_exited),
            net_rx_bytes: self.net_rx_bytes.wrapping_add(o.net_rx_bytes),
            net_tx_bytes: self.net_tx_bytes.wrapping_add(o.net_tx_bytes),
            net_rx_packets: self.net_rx_packets.wrapping_add(o.net_rx_packets),
            net_tx_packets: self.net_tx_packets.wrapping_add(o.net_tx_packets),
            tcp_retransmits: self.tcp_retransmits.wrapping_add(o.tcp_retransmits),
            io_read_bytes: self.io_read_bytes.wrapping_add(o.io_read_bytes),
            io_write_bytes: self.io_write_bytes.wrapping_add(o.io_write_bytes),
            io_cancelled_write_bytes: self
                .io_cancelled_write_bytes
                .wrapping_add(o.io_cancelled_write_bytes),
            process_peak_rss_pages: self.process_peak_rss_pages.max(o.process_peak_rss_pages),
            cpu_time_updates: self.cpu_time_updates.wrapping_add(o.cpu_time_updates),
        }
    }

    /// Field-wise maximum with `floor`: counters that only grow, read again, never reported
    /// below an earlier reading.
    #[must_use]
    pub fn at_least(self, floor: Self) -> Self {
        Self {
            cpu_time_ns: self.cpu_time_ns.max(floor.cpu_time_ns),
            switches_voluntary: self.switches_voluntary.max(floor.switches_voluntary),
            switches_involuntary: self.switches_involuntary.max(floor.switches_involuntary),
            page_faults_user: self.page_faults_user.max(floor.page_faults_user),
            page_faults_kernel: self.page_faults_kernel.max(floor.page_faults_kernel),
            page_faults_major: self.page_faults_major.max(floor.page_faults_major),
            processes_forked: self.processes_forked.max(floor.processes_forked),
            processes_exited: self.processes_exited.max(floor.processes_exited),
            net_rx_bytes: self.net_rx_bytes.max(floor.net_rx_bytes),
            net_tx_bytes: self.net_tx_bytes.max(floor.net_tx_bytes),
            net_rx_packets: self.net_rx_packets.max(floor.net_rx_packets),
            net_tx_packets: self.net_tx_packets.max(floor.net_tx_packets),
            tcp_retransmits: self.tcp_retransmits.max(floor.tcp_retransmits),
            io_read_bytes: self.io_read_bytes.max(floor.io_read_bytes),
            io_write_bytes: self.io_write_bytes.max(floor.io_write_bytes),
            io_cancelled_write_bytes: self
                .io_cancelled_write_bytes
                .max(floor.io_cancelled_write_bytes),
            process_peak_rss_pages: self
                .process_peak_rss_pages
                .max(floor.process_peak_rss_pages),
            cpu_time_updates: self.cpu_time_updates.max(floor.cpu_time_updates),
        }
    }
}

/// Key of [`maps::BLOCK_STATS`]: one cgroup on one block device.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    /// The owning cgroup's v2 id.
    pub cgroup_id: u64,
    /// The device as the kernel encodes `dev_t` (major << 20 | minor).
    pub dev: u32,
    /// Zero.
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<BlockKey>() == 16);

/// Block I/O of one cgroup on one device, counted per bio when it is submitted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read bios.
    pub read_ops: u64,
    /// Write bios.
    pub write_ops: u64,
}

const _: () = assert!(core::mem::size_of::<BlockStats>() == 32);

impl BlockStats {
    /// Field-wise wrapping sum.
    #[must_use]
    pub fn wrapping_add(self, o: Self) -> Self {
        Self {
            read_bytes: self.read_bytes.wrapping_add(o.read_bytes),
            write_bytes: self.write_bytes.wrapping_add(o.write_bytes),
            read_ops: self.read_ops.wrapping_add(o.read_ops),
            write_ops: self.write_ops.wrapping_add(o.write_ops),
        }
    }
}

/// Which latency a histogram holds.
pub mod hist_kind {
    /// Block reads, issue to completion.
    pub const BLOCK_READ: u32 = 0;
    /// Block writes, issue to completion.
    pub const BLOCK_WRITE: u32 = 1;
    /// Wakeup (or preemption) to running.
    pub const RUNQUEUE: u32 = 2;
    /// TCP `SYN_SENT` to `ESTABLISHED`.
    pub const TCP_CONNECT: u32 = 3;
}

/// Key of [`maps::HISTOGRAMS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HistKey {
    /// The cgroup's v2 id.
    pub cgroup_id: u64,
    /// A [`hist_kind`] value.
    pub kind: u32,
    /// For block latencies, the device (`dev_t` as the kernel encodes it); else 0.
    pub dev: u32,
}

const _: () = assert!(core::mem::size_of::<HistKey>() == 16);

/// Sub-buckets per power of two: bucket width is at most 1/8 of its lower bound.
pub const HIST_SUB_BITS: u32 = 3;
/// Exact buckets for 0..8 ns, then 8 per octave from 2^3 up to 2^43 ns (about 2.4 hours).
pub const HIST_BUCKETS: usize = 8 + 8 * 40;

/// Bucket of a value (ns): exact below 8, then `2^e + k * 2^(e-3)` for k in 0..8. Values past the
/// last octave land in the last bucket. Written without loops or `leading_zeros`, for BPF.
#[inline(always)]
pub fn hist_bucket(value: u64) -> usize {
    if value < 8 {
        return value as usize;
    }
    let e = log2(value);
    let sub = (value >> (e - HIST_SUB_BITS)) & 7;
    let index = 8 + (e as usize - 3) * 8 + sub as usize;
    if index < HIST_BUCKETS {
        index
    } else {
        HIST_BUCKETS - 1
    }
}

/// Lower bound (inclusive) of bucket `index`, in the histogram's unit.
pub fn hist_bucket_low(index: usize) -> u64 {
    if index < 8 {
        return index as u64;
    }
    let e = (index - 8) / 8 + 3;
    let k = ((index - 8) % 8) as u64;
    (1u64 << e) + k * (1u64 << (e - 3))
}

/// floor(log2(v)) for v > 0, by halving steps (BPF has no count-leading-zeros).
#[inline(always)]
fn log2(mut v: u64) -> u32 {
    let mut r = 0;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// A latency histogram in the kernel: bucket counts plus exact count, sum and max.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Histogram {
    /// Counts per [`hist_bucket`].
    pub buckets: [u64; HIST_BUCKETS],
    /// Number of values.
    pub count: u64,
    /// Sum of values.
    pub sum: u64,
    /// Largest value (racy across CPUs only when two maxima land at the same instant).
    pub max: u64,
}

const _: () = assert!(core::mem::size_of::<Histogram>() == (HIST_BUCKETS + 3) * 8);

impl Histogram {
    /// No values.
    pub const EMPTY: Histogram = Histogram {
        buckets: [0; HIST_BUCKETS],
        count: 0,
        sum: 0,
        max: 0,
    };
}

/// A cgroup made while the programs were loaded: its parent, and whether it is gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupNode {
    /// The parent's v2 id.
    pub parent_id: u64,
    /// 1 once `cgroup_rmdir` saw it go.
    pub removed: u64,
}

const _: () = assert!(core::mem::size_of::<CgroupNode>() == 16);

/// A process of a watched run ([`maps::RUN_PROCS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunProc {
    /// The run: the v2 id of the run's own cgroup.
    pub run_id: u64,
    /// `start_time` of the process's group leader (ns since boot), so that an entry left by a
    /// process that exited unseen never matches another process that reuses its pid.
    pub start_time: u64,
}

const _: () = assert!(core::mem::size_of::<RunProc>() == 16);

/// How a process came to be outside its run's cgroups.
pub mod escape_via {
    /// Moved by a write to a `cgroup.procs` (or `cgroup.threads`) file: `cgroup_attach_task`.
    pub const MOVED: u32 = 0;
    /// Forked straight into another cgroup (`clone3` with `CLONE_INTO_CGROUP`).
    pub const FORKED_INTO: u32 = 1;
}

/// A process that left a watched run's cgroups ([`maps::ESCAPES`]); the first time it did.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Escape {
    /// The run it left (the v2 id of the run's own cgroup).
    pub run_id: u64,
    /// The v2 id of the cgroup it went to.
    pub to_cgroup_id: u64,
    /// The task that moved (the thread id when only one thread moved).
    pub pid: u32,
    /// Its process (thread group) id.
    pub tgid: u32,
    /// An [`escape_via`] value.
    pub via: u32,
    /// Zero.
    pub _pad: u32,
    /// `task->comm` when it left: the name, NUL-padded (not terminated when 16 bytes long).
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<Escape>() == 48);

/// A process of a watched run that ended ([`maps::PROCESS_RECORDS`]): what the kernel accounted
/// to it, as `getrusage(RUSAGE_SELF)` would say it (its threads together, children apart).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessExit {
    /// The run (the v2 id of the run's own cgroup).
    pub run_id: u64,
    /// Start of the process (its leader's `start_time`, ns since boot, CLOCK_MONOTONIC).
    pub start_ns: u64,
    /// Its last thread's last switch (ns since boot, CLOCK_MONOTONIC).
    pub end_ns: u64,
    /// CPU time of every thread (`signal->sum_sched_runtime` + the last thread's own).
    pub cpu_ns: u64,
    /// Minor faults of every thread.
    pub minor_faults: u64,
    /// Major faults of every thread.
    pub major_faults: u64,
    /// Storage bytes read, every thread (`ioac.read_bytes`).
    pub io_read_bytes: u64,
    /// Storage bytes written, every thread (`ioac.write_bytes`).
    pub io_write_bytes: u64,
    /// Network traffic of the sockets it owned ([`maps::PROCESS_NET`]).
    pub net: ProcessNet,
    /// Process id.
    pub tgid: u32,
    /// Its parent's process id.
    pub ppid: u32,
    /// `task->exit_code` of the last thread (wait status: code << 8, or the signal).
    pub exit_code: u32,
    /// Length of its whole command line (may exceed [`COMMAND_LINE_BYTES`]); 0 when none was
    /// taken.
    pub command_line_len: u32,
    /// `task->comm` at the end, NUL-padded.
    pub comm: [u8; 16],
    /// The first `min(command_line_len, COMMAND_LINE_BYTES)` bytes of its command line: the
    /// arguments, each NUL-terminated, as `/proc/PID/cmdline` has them.
    pub command_line: [u8; COMMAND_LINE_BYTES],
}

impl Default for ProcessExit {
    fn default() -> Self {
        Self {
            run_id: 0,
            start_ns: 0,
            end_ns: 0,
            cpu_ns: 0,
            minor_faults: 0,
            major_faults: 0,
            io_read_bytes: 0,
            io_write_bytes: 0,
            net: ProcessNet::default(),
            tgid: 0,
            ppid: 0,
            exit_code: 0,
            command_line_len: 0,
            comm: [0; 16],
            command_line: [0; COMMAND_LINE_BYTES],
        }
    }
}

const _: () = assert!(core::mem::size_of::<ProcessExit>() == 128 + COMMAND_LINE_BYTES);

/// Bytes of a process's command line kept ([`ProcessExit::command_line`]).
pub const COMMAND_LINE_BYTES: usize = 256;

/// A watched run's process's command line ([`maps::COMMAND_LINES`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandLine {
    /// Length of the whole command line (`mm->arg_end - mm->arg_start`).
    pub len: u32,
    /// Zero.
    pub _pad: u32,
    /// Its first `min(len, COMMAND_LINE_BYTES)` bytes; the rest is undefined.
    pub bytes: [u8; COMMAND_LINE_BYTES],
}

/// A watched run's socket's remote endpoint ([`maps::CONNECTIONS`]): one entry per run, remote
/// address and port, local port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    /// The run.
    pub run_id: u64,
    /// The remote address: IPv4 in the first 4 bytes (network order), or IPv6.
    pub remote_addr: [u8; 16],
    /// The remote port (host order; 0 for a protocol without ports).
    pub remote_port: u16,
    /// The local port (host order).
    pub local_port: u16,
    /// 4 or 6.
    pub family: u8,
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: u8,
    /// Zero.
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<ConnKey>() == 32);

/// The traffic of a [`ConnKey`], from the IP header on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// TCP segments retransmitted.
    pub retransmits: u64,
    /// TCP connects completed (SYN_SENT → ESTABLISHED).
    pub connects: u64,
    /// Their latencies added, ns.
    pub connect_ns_sum: u64,
    /// The longest, ns.
    pub connect_ns_max: u64,
}

/// Capacity of [`maps::CONNECTIONS`].
pub const MAX_CONNECTIONS: u32 = 16_384;

/// A process's network traffic, from the IP header on ([`maps::PROCESS_NET`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessNet {
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
}

/// A watched run's socket ([`maps::SOCKETS`]): the process it belongs to, and the traffic it
/// had before one was known (a connection accepted in softirq, its first data before
/// `accept`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketOwner {
    /// The owning process's tgid; 0 until a process of the run uses the socket.
    pub tgid: u32,
    /// Zero.
    pub _pad: u32,
    /// Traffic while [`Self::tgid`] was 0, handed to the owner when it is known.
    pub pending: ProcessNet,
}

/// Bytes of a task's user stack a sample copies at most: from its stack pointer, a first part
/// up to the next page boundary and then whole pages, so a read never crosses into the unmapped
/// page above the stack's top.
pub const USER_STACK_BYTES: usize = 16_384;

/// Room for [`USER_STACK_BYTES`] and the first part's variable length.
pub const USER_STACK_ROOM: usize = USER_STACK_BYTES + 4_096;

/// Kernel frames a sample keeps at most.
pub const KERNEL_FRAMES: usize = 64;

/// Bytes of the ring buffer of stack samples ([`maps::STACK_SAMPLES`]): about 400 samples.
pub const STACK_SAMPLES_BYTES: u32 = 8 << 20;

/// One stack sample of a watched run's task ([`maps::STACK_SAMPLES`]): where it was in the
/// kernel, and what user space needs to unwind its user stack (registers and a copy of the
/// top of the stack).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StackSample {
    /// The run.
    pub run_id: u64,
    /// When (ns since boot, CLOCK_MONOTONIC).
    pub time_ns: u64,
    /// Its process.
    pub tgid: u32,
    /// Its thread.
    pub pid: u32,
    /// Bytes of [`Self::kernel_stack`] filled (8 per frame); 0 in user mode.
    pub kernel_stack_bytes: u32,
    /// Bytes of [`Self::user_stack`] filled, from [`Self::user_sp`] on.
    pub user_stack_bytes: u32,
    /// User registers: instruction, stack and frame pointer (0 when unknown: a kernel thread).
    pub user_ip: u64,
    /// See [`Self::user_ip`].
    pub user_sp: u64,
    /// See [`Self::user_ip`].
    pub user_bp: u64,
    /// What the sample is of ([`sample_kind`]).
    pub kind: u32,
    /// Off-CPU: the task's state as it switched out (`TASK_INTERRUPTIBLE` 1,
    /// `TASK_UNINTERRUPTIBLE` 2, ...); 0 otherwise.
    pub state: u32,
    /// What the sample stands for, in its kind's unit: 1 for a CPU sample, the faults or block
    /// bytes since the last sample on this CPU, 0 for an off-CPU sample (its time comes in the
    /// [`OffCpuEnd`] of the task's switch back in).
    pub weight: u64,
    /// The task's address space (`task->mm`, as a number; 0 where unknown): a new one from
    /// each exec, so the mappings read for one program are not used for the next.
    pub mm: u64,
    /// The task's `comm`, NUL-padded.
    pub comm: [u8; 16],
    /// Kernel return addresses, innermost first.
    pub kernel_stack: [u64; KERNEL_FRAMES],
    /// The user stack from `user_sp` up.
    pub user_stack: [u8; USER_STACK_ROOM],
}

/// Kinds of [`StackSample`].
pub mod sample_kind {
    /// On CPU: the sampling event fired (`profile_cpu`).
    pub const CPU: u32 = 0;
    /// A voluntary switch-out: where the task went to wait (`profile_switch`).
    pub const OFF_CPU: u32 = 1;
    /// A page fault in user mode, one in every N (`profile_fault`).
    pub const FAULT: u32 = 2;
    /// A bio the task submitted, one per N bytes (`profile_block`).
    pub const BLOCK: u32 = 3;
}

/// The end of an off-CPU wait of a watched run's task: sent at its switch back in, to be joined
/// with the [`StackSample`] of its switch-out when one was sent (the same `pid` and `out_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuEnd {
    /// The run.
    pub run_id: u64,
    /// When it switched out (ns since boot): the [`StackSample::time_ns`] of its stacks.
    pub out_ns: u64,
    /// When it switched back in.
    pub in_ns: u64,
    /// Its thread.
    pub pid: u32,
    /// Its process.
    pub tgid: u32,
    /// 1 when its stacks were sent at the switch-out; 0 when not (the task's budget of stack
    /// copies was spent, or the buffer was half full).
    pub captured: u32,
    /// Its state as it switched out.
    pub state: u32,
}

/// Which [`maps::PROFILE_PERIODS`] slot holds what: faults between two fault samples, block
/// bytes between two block samples, and the user stack bytes a sample copies.
pub mod profile_period {
    /// User-mode page faults per fault sample.
    pub const FAULTS: u32 = 0;
    /// Bytes submitted per block sample.
    pub const BLOCK_BYTES: u32 = 1;
    /// Bytes of the user stack a sample copies at most (up to [`super::USER_STACK_BYTES`];
    /// 0 for that).
    pub const STACK_BYTES: u32 = 2;
    /// Slots.
    pub const COUNT: u32 = 3;
}

/// Capacity of [`maps::OFF_CPU`]: tasks of watched runs switched out at once, with their budget
/// of stack copies (least recently used go first).
pub const MAX_OFF_CPU_TASKS: u32 = 16_384;

/// Capacity of [`maps::SOCKETS`] (least recently used go first): sockets of watched runs.
pub const MAX_SOCKETS: u32 = 16_384;

/// Capacity of [`maps::PROCESS_NET`]: processes of watched runs with traffic, alive at once.
pub const MAX_PROCESS_NET: u32 = 8_192;

/// Capacity of [`maps::COMMAND_LINES`]: processes of watched runs alive at once.
pub const MAX_COMMAND_LINES: u32 = 8_192;

/// A process's last thread between its exit and its last switch ([`maps::EXITING`]): its run,
/// and the figures of its other threads as they were at the exit. They are taken then because
/// once the process is reaped (its parent may do so before the last switch) the kernel adds
/// the last thread's own figures to them too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exiting {
    /// The run.
    pub run_id: u64,
    /// `signal->sum_sched_runtime`.
    pub cpu_ns: u64,
    /// `signal->min_flt`.
    pub minor_faults: u64,
    /// `signal->maj_flt`.
    pub major_faults: u64,
    /// `signal->ioac.read_bytes`.
    pub io_read_bytes: u64,
    /// `signal->ioac.write_bytes`.
    pub io_write_bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Exiting>() == 48);

/// Size of [`maps::PROCESS_RECORDS`], bytes (a power of two): about 10,000 records between two
/// reads.
pub const PROCESS_RECORDS_BYTES: u32 = 1 << 20;

/// Capacity of [`maps::EXITING`].
pub const MAX_EXITING: u32 = 4_096;

/// Capacities of the other maps.
pub const MAX_BLOCK_KEYS: u32 = 16_384;
/// Histograms: a few per cgroup that does I/O, wakes up or connects.
pub const MAX_HISTOGRAMS: u32 = 8_192;
/// Cgroups whose parent is remembered.
pub const MAX_CGROUP_TREE: u32 = 16_384;
/// In-flight bios, requests, wakeups and connects remembered at once (LRU; evictions counted).
pub const MAX_IN_FLIGHT: u32 = 16_384;
/// Cgroups of watched runs (run cgroups and the sub-cgroups made in them).
pub const MAX_WATCHED: u32 = 1_024;
/// Cgroups whose tasks are profiled (each profile's cgroup and its sub-cgroups).
pub const MAX_PROFILED: u32 = 10_240;
/// Processes of watched runs at once.
pub const MAX_RUN_PROCS: u32 = 32_768;
/// Escapes recorded and not yet read.
pub const MAX_ESCAPES: u32 = 1_024;

/// Reasons an event could not be counted; indices into [`maps::DROPS`].
pub mod drop_reason {
    /// [`crate::maps::CGROUP_STATS`] was full, so a new cgroup's event was lost.
    pub const STATS_MAP_FULL: u32 = 0;
    /// A kernel structure could not be read (bad offset or racing free).
    pub const READ_FAILED: u32 = 1;
    /// [`crate::maps::BLOCK_STATS`] was full.
    pub const BLOCK_MAP_FULL: u32 = 2;
    /// [`crate::maps::HISTOGRAMS`] was full.
    pub const HIST_MAP_FULL: u32 = 3;
    /// [`crate::maps::CGROUP_TREE`] was full.
    pub const TREE_MAP_FULL: u32 = 4;
    /// A latency ended whose start was not seen (evicted, or begun before loading).
    pub const LATENCY_UNMATCHED: u32 = 5;
    /// [`crate::maps::WATCHED`] was full: a sub-cgroup of a run was not marked as inside it.
    pub const WATCHED_MAP_FULL: u32 = 6;
    /// [`crate::maps::RUN_PROCS`] was full: a process of a run was not tracked, so its leaving
    /// the run's cgroups would go unseen.
    pub const RUN_PROCS_MAP_FULL: u32 = 7;
    /// [`crate::maps::ESCAPES`] was full: a process left its run's cgroups unrecorded.
    pub const ESCAPES_MAP_FULL: u32 = 8;
    /// A process of a run ended unrecorded ([`crate::maps::EXITING`] or
    /// [`crate::maps::PROCESS_RECORDS`] was full).
    pub const PROCESS_RECORD_LOST: u32 = 9;
    /// [`crate::maps::COMMAND_LINES`] was full: a process's record goes without its command
    /// line.
    pub const COMMAND_LINES_MAP_FULL: u32 = 10;
    /// [`crate::maps::CONNECTIONS`] was full: a run's packets to a new endpoint were counted in
    /// its totals only.
    pub const CONNECTIONS_MAP_FULL: u32 = 11;
    /// [`crate::maps::PROCESS_NET`] was full: a run's packets were counted in its totals, not
    /// to a process.
    pub const SOCKETS_MAP_FULL: u32 = 12;
    /// A stack sample was lost: [`crate::maps::STACK_SAMPLES`] was full.
    pub const STACK_SAMPLE_LOST: u32 = 13;
    /// The end of an off-CPU wait was lost ([`crate::maps::STACK_SAMPLES`] was full): its
    /// time is missing from the off-CPU profile.
    pub const OFF_CPU_END_LOST: u32 = 14;
    /// [`crate::maps::PROFILED`] was full: a sub-cgroup of a profiled cgroup was not profiled.
    pub const PROFILED_MAP_FULL: u32 = 15;
    /// Number of reasons (size of the drops array).
    pub const COUNT: u32 = 16;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all impls below): each type is `repr(C)`, made only of fixed-width integers with
    // explicit padding fields, and every bit pattern is a valid value.
    // SAFETY: see above.
    unsafe impl aya::Pod for super::CgroupStats {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::PendingStats {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::PendingSet {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::NetPending {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ExitPending {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ForkPending {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::LatencySet {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::BlockPending {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ProcessExit {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::CommandLine {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ConnKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ConnStats {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::ProcessNet {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::StackSample {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::OffCpuEnd {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::SocketOwner {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::BlockKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::BlockStats {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::HistKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Histogram {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::CgroupNode {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RunProc {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Escape {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_latencies_are_the_counted_ones_and_never_past_the_buffer() {
        let entry = |bucket: usize, count: u64| count * PENDING_ONE + bucket as u64;
        let mut pending = PendingLatencies {
            buckets: [
                entry(hist_bucket(5), 2),
                entry(hist_bucket(9), 1),
                entry(hist_bucket(2_000), 3),
                entry(7, 9),
                entry(7, 9),
                entry(7, 9),
                entry(7, 9),
            ],
            count: 3,
            sum: 2 * 5 + 9 + 3 * 2_000,
            max: 2_000,
        };
        let h = pending.histogram().unwrap();
        assert_eq!((h.count, h.sum, h.max), (6, 6_019, 2_000));
        assert_eq!(h.buckets.iter().sum::<u64>(), 6);
        assert_eq!(h.buckets[hist_bucket(5)], 2);
        assert_eq!(h.buckets[hist_bucket(9)], 1);
        assert_eq!(h.buckets[hist_bucket(2_000)], 3);
        // A torn count or bucket read from a live map cannot index past either array.
        pending.count = 1_000;
        pending.buckets[0] = u64::MAX;
        let h = pending.histogram().unwrap();
        assert_eq!(h.buckets[HIST_BUCKETS - 1], u64::MAX >> 32);
        assert_eq!(h.count, (u64::MAX >> 32) + 1 + 3 + 4 * 9);
        pending.count = 0;
        assert!(pending.histogram().is_none());
    }

    #[test]
    fn every_value_falls_in_the_bucket_that_bounds_it() {
        let mut v = 0u64;
        while v < 1 << 44 {
            let i = hist_bucket(v);
            assert!(hist_bucket_low(i) <= v, "{v} below its bucket {i}");
            if i + 1 < HIST_BUCKETS {
                assert!(v < hist_bucket_low(i + 1), "{v} above its bucket {i}");
                // Width at most 1/8 of the lower bound past the exact range.
                let width = hist_bucket_low(i + 1) - hist_bucket_low(i);
                assert!(
                    i < 8 || width * 8 <= hist_bucket_low(i),
                    "bucket {i} too wide"
                );
            }
            v = v * 9 / 8 + 1;
        }
        assert_eq!(hist_bucket(u64::MAX), HIST_BUCKETS - 1);
        assert_eq!(hist_bucket(7), 7);
        assert_eq!(hist_bucket(8), 8);
        assert_eq!(hist_bucket(9), 9);
        assert_eq!(hist_bucket(16), 16);
    }
}
