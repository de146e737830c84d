//! Loading the embedded BPF object, attaching its programs and reading its maps.
//!
//! The only module that touches aya. It knows hooks and cgroup ids, nothing of paths, SLOs or
//! reports. A program whose hook the kernel lacks (or whose struct offsets its BTF lacks) is left
//! detached: its metrics are reported as unavailable by [`Probes::unavailable`], never as zero.
//! Runs are watched by their cgroup id ([`Probes::watch_run`]), so that a process leaving the
//! run's cgroup is recorded ([`Probes::escapes`]) or, where the hooks for that are missing, the
//! blind spot is known ([`Probes::escapes_unavailable`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
};
use cleanroom_common::{
    BlockKey, BlockPending, BlockStats, CgroupNode, CgroupStats, ExitPending, ForkPending, HistKey,
    Histogram, LatencySet, NetPending, PendingSet, RunProc, drop_reason, escape_via, hist_kind,
    maps, profile_period, programs,
};

pub use cleanroom_common::{ConnKey, ConnStats, OffCpuEnd, ProcessExit, StackSample, sample_kind};

pub use crate::kernel::tally::Counted;
use crate::{
    kernel::btf::{BtfError, Offsets, VMLINUX_BTF},
    kernel::cost::{Calibration, ProbesCost},
    kernel::meter::CostMeter,
    kernel::pending::{self, CpuPending},
    kernel::tally::{self, Tally},
    metric::{AnyMetric, Latency, Metric},
};

/// The object `cargo xtask build` made, embedded by `build.rs` (empty if there was none).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cleanroom.bpf.o"));

/// Empty programs on the same hooks, for the benchmark's floor (empty if not built).
static FLOOR_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor.bpf.o"));

/// Errors of loading and reading the probes.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// This binary was built without the BPF object.
    #[error("this binary carries no BPF object; build it with `cargo xtask build`")]
    NoObject,
    /// Offsets could not be resolved.
    #[error(transparent)]
    Btf(#[from] BtfError),
    /// aya could not read the kernel's BTF.
    #[error("cannot read kernel BTF: {0}")]
    KernelBtf(#[from] aya::BtfError),
    /// The object could not be loaded.
    #[error("cannot load the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// The object lacks a program or map this agent expects (agent and object out of step).
    #[error("the BPF object has no {0}; rebuild with `cargo xtask build`")]
    Missing(String),
    /// Stack sampling could not start.
    #[error("stack sampling could not start: {0}")]
    Profiling(String),
    /// A map could not be read.
    #[error("reading map {map}: {source}")]
    Map {
        /// Which map.
        map: &'static str,
        /// Why.
        source: MapError,
    },
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> ProbeError {
    move |source| ProbeError::Map { map, source }
}

/// `Ok` also when the key to remove was already gone.
fn ok_if_absent(r: Result<(), MapError>, map: &'static str) -> Result<(), ProbeError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        // Deleting a key that is not there reports ENOENT from the syscall.
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(map_err(map)(e)),
    }
}

/// How a program attaches.
#[derive(Clone, Copy, Debug)]
pub enum Attach {
    /// A BTF tracepoint of this name.
    TpBtf(&'static str),
    /// `cgroup_skb` on the v2 root, this direction.
    CgroupSkb(CgroupSkbAttachType),
}

impl std::fmt::Display for Attach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attach::TpBtf(tp) => write!(f, "tp_btf/{tp}"),
            Attach::CgroupSkb(CgroupSkbAttachType::Ingress) => write!(f, "cgroup_skb/ingress"),
            Attach::CgroupSkb(CgroupSkbAttachType::Egress) => write!(f, "cgroup_skb/egress"),
        }
    }
}

/// A kernel hook, the program on it, the metrics it provides and the offsets it reads at.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// Program name in the object.
    pub program: &'static str,
    /// Where it attaches.
    pub attach: Attach,
    /// Metrics that are unavailable without it.
    pub metrics: &'static [AnyMetric],
    /// Offset globals (`cleanroom_common::OFFSETS`) it cannot work without.
    pub needs: &'static [&'static str],
    /// Other programs for the same hook, tried in order where the kernel refuses this one.
    pub fallbacks: &'static [Fallback],
}

/// A program for an older form of a hook (e.g. a tracepoint with fewer arguments).
#[derive(Clone, Copy, Debug)]
pub struct Fallback {
    /// Program name in the object.
    pub program: &'static str,
    /// Offset globals it cannot work without.
    pub needs: &'static [&'static str],
    /// Which kernels need it, and what it does differently.
    pub why: &'static str,
}

/// What `block_rq_issue` reads where the device is in `bio->bi_disk` (before 5.12).
const RQ_ISSUE_BI_DISK: &[&str] = &[
    "OFF_RQ_BIO",
    "OFF_RQ_CMD_FLAGS",
    "OFF_BIO_DISK",
    "OFF_BIO_PARTNO",
    "OFF_GENDISK_MAJOR",
    "OFF_GENDISK_FIRST_MINOR",
];

/// What `block_split` reads, in either form: a bio's owner (see `bio_owner` in the programs).
const BLOCK_SPLIT_NEEDS: &[&str] = &[
    "OFF_TASK_FLAGS",
    "OFF_BIO_BLKG",
    "OFF_BLKG_BLKCG",
    "OFF_BLKCG_CGROUP",
    "OFF_CGROUP_ROOT",
    "OFF_CGROUP_ROOT_HIERARCHY_ID",
];

const TASK_CGROUP: &[&str] = &[
    "OFF_TASK_CGROUPS",
    "OFF_CSS_SET_DFL_CGRP",
    "OFF_CGROUP_KN",
    "OFF_KERNFS_NODE_ID",
];

use AnyMetric::{Latency as L, Value as V};

/// Every hook, in attach order.
pub const HOOKS: &[Hook] = &[
    Hook {
        program: programs::SCHED_STAT_RUNTIME,
        attach: Attach::TpBtf("sched_stat_runtime"),
        metrics: &[V(Metric::CpuTime)],
        needs: TASK_CGROUP,
        fallbacks: &[],
    },
    Hook {
        program: programs::SCHED_SWITCH,
        attach: Attach::TpBtf("sched_switch"),
        metrics: &[
            V(Metric::ContextSwitchesVoluntary),
            V(Metric::ContextSwitchesInvoluntary),
            L(Latency::Runqueue),
        ],
        needs: &[
            "OFF_TASK_PID",
            "OFF_TASK_CGROUPS",
            "OFF_CSS_SET_DFL_CGRP",
            "OFF_CGROUP_KN",
            "OFF_KERNFS_NODE_ID",
        ],
        fallbacks: &[Fallback {
            program: programs::SCHED_SWITCH_V1,
            needs: &[
                "OFF_TASK_STATE",
                "OFF_TASK_PID",
                "OFF_TASK_TGID",
                "OFF_TASK_CGROUPS",
                "OFF_CSS_SET_DFL_CGRP",
                "OFF_CGROUP_KN",
                "OFF_KERNFS_NODE_ID",
            ],
            why: "the three-argument form of kernels before 5.18: the previous task's state is \
                  read from the task",
        }],
    },
    Hook {
        program: programs::SCHED_WAKEUP,
        attach: Attach::TpBtf("sched_wakeup"),
        metrics: &[L(Latency::Runqueue)],
        needs: &["OFF_TASK_PID"],
        fallbacks: &[],
    },
    Hook {
        program: programs::SCHED_WAKEUP_NEW,
        attach: Attach::TpBtf("sched_wakeup_new"),
        metrics: &[L(Latency::Runqueue)],
        needs: &["OFF_TASK_PID"],
        fallbacks: &[],
    },
    Hook {
        program: programs::SCHED_PROCESS_FORK,
        attach: Attach::TpBtf("sched_process_fork"),
        metrics: &[V(Metric::ProcessesForked)],
        needs: TASK_IDENTITY,
        fallbacks: &[],
    },
    Hook {
        program: programs::SCHED_PROCESS_EXIT,
        attach: Attach::TpBtf("sched_process_exit"),
        metrics: &[
            V(Metric::ProcessesExited),
            V(Metric::PageFaultsMajor),
            V(Metric::IoReadBytes),
            V(Metric::IoWriteBytes),
            V(Metric::IoCancelledWriteBytes),
            V(Metric::ProcessPeakRssBytes),
        ],
        needs: &["OFF_TASK_MAJ_FLT"],
        fallbacks: &[Fallback {
            program: programs::SCHED_PROCESS_EXIT_V1,
            needs: &[
                "OFF_TASK_MAJ_FLT",
                "OFF_TASK_SIGNAL",
                "OFF_SIGNAL_LIVE",
                "OFF_TASK_TGID",
                "OFF_TASK_GROUP_LEADER",
                "OFF_TASK_START_TIME",
            ],
            why: "the one-argument form of kernels before 6.16: a process's last thread is told \
                  by signal->live",
        }],
    },
    Hook {
        program: programs::SCHED_PROCESS_EXEC,
        attach: Attach::TpBtf("sched_process_exec"),
        metrics: &[],
        needs: &[
            "OFF_TASK_MM",
            "OFF_MM_ARG_START",
            "OFF_MM_ARG_END",
            "OFF_TASK_TGID",
        ],
        fallbacks: &[],
    },
    Hook {
        program: programs::PAGE_FAULT_USER,
        attach: Attach::TpBtf("page_fault_user"),
        metrics: &[V(Metric::PageFaultsUser)],
        needs: &[],
        fallbacks: &[],
    },
    Hook {
        program: programs::PAGE_FAULT_KERNEL,
        attach: Attach::TpBtf("page_fault_kernel"),
        metrics: &[V(Metric::PageFaultsKernel)],
        needs: &[],
        fallbacks: &[],
    },
    Hook {
        program: programs::BLOCK_BIO_QUEUE,
        attach: Attach::TpBtf("block_bio_queue"),
        metrics: &[
            V(Metric::BlockReadBytes),
            V(Metric::BlockWriteBytes),
            V(Metric::BlockReadOps),
            V(Metric::BlockWriteOps),
            L(Latency::BlockRead),
            L(Latency::BlockWrite),
        ],
        needs: &[
            "OFF_BIO_BDEV",
            "OFF_BIO_OPF",
            "OFF_BIO_SIZE",
            "OFF_BIO_BLKG",
            "OFF_BDEV_DEV",
            "OFF_BLKG_BLKCG",
            "OFF_BLKCG_CGROUP",
            "OFF_TASK_FLAGS",
            "OFF_CGROUP_ROOT",
            "OFF_CGROUP_ROOT_HIERARCHY_ID",
        ],
        fallbacks: &[Fallback {
            program: programs::BLOCK_BIO_QUEUE_Q,
            needs: BLOCK_BEFORE_5_11,
            why: "the form of kernels before 5.11: a request_queue first, the device from \
                  bio->bi_disk",
        }],
    },
    Hook {
        program: programs::BLOCK_SPLIT,
        attach: Attach::TpBtf("block_split"),
        metrics: &[L(Latency::BlockRead), L(Latency::BlockWrite)],
        needs: BLOCK_SPLIT_NEEDS,
        fallbacks: &[Fallback {
            program: programs::BLOCK_SPLIT_Q,
            needs: BLOCK_SPLIT_NEEDS,
            why: "the form of kernels before 5.11: a request_queue first",
        }],
    },
    Hook {
        program: programs::BLOCK_RQ_ISSUE,
        attach: Attach::TpBtf("block_rq_issue"),
        metrics: &[L(Latency::BlockRead), L(Latency::BlockWrite)],
        needs: &[
            "OFF_RQ_BIO",
            "OFF_RQ_CMD_FLAGS",
            "OFF_BIO_BDEV",
            "OFF_BDEV_DEV",
        ],
        fallbacks: &[
            Fallback {
                program: programs::BLOCK_RQ_ISSUE_Q,
                needs: RQ_ISSUE_BI_DISK,
                why: "the form of kernels before 5.11: a request_queue first, the device from \
                      bio->bi_disk",
            },
            Fallback {
                program: programs::BLOCK_RQ_ISSUE_DISK,
                needs: RQ_ISSUE_BI_DISK,
                why: "the form of 5.10 kernels with the one-argument tracepoint from a stable \
                      update: the device from bio->bi_disk",
            },
        ],
    },
    Hook {
        program: programs::BLOCK_RQ_COMPLETE,
        attach: Attach::TpBtf("block_rq_complete"),
        metrics: &[L(Latency::BlockRead), L(Latency::BlockWrite)],
        needs: &[],
        fallbacks: &[],
    },
    Hook {
        program: programs::CGROUP_SKB_INGRESS,
        attach: Attach::CgroupSkb(CgroupSkbAttachType::Ingress),
        metrics: &[V(Metric::NetRxBytes), V(Metric::NetRxPackets)],
        needs: &[],
        fallbacks: &[],
    },
    Hook {
        program: programs::CGROUP_SKB_EGRESS,
        attach: Attach::CgroupSkb(CgroupSkbAttachType::Egress),
        metrics: &[V(Metric::NetTxBytes), V(Metric::NetTxPackets)],
        needs: &[],
        fallbacks: &[],
    },
    Hook {
        program: programs::TCP_RETRANSMIT_SKB,
        attach: Attach::TpBtf("tcp_retransmit_skb"),
        metrics: &[V(Metric::TcpRetransmits)],
        needs: &["OFF_SOCK_CGROUP", "OFF_CGROUP_KN", "OFF_KERNFS_NODE_ID"],
        fallbacks: &[],
    },
    Hook {
        program: programs::INET_SOCK_SET_STATE,
        attach: Attach::TpBtf("inet_sock_set_state"),
        metrics: &[L(Latency::TcpConnect)],
        needs: &["OFF_SOCK_CGROUP", "OFF_CGROUP_KN", "OFF_KERNFS_NODE_ID"],
        fallbacks: &[],
    },
    Hook {
        program: programs::SOCK_SEND_LENGTH,
        attach: Attach::TpBtf("sock_send_length"),
        metrics: &[],
        needs: &["OFF_SOCK_CGROUP", "OFF_CGROUP_KN", "OFF_KERNFS_NODE_ID"],
        fallbacks: &[],
    },
    Hook {
        program: programs::SOCK_RECV_LENGTH,
        attach: Attach::TpBtf("sock_recv_length"),
        metrics: &[],
        needs: &["OFF_SOCK_CGROUP", "OFF_CGROUP_KN", "OFF_KERNFS_NODE_ID"],
        fallbacks: &[],
    },
    Hook {
        program: programs::CGROUP_MKDIR,
        attach: Attach::TpBtf("cgroup_mkdir"),
        metrics: &[],
        needs: CGROUP_LINEAGE,
        fallbacks: &[],
    },
    Hook {
        program: programs::CGROUP_RMDIR,
        attach: Attach::TpBtf("cgroup_rmdir"),
        metrics: &[],
        needs: CGROUP_LINEAGE,
        fallbacks: &[],
    },
    Hook {
        program: programs::CGROUP_ATTACH_TASK,
        attach: Attach::TpBtf("cgroup_attach_task"),
        metrics: &[],
        needs: TASK_IDENTITY,
        fallbacks: &[],
    },
];

/// Offsets of the hooks that record each new cgroup's parent.
const CGROUP_LINEAGE: &[&str] = &[
    "OFF_CGROUP_ROOT",
    "OFF_CGROUP_ROOT_HIERARCHY_ID",
    "OFF_KERNFS_NODE_PARENT",
];

/// Offsets of `block_bio_queue` in its form before 5.11.
const BLOCK_BEFORE_5_11: &[&str] = &[
    "OFF_BIO_DISK",
    "OFF_BIO_PARTNO",
    "OFF_GENDISK_MAJOR",
    "OFF_GENDISK_FIRST_MINOR",
    "OFF_BIO_OPF",
    "OFF_BIO_SIZE",
    "OFF_BIO_BLKG",
    "OFF_BLKG_BLKCG",
    "OFF_BLKCG_CGROUP",
    "OFF_TASK_FLAGS",
    "OFF_CGROUP_ROOT",
    "OFF_CGROUP_ROOT_HIERARCHY_ID",
];

/// Offsets of the programs that tell a process apart and find its cgroup: the fork and
/// cgroup-attach hooks, which keep track of the processes of watched runs.
const TASK_IDENTITY: &[&str] = &[
    "OFF_TASK_PID",
    "OFF_TASK_TGID",
    "OFF_TASK_GROUP_LEADER",
    "OFF_TASK_START_TIME",
    "OFF_TASK_COMM",
    "OFF_TASK_CGROUPS",
    "OFF_CSS_SET_DFL_CGRP",
    "OFF_CGROUP_KN",
    "OFF_CGROUP_ROOT",
    "OFF_CGROUP_ROOT_HIERARCHY_ID",
    "OFF_KERNFS_NODE_ID",
];

/// Hooks without which a process's network traffic is unknown: the packets, and the TCP
/// states that name a socket's process on any kernel.
const SOCKET_OWNER_HOOKS: &[&str] = &[
    programs::CGROUP_SKB_INGRESS,
    programs::CGROUP_SKB_EGRESS,
    programs::INET_SOCK_SET_STATE,
];

/// Hooks (6.4 on) that name a socket's process at each send and receive: without them an
/// accepted connection is its closer's, and an unconnected UDP socket no process's.
const SOCKET_USE_HOOKS: &[&str] = &[programs::SOCK_SEND_LENGTH, programs::SOCK_RECV_LENGTH];

/// Hooks a process's record needs: the last thread's exit marks it, its last switch sends it.
const PROCESS_HOOKS: &[&str] = &[programs::SCHED_SWITCH, programs::SCHED_PROCESS_EXIT];

/// Hooks without which a process leaving a run's cgroups could go unseen: moves, new processes,
/// and sub-cgroups (a move into one must not look like leaving).
const ESCAPE_HOOKS: &[&str] = &[
    programs::CGROUP_ATTACH_TASK,
    programs::SCHED_PROCESS_FORK,
    programs::CGROUP_MKDIR,
];

/// Metrics that need offsets beyond their hook's, read with a helper that tolerates their
/// absence (no `CONFIG_TASK_IO_ACCOUNTING`, say): a kernel without them loses these metrics,
/// not the hook.
const OPTIONAL: &[(Metric, &[&str])] = &[
    (Metric::IoReadBytes, &["OFF_TASK_IOAC_READ_BYTES"]),
    (Metric::IoWriteBytes, &["OFF_TASK_IOAC_WRITE_BYTES"]),
    (
        Metric::IoCancelledWriteBytes,
        &["OFF_TASK_IOAC_CANCELLED_WRITE_BYTES"],
    ),
    (
        Metric::ProcessPeakRssBytes,
        &["OFF_TASK_SIGNAL", "OFF_SIGNAL_MAXRSS"],
    ),
];

/// Where stack samples arrive, once profiling started ([`Probes::start_profiling`]).
pub struct ProfileSource {
    ring: RingBuf<aya::maps::MapData>,
    /// The event sampled: `cycles` or `cpu-clock`.
    pub clock: &'static str,
    /// CPUs sampled.
    pub cpus: usize,
    /// The [`sample_kind`]s beyond the CPU's that this kernel cannot take, with why.
    pub unavailable: Vec<(u32, String)>,
}

impl std::fmt::Debug for ProfileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileSource")
            .field("clock", &self.clock)
            .field("cpus", &self.cpus)
            .field("unavailable", &self.unavailable)
            .finish_non_exhaustive()
    }
}

/// One record of the profile's buffer.
pub enum ProfileRecord<'a> {
    /// A stack sample.
    Sample(&'a StackSample),
    /// The end of an off-CPU wait.
    OffCpuEnd(OffCpuEnd),
}

impl ProfileRecord<'_> {
    /// The run it is of.
    pub fn run_id(&self) -> u64 {
        match self {
            ProfileRecord::Sample(s) => s.run_id,
            ProfileRecord::OffCpuEnd(e) => e.run_id,
        }
    }
}

impl ProfileSource {
    /// Hands each record that arrived since the last call to `each`.
    pub fn drain(&mut self, mut each: impl FnMut(ProfileRecord<'_>)) {
        while let Some(item) = self.ring.next() {
            if item.len() == std::mem::size_of::<OffCpuEnd>() {
                // SAFETY: the kernel wrote a whole `OffCpuEnd` (repr(C), every bit pattern
                // valid); read unaligned from the ring's bytes.
                let end = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<OffCpuEnd>()) };
                each(ProfileRecord::OffCpuEnd(end));
                continue;
            }
            if item.len() < std::mem::size_of::<StackSample>() {
                continue;
            }
            let at = item.as_ptr();
            if at.align_offset(std::mem::align_of::<StackSample>()) == 0 {
                // SAFETY: the kernel wrote a whole `StackSample` there (repr(C), every bit
                // pattern valid), aligned (records start 8-byte aligned in the ring), and it
                // stays put while `item` is borrowed: read in place, not copied (20 KiB).
                each(ProfileRecord::Sample(unsafe { &*at.cast::<StackSample>() }));
                continue;
            }
            // SAFETY: as above, but unaligned: copied into the heap first.
            let sample: Box<StackSample> = unsafe {
                let mut b = Box::<StackSample>::new_uninit();
                std::ptr::copy_nonoverlapping(
                    at,
                    b.as_mut_ptr().cast::<u8>(),
                    std::mem::size_of::<StackSample>(),
                );
                b.assume_init()
            };
            each(ProfileRecord::Sample(&sample));
        }
    }

    /// Waits until the buffer wakes its reader (the kernel's programs wake it only once it
    /// holds a batch: see `profile::send` in the kernel's programs) or `also` becomes
    /// readable, at most `timeout`.
    pub fn wait(&self, timeout: std::time::Duration, also: std::os::fd::BorrowedFd<'_>) {
        use std::os::fd::AsRawFd as _;
        let mut fds = [self.ring.as_raw_fd(), also.as_raw_fd()].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: two valid pollfds.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                timeout.as_millis().min(60_000) as i32,
            )
        };
    }
}

/// How often the profiles sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SamplingRates {
    /// CPU samples a second on each CPU.
    pub frequency_hz: u64,
    /// User-mode page faults per fault sample.
    pub fault_period: u64,
    /// Bytes a run's tasks submit to block devices per block sample.
    pub block_period_bytes: u64,
    /// Bytes of the user stack each sample copies at most (up to
    /// [`cleanroom_common::USER_STACK_BYTES`]).
    pub stack_bytes: u64,
}

impl SamplingRates {
    /// The rates a configuration asks for.
    pub fn of(pm: &crate::config::PerformanceMonitoring) -> Self {
        Self {
            frequency_hz: pm.profiling_frequency_hz,
            fault_period: pm.profiling_fault_period,
            block_period_bytes: pm.profiling_block_period,
            stack_bytes: pm.profiling_stack_bytes,
        }
    }
}

/// The profiles beyond the CPU's: their kind, tracepoint, and programs (the hook's own form
/// first, then older ones).
const OTHER_PROFILES: &[(u32, &str, &[&str])] = &[
    (
        sample_kind::OFF_CPU,
        "sched_switch",
        &[programs::PROFILE_SWITCH, programs::PROFILE_SWITCH_V1],
    ),
    (
        sample_kind::FAULT,
        "page_fault_user",
        &[programs::PROFILE_FAULT],
    ),
    (
        sample_kind::BLOCK,
        "block_bio_queue",
        &[programs::PROFILE_BLOCK, programs::PROFILE_BLOCK_Q],
    ),
];

/// `reasons` joined with `; `, or `None` when there are none.
fn joined(reasons: impl Iterator<Item = String>) -> Option<String> {
    let reasons: Vec<String> = reasons.collect();
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// Whether a hook could be attached.
#[derive(Clone, Debug)]
pub struct HookStatus {
    /// The hook.
    pub hook: Hook,
    /// `None` when attached; why not otherwise.
    pub error: Option<String>,
    /// The older form attached instead of the hook's own program, if one was.
    pub fallback: Option<Fallback>,
}

impl HookStatus {
    /// The program attached for the hook (its own, or its fallback).
    pub fn program(&self) -> &'static str {
        self.fallback.map_or(self.hook.program, |f| f.program)
    }
}

/// Events the kernel programs could not count, by reason name.
pub type Drops = BTreeMap<&'static str, u64>;

/// Names of [`drop_reason`] values in reports.
const DROP_NAMES: &[(u32, &str)] = &[
    (drop_reason::STATS_MAP_FULL, "stats_map_full"),
    (drop_reason::READ_FAILED, "read_failed"),
    (drop_reason::BLOCK_MAP_FULL, "block_map_full"),
    (drop_reason::HIST_MAP_FULL, "histogram_map_full"),
    (drop_reason::TREE_MAP_FULL, "cgroup_tree_map_full"),
    (drop_reason::LATENCY_UNMATCHED, LATENCY_START_UNSEEN),
    (drop_reason::WATCHED_MAP_FULL, WATCHED_MAP_FULL),
    (drop_reason::RUN_PROCS_MAP_FULL, RUN_PROCS_MAP_FULL),
    (drop_reason::ESCAPES_MAP_FULL, ESCAPES_MAP_FULL),
    (drop_reason::PROCESS_RECORD_LOST, PROCESS_RECORDS_LOST),
    (drop_reason::COMMAND_LINES_MAP_FULL, COMMAND_LINES_MAP_FULL),
    (drop_reason::CONNECTIONS_MAP_FULL, CONNECTIONS_MAP_FULL),
    (drop_reason::SOCKETS_MAP_FULL, SOCKETS_MAP_FULL),
    (drop_reason::STACK_SAMPLE_LOST, STACK_SAMPLES_LOST),
    (drop_reason::OFF_CPU_END_LOST, OFF_CPU_ENDS_LOST),
    (drop_reason::PROFILED_MAP_FULL, "profiled_map_full"),
];

/// Drop name: the end of an off-CPU wait was lost (the kernel's buffer was full), so its time
/// is missing from the off-CPU profile.
pub const OFF_CPU_ENDS_LOST: &str = "off_cpu_ends_lost";

/// Drop name: a stack sample for the profile was lost (the kernel's buffer was full).
pub const STACK_SAMPLES_LOST: &str = "stack_samples_lost";

/// Drop name: a run's packets were counted in its totals, not to a process (the kernel's maps
/// of sockets or processes were full).
pub const SOCKETS_MAP_FULL: &str = "sockets_map_full";

/// Drop name: a run's packets to a new endpoint were counted in its totals only.
pub const CONNECTIONS_MAP_FULL: &str = "connections_map_full";

/// Drop name: a process's record went without its command line (the kernel's map was full).
pub const COMMAND_LINES_MAP_FULL: &str = "command_lines_map_full";

/// Drop name: a process of a run ended without its record (the kernel's buffer was full).
pub const PROCESS_RECORDS_LOST: &str = "process_records_lost";

/// Drop name: a latency whose start was not seen (already under way when the probes attached):
/// reports say it in a note, not as a loss.
pub const LATENCY_START_UNSEEN: &str = "latency_start_unseen";
/// Drop name: a sub-cgroup of a run was not marked as inside it.
pub const WATCHED_MAP_FULL: &str = "watched_map_full";
/// Drop name: a process of a run was not tracked (its leaving would go unseen).
pub const RUN_PROCS_MAP_FULL: &str = "run_procs_map_full";
/// Drop name: a process left its run's cgroups, unrecorded.
pub const ESCAPES_MAP_FULL: &str = "escapes_map_full";

/// A process that left a watched run's cgroups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Escape {
    /// The process (thread group) id.
    pub pid: u32,
    /// The thread that moved, when only one thread of the process did.
    pub thread: Option<u32>,
    /// Its name (`comm`) when it left.
    pub comm: String,
    /// The v2 id of the cgroup it went to.
    pub to_cgroup_id: u64,
    /// Whether it was forked straight into that cgroup (`CLONE_INTO_CGROUP`), rather than moved.
    pub forked_into: bool,
}

impl Escape {
    fn from_wire(raw: &cleanroom_common::Escape) -> Self {
        let len = raw
            .comm
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(raw.comm.len());
        Self {
            pid: raw.tgid,
            thread: (raw.pid != raw.tgid).then_some(raw.pid),
            comm: String::from_utf8_lossy(&raw.comm[..len]).into_owned(),
            to_cgroup_id: raw.to_cgroup_id,
            forked_into: raw.via == escape_via::FORKED_INTO,
        }
    }
}

/// The offsets of the kernel's own run-queue accounting of a task.
const SCHED_INFO_OFFSETS: &[&str] = &["OFF_TASK_SCHED_PCOUNT", "OFF_TASK_SCHED_RUN_DELAY"];

/// Hooks that time run-queue waits from wakeups, where the kernel keeps no `sched_info`.
const WAKEUP_HOOKS: &[&str] = &[programs::SCHED_WAKEUP, programs::SCHED_WAKEUP_NEW];

/// Whether the kernel keeps `sched_info` (CONFIG_SCHED_INFO): this process has arrived on a CPU
/// at least once, so the third figure of its schedstat (`pcount`) is not 0.
fn sched_info_kept() -> bool {
    std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse::<u64>().ok())
        .is_some_and(|pcount| pcount > 0)
}

/// The loaded object with its programs attached. Dropping it detaches everything.
pub struct Probes {
    /// What each program costs per event, measured while they run (not for the floor).
    meter: Option<CostMeter>,
    ebpf: Ebpf,
    status: Vec<HookStatus>,
    /// Metrics lost to offsets this kernel lacks although their hook attached, with why.
    optional_missing: Vec<(Metric, String)>,
    /// Whether run-queue latency comes from the kernel's `sched_info` (no wakeup hooks).
    runq_from_sched_info: bool,
    /// Each cgroup's counters as last read: a read is never reported below them (see
    /// [`Probes::count`]). Emptied of a cgroup when it is forgotten.
    stats_seen: std::sync::Mutex<BTreeMap<u64, CgroupStats>>,
}

impl Probes {
    /// Whether this binary carries a BPF object at all.
    pub fn object_embedded() -> bool {
        !OBJECT.is_empty()
    }

    /// Loads the object with offsets of the running kernel and attaches every hook it can.
    /// `v2_root` is the cgroup v2 root directory, for the network programs.
    pub fn load(v2_root: Option<&File>) -> Result<Self, ProbeError> {
        let mut probes = Self::load_object(OBJECT, true, v2_root)?;
        let programs = probes
            .program_ids()
            .into_iter()
            .map(|(_, hook, id)| (id, hook))
            .collect();
        probes.meter = Some(CostMeter::start(programs));
        Ok(probes)
    }

    /// Loads the benchmark's floor: an empty program on every hook (nothing is counted).
    pub fn load_floor(v2_root: Option<&File>) -> Result<Self, ProbeError> {
        Self::load_object(FLOOR_OBJECT, false, v2_root)
    }

    fn load_object(
        object: &[u8],
        set_offsets: bool,
        v2_root: Option<&File>,
    ) -> Result<Self, ProbeError> {
        if object.is_empty() {
            return Err(ProbeError::NoObject);
        }
        let offsets = Offsets::from_file(VMLINUX_BTF.as_ref())?;
        let btf = Btf::from_sys_fs()?;
        let values: Vec<(&str, u64)> = cleanroom_common::OFFSETS
            .iter()
            .map(|(g, _, _)| (*g, offsets.value(g)))
            .collect();
        let mut loader = EbpfLoader::new();
        loader.btf(Some(&btf));
        let has_task_btf_helper = u64::from(offsets.has_task_btf_helper);
        if set_offsets {
            for (global, value) in &values {
                loader.override_global(global, value, true);
            }
            loader.override_global("HAS_TASK_BTF_HELPER", &has_task_btf_helper, true);
        }
        // Run-queue latency from the kernel's own sched_info where it keeps it: the wakeup
        // hooks are then not needed (see `sched::RUNQ_FROM_SCHED_INFO` in the programs).
        let runq_from_sched_info = set_offsets
            && SCHED_INFO_OFFSETS
                .iter()
                .all(|g| offsets.missing(g).is_none())
            && sched_info_kept();
        let runq_flag = u64::from(runq_from_sched_info);
        if set_offsets {
            loader.override_global("RUNQ_FROM_SCHED_INFO", &runq_flag, true);
        }
        let mut ebpf = loader.load(object)?;

        let mut status = Vec::with_capacity(HOOKS.len());
        let in_object: BTreeSet<String> = ebpf.programs().map(|(n, _)| n.to_owned()).collect();
        for hook in HOOKS {
            if runq_from_sched_info && WAKEUP_HOOKS.contains(&hook.program) {
                log::debug!(
                    "{}: not needed (run-queue latency from sched_info)",
                    hook.attach
                );
                continue;
            }
            let mut try_program = |program: &'static str, needs: &[&str]| {
                // The floor's empty programs read nothing: no offset can be missing for them.
                let missing: Vec<&str> = needs
                    .iter()
                    .filter(|_| set_offsets)
                    .filter_map(|g| offsets.missing(g))
                    .collect();
                if missing.is_empty() {
                    let error = attach(&mut ebpf, program, hook.attach, &btf, v2_root)?;
                    Ok::<_, ProbeError>(error.map(|e| {
                        log::debug!("{program}: {e}");
                        verifier_log_tail(&e, VERIFIER_LOG_TAIL)
                    }))
                } else {
                    Ok(Some(missing.join("; ")))
                }
            };
            let mut fallback = None;
            let mut error = try_program(hook.program, hook.needs)?;
            for fb in hook.fallbacks {
                let Some(e) = &error else { break };
                // The floor has no older forms: its empty programs load on every kernel.
                if !set_offsets && !in_object.contains(fb.program) {
                    break;
                }
                match try_program(fb.program, fb.needs)? {
                    None => {
                        log::debug!("{}: {e}; loaded {} instead", hook.attach, fb.why);
                        fallback = Some(*fb);
                        error = None;
                    }
                    Some(e2) => error = Some(format!("{e}; {}: {e2}", fb.why)),
                }
            }
            if let Some(e) = &error
                && SOCKET_USE_HOOKS.contains(&hook.program)
            {
                // Not on kernels before 6.4; the report's note says what that changes.
                log::debug!("{} unavailable ({})", hook.attach, without_verifier_log(e));
            } else if let Some(e) = &error {
                let names: Vec<&str> = hook.metrics.iter().map(|m| m.name()).collect();
                // The verifier's log is for `doctor` and -v: a run says why in one line.
                log::warn!(
                    "{} unavailable ({}); not measured: {}",
                    hook.attach,
                    without_verifier_log(e),
                    if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    }
                );
                log::debug!("{}: {e}", hook.attach);
            }
            status.push(HookStatus {
                hook: *hook,
                error,
                fallback,
            });
        }
        let optional_missing: Vec<(Metric, String)> = OPTIONAL
            .iter()
            .filter_map(|(metric, globals)| {
                let missing: Vec<&str> =
                    globals.iter().filter_map(|g| offsets.missing(g)).collect();
                (set_offsets && !missing.is_empty()).then(|| (*metric, missing.join("; ")))
            })
            .collect();
        for (metric, why) in &optional_missing {
            log::warn!("{} unavailable: {why}", metric.name());
        }
        Ok(Self {
            meter: None,
            ebpf,
            status,
            optional_missing,
            runq_from_sched_info,
            stats_seen: std::sync::Mutex::default(),
        })
    }

    /// Attach status of every hook.
    pub fn status(&self) -> &[HookStatus] {
        &self.status
    }

    /// Whether run-queue latency comes from the kernel's `sched_info` (the wakeup hooks are then
    /// not attached), rather than timed from wakeups.
    pub fn runq_from_sched_info(&self) -> bool {
        self.runq_from_sched_info
    }

    /// What the probes cost the cgroups that `counted` describes: their events of each hook
    /// times its cost per event as measured so far (see `kernel::cost`).
    pub fn cost_of(&self, counted: &Counted) -> ProbesCost {
        ProbesCost::of(counted, &self.calibration(), &self.attached_hooks())
    }

    /// The attached hooks (`tp_btf/sched_switch`, ...).
    fn attached_hooks(&self) -> Vec<String> {
        self.status
            .iter()
            .filter(|s| s.error.is_none())
            .map(|s| s.hook.attach.to_string())
            .collect()
    }

    /// What the programs cost per event on this host, as measured so far.
    fn calibration(&self) -> Calibration {
        self.meter.as_ref().map_or_else(
            || Calibration {
                unavailable: Some("the probes' costs are not measured for the floor".into()),
                ..Calibration::default()
            },
            CostMeter::calibration,
        )
    }

    /// Kernel ids of the attached programs, with their hooks (for `bpftool prog show id N`).
    pub fn program_ids(&self) -> Vec<(&'static str, String, u32)> {
        self.status
            .iter()
            .filter(|s| s.error.is_none())
            .filter_map(|s| {
                let info = self.ebpf.program(s.program())?.info().ok()?;
                Some((s.program(), s.hook.attach.to_string(), info.id()))
            })
            .collect()
    }

    /// Metrics some hook of which could not be attached, or whose offsets this kernel lacks.
    pub fn unavailable(&self) -> BTreeSet<AnyMetric> {
        self.status
            .iter()
            .filter(|s| s.error.is_some())
            .flat_map(|s| s.hook.metrics.iter().copied())
            .chain(
                self.optional_missing
                    .iter()
                    .map(|(m, _)| AnyMetric::Value(*m)),
            )
            .collect()
    }

    /// Starts sampling the stacks of watched runs' tasks: on every CPU `rates.frequency_hz`
    /// times a second (hardware cycles where there is a PMU, else the cpu-clock), at their
    /// voluntary switches (off CPU), and once per period of their page faults and block bytes.
    /// Hands over the buffer the samples arrive in. The samples stop when the probes are
    /// dropped. Only the CPU's sampling is required: a kernel that refuses the others says why
    /// in [`ProfileSource::unavailable`].
    pub fn start_profiling(&mut self, rates: SamplingRates) -> Result<ProfileSource, ProbeError> {
        use aya::programs::{
            PerfEvent,
            perf_event::{
                HardwareEvent, PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent,
            },
        };
        let cpus = aya::util::online_cpus()
            .map_err(|(_, e)| ProbeError::Missing(format!("the online CPUs: {e}")))?;
        // The others first: once the sampling program is loaded, everything is.
        self.set_sampling_periods(rates)?;
        let unavailable = self.attach_other_profiles()?;
        let program: &mut PerfEvent = self
            .ebpf
            .program_mut(programs::PROFILE_CPU)
            .ok_or_else(|| ProbeError::Missing(format!("program {}", programs::PROFILE_CPU)))?
            .try_into()
            .map_err(|_| {
                ProbeError::Missing(format!("perf_event program {}", programs::PROFILE_CPU))
            })?;
        program
            .load()
            .map_err(|e| ProbeError::Profiling(error_chain(&e)))?;
        let clocks = [
            (
                PerfEventConfig::Hardware(HardwareEvent::CpuCycles),
                "cycles",
            ),
            (
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                "cpu-clock",
            ),
        ];
        let mut last_error = String::new();
        let mut sampling = None;
        'clock: for (config, clock) in clocks {
            let mut links = Vec::new();
            for &cpu in &cpus {
                match program.attach(
                    config,
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Frequency(rates.frequency_hz),
                    false,
                ) {
                    Ok(link) => links.push(link),
                    Err(e) => {
                        last_error = format!("{clock}: {}", error_chain(&e));
                        for link in links {
                            let _ = program.detach(link);
                        }
                        continue 'clock;
                    }
                }
            }
            sampling = Some(clock);
            break;
        }
        let Some(clock) = sampling else {
            return Err(ProbeError::Profiling(last_error));
        };
        let ring = self
            .ebpf
            .take_map(maps::STACK_SAMPLES)
            .ok_or_else(|| ProbeError::Missing(format!("map {}", maps::STACK_SAMPLES)))?;
        let ring = RingBuf::try_from(ring).map_err(map_err(maps::STACK_SAMPLES))?;
        Ok(ProfileSource {
            ring,
            clock,
            cpus: cpus.len(),
            unavailable,
        })
    }

    /// Tells the kernel programs the fault and block sampling periods and the user stack bytes
    /// to copy.
    fn set_sampling_periods(&mut self, rates: SamplingRates) -> Result<(), ProbeError> {
        let mut periods: Array<&mut MapData, u64> =
            Array::try_from(self.map_mut(maps::PROFILE_PERIODS)?)
                .map_err(map_err(maps::PROFILE_PERIODS))?;
        for (slot, period) in [
            (profile_period::FAULTS, rates.fault_period),
            (profile_period::BLOCK_BYTES, rates.block_period_bytes),
            (profile_period::STACK_BYTES, rates.stack_bytes),
        ] {
            periods
                .set(slot, period, 0)
                .map_err(map_err(maps::PROFILE_PERIODS))?;
        }
        Ok(())
    }

    /// Attaches the off-CPU, fault and block samplers; gives the kinds this kernel refused,
    /// with why.
    fn attach_other_profiles(&mut self) -> Result<Vec<(u32, String)>, ProbeError> {
        let btf = Btf::from_sys_fs()?;
        let mut unavailable = Vec::new();
        for (kind, tracepoint, forms) in OTHER_PROFILES {
            let mut errors = Vec::new();
            for program in *forms {
                match attach(
                    &mut self.ebpf,
                    program,
                    Attach::TpBtf(tracepoint),
                    &btf,
                    None,
                )? {
                    None => {
                        errors.clear();
                        break;
                    }
                    Some(e) => {
                        log::debug!("{program}: {e}");
                        errors.push(format!("{program}: {}", without_verifier_log(&e)));
                    }
                }
            }
            if !errors.is_empty() {
                unavailable.push((*kind, format!("tp_btf/{tracepoint}: {}", errors.join("; "))));
            }
        }
        Ok(unavailable)
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, ProbeError> {
        self.ebpf
            .map(name)
            .ok_or_else(|| ProbeError::Missing(format!("map {name}")))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, ProbeError> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| ProbeError::Missing(format!("map {name}")))
    }

    /// `root` and every cgroup below it that the kernel saw made or removed while loaded, so
    /// sub-cgroups a command removed itself still count.
    pub fn descendants(&self, root: u64) -> Result<BTreeSet<u64>, ProbeError> {
        Ok(self.subtrees(&[root])?.pop().unwrap_or_default())
    }

    /// [`Probes::descendants`] of each of `roots`, in one pass over the kernel's record.
    pub fn subtrees(&self, roots: &[u64]) -> Result<Vec<BTreeSet<u64>>, ProbeError> {
        let nodes = self.tree()?;
        Ok(tally::subtrees(
            nodes.iter().map(|(id, node)| (*id, node.parent_id)),
            roots,
        ))
    }

    /// The kernel's record of cgroups made or removed while the probes are loaded: each id with
    /// its parent and whether it is gone.
    pub fn tree(&self) -> Result<Vec<(u64, CgroupNode)>, ProbeError> {
        let tree: HashMap<&MapData, u64, CgroupNode> =
            HashMap::try_from(self.map(maps::CGROUP_TREE)?).map_err(map_err(maps::CGROUP_TREE))?;
        tree.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(maps::CGROUP_TREE))
    }

    /// How many entries each map keyed by cgroup holds now (cgroup counters, block counters,
    /// histograms, the record of made cgroups): what freeing gone cgroups keeps flat.
    pub fn map_entries(&self) -> Result<BTreeMap<&'static str, usize>, ProbeError> {
        fn keys<K: aya::Pod, V: aya::Pod>(
            map: &aya::maps::Map,
            name: &'static str,
            per_cpu: bool,
        ) -> Result<usize, ProbeError> {
            Ok(if per_cpu {
                PerCpuHashMap::<&MapData, K, V>::try_from(map)
                    .map_err(map_err(name))?
                    .keys()
                    .count()
            } else {
                HashMap::<&MapData, K, V>::try_from(map)
                    .map_err(map_err(name))?
                    .keys()
                    .count()
            })
        }
        let mut counts = BTreeMap::new();
        let stats =
            keys::<u64, CgroupStats>(self.map(maps::CGROUP_STATS)?, maps::CGROUP_STATS, true)?;
        counts.insert(maps::CGROUP_STATS, stats);
        let block =
            keys::<BlockKey, BlockStats>(self.map(maps::BLOCK_STATS)?, maps::BLOCK_STATS, true)?;
        counts.insert(maps::BLOCK_STATS, block);
        let hists =
            keys::<HistKey, Histogram>(self.map(maps::HISTOGRAMS)?, maps::HISTOGRAMS, false)?;
        counts.insert(maps::HISTOGRAMS, hists);
        let tree = keys::<u64, CgroupNode>(self.map(maps::CGROUP_TREE)?, maps::CGROUP_TREE, false)?;
        counts.insert(maps::CGROUP_TREE, tree);
        Ok(counts)
    }

    /// Everything counted for `ids`, summed over CPUs and cgroups. A cgroup the programs have
    /// not seen counts as zero (it had no event).
    pub fn counted(&self, ids: &BTreeSet<u64>) -> Result<Counted, ProbeError> {
        Ok(self
            .count(std::slice::from_ref(ids), true)?
            .pop()
            .unwrap_or_default())
    }

    /// The counters only, without the latency histograms: what each interval sample needs.
    pub fn counters(&self, ids: &BTreeSet<u64>) -> Result<Counted, ProbeError> {
        Ok(self
            .count(std::slice::from_ref(ids), false)?
            .pop()
            .unwrap_or_default())
    }

    /// What was counted for each of `groups` (sets of cgroup ids), in one pass over each map
    /// however many groups there are; the latency histograms only when `histograms`.
    pub fn count(
        &self,
        groups: &[BTreeSet<u64>],
        histograms: bool,
    ) -> Result<Vec<Counted>, ProbeError> {
        let mut tally = Tally::new(groups);
        // Looked up by id: the map holds every cgroup that had an event, most not asked for.
        // Read before and after the CPUs' pending copies (see `kernel::pending`).
        let ids: Vec<u64> = tally.cgroups().collect();
        let before = self.entries(&ids)?;
        if histograms {
            let hist_map: HashMap<&MapData, HistKey, Histogram> =
                HashMap::try_from(self.map(maps::HISTOGRAMS)?)
                    .map_err(map_err(maps::HISTOGRAMS))?;
            for entry in hist_map.iter() {
                let (key, h) = entry.map_err(map_err(maps::HISTOGRAMS))?;
                tally.add_histogram(key, &h);
            }
            // Block latencies each CPU has not added to their histogram yet, read after it
            // (as the run-queue waits below): a CPU that adds them in between has them in
            // neither read, so a histogram can fall short (never over) until the next read.
            for set in self.every_cpus::<LatencySet>(maps::LATENCY_PENDING)? {
                for p in set.ways.iter().filter(|p| p.key.cgroup_id != 0) {
                    if let Some(h) = p.latencies.histogram() {
                        tally.add_histogram(p.key, &h);
                    }
                }
            }
        }
        let pending = self.cpu_pending()?;
        if histograms {
            for set in pending.iter().map(|p| &p.stats) {
                for p in &set.ways {
                    if !tally.has(p.cgroup_id) {
                        continue;
                    }
                    if let Some(waits) = p.waits.histogram() {
                        let key = HistKey {
                            cgroup_id: p.cgroup_id,
                            kind: hist_kind::RUNQUEUE,
                            dev: 0,
                        };
                        tally.add_histogram(key, &waits);
                    }
                }
            }
        }
        let after = self.entries(&ids)?;
        let mut per_id: BTreeMap<u64, CgroupStats> = BTreeMap::new();
        for id in ids {
            let (b, a) = (before.get(&id), after.get(&id));
            let held = pending.iter().any(|p| p.holds(id));
            if b.is_none() && a.is_none() && !held {
                continue;
            }
            let zero = CgroupStats::default();
            let on = |values: Option<&Vec<CgroupStats>>, cpu: usize| {
                values.and_then(|v| v.get(cpu)).copied().unwrap_or(zero)
            };
            let stats = pending.iter().enumerate().fold(zero, |sum, (cpu, p)| {
                sum.wrapping_add(pending::on_cpu(id, &on(b, cpu), p, &on(a, cpu)))
            });
            per_id.insert(id, stats);
        }
        let mut seen = self.stats_seen.lock().unwrap_or_else(|e| e.into_inner());
        for (id, stats) in per_id {
            let last = seen.entry(id).or_default();
            *last = stats.at_least(*last);
            tally.add_stats(id, *last);
        }
        drop(seen);

        let block_map: PerCpuHashMap<&MapData, BlockKey, BlockStats> =
            PerCpuHashMap::try_from(self.map(maps::BLOCK_STATS)?)
                .map_err(map_err(maps::BLOCK_STATS))?;
        for entry in block_map.iter() {
            let (key, per_cpu) = entry.map_err(map_err(maps::BLOCK_STATS))?;
            let sum = per_cpu
                .iter()
                .fold(BlockStats::default(), |acc, v| acc.wrapping_add(*v));
            tally.add_block(key, sum);
        }
        // Block counters each CPU has not added to their entries yet, read after them: a CPU
        // that adds them in between has them in neither read, so a read can fall short (never
        // over) until the next one.
        for set in self.every_cpus::<BlockPending>(maps::BLOCK_PENDING)? {
            for way in set.ways.iter().filter(|w| w.key.cgroup_id != 0) {
                tally.add_block(way.key, way.stats);
            }
        }
        Ok(tally.finish())
    }

    /// Each of `ids`' entry in `CGROUP_STATS`, one value per CPU; none for a cgroup without one.
    fn entries(&self, ids: &[u64]) -> Result<BTreeMap<u64, Vec<CgroupStats>>, ProbeError> {
        let map: PerCpuHashMap<&MapData, u64, CgroupStats> =
            PerCpuHashMap::try_from(self.map(maps::CGROUP_STATS)?)
                .map_err(map_err(maps::CGROUP_STATS))?;
        let mut entries = BTreeMap::new();
        for id in ids {
            match map.get(id, 0) {
                Ok(per_cpu) => {
                    entries.insert(*id, per_cpu.iter().copied().collect());
                }
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(maps::CGROUP_STATS)(e)),
            }
        }
        Ok(entries)
    }

    /// Every CPU's pending copies of cgroup counters, in the order of the per-CPU values.
    fn cpu_pending(&self) -> Result<Vec<CpuPending>, ProbeError> {
        let stats = self.every_cpus::<PendingSet>(maps::PENDING_STATS)?;
        let net = self.every_cpus::<NetPending>(maps::NET_PENDING)?;
        let forks = self.every_cpus::<ForkPending>(maps::FORK_PENDING)?;
        let exits = self.every_cpus::<ExitPending>(maps::EXIT_PENDING)?;
        Ok(stats
            .into_iter()
            .zip(net)
            .zip(forks)
            .zip(exits)
            .map(|(((stats, net), forks), exits)| CpuPending {
                stats,
                net,
                forks,
                exits,
            })
            .collect())
    }

    /// Every CPU's value of the one-element per-CPU array `name` (the pending copies).
    fn every_cpus<T: aya::Pod>(&self, name: &'static str) -> Result<Vec<T>, ProbeError> {
        let map: PerCpuArray<&MapData, T> =
            PerCpuArray::try_from(self.map(name)?).map_err(map_err(name))?;
        Ok(map
            .get(&0, 0)
            .map_err(map_err(name))?
            .iter()
            .copied()
            .collect())
    }

    /// Removes every trace of `ids` from the maps, so the bounded maps do not fill up with
    /// cgroups that are gone.
    pub fn forget(&mut self, ids: &BTreeSet<u64>) -> Result<(), ProbeError> {
        {
            let mut seen = self.stats_seen.lock().unwrap_or_else(|e| e.into_inner());
            for id in ids {
                seen.remove(id);
            }
        }
        let mut stats: PerCpuHashMap<&mut MapData, u64, CgroupStats> =
            PerCpuHashMap::try_from(self.map_mut(maps::CGROUP_STATS)?)
                .map_err(map_err(maps::CGROUP_STATS))?;
        for id in ids {
            ok_if_absent(stats.remove(id), maps::CGROUP_STATS)?;
        }
        let mut tree: HashMap<&mut MapData, u64, CgroupNode> =
            HashMap::try_from(self.map_mut(maps::CGROUP_TREE)?)
                .map_err(map_err(maps::CGROUP_TREE))?;
        for id in ids {
            ok_if_absent(tree.remove(id), maps::CGROUP_TREE)?;
        }
        let mut hists: HashMap<&mut MapData, HistKey, Histogram> =
            HashMap::try_from(self.map_mut(maps::HISTOGRAMS)?)
                .map_err(map_err(maps::HISTOGRAMS))?;
        let doomed: Vec<HistKey> = hists
            .keys()
            .filter_map(Result::ok)
            .filter(|k| ids.contains(&k.cgroup_id))
            .collect();
        for key in doomed {
            ok_if_absent(hists.remove(&key), maps::HISTOGRAMS)?;
        }
        let mut block: PerCpuHashMap<&mut MapData, BlockKey, BlockStats> =
            PerCpuHashMap::try_from(self.map_mut(maps::BLOCK_STATS)?)
                .map_err(map_err(maps::BLOCK_STATS))?;
        let doomed: Vec<BlockKey> = block
            .keys()
            .filter_map(Result::ok)
            .filter(|k| ids.contains(&k.cgroup_id))
            .collect();
        for key in doomed {
            ok_if_absent(block.remove(&key), maps::BLOCK_STATS)?;
        }
        Ok(())
    }

    /// Starts watching run cgroup `cgroup_id` (its id is the run id): from now on, a process
    /// that joins it, or is forked in it or in a sub-cgroup made in it, belongs to the run, and
    /// its leaving is recorded (see [`Probes::escapes`]). Call it before the command starts.
    pub fn watch_run(&mut self, cgroup_id: u64) -> Result<(), ProbeError> {
        self.watch_in_run(cgroup_id, cgroup_id)
    }

    /// Counts cgroup `cgroup_id` (made elsewhere: a container the run started) as one of run
    /// `run_id`'s from now on: its processes' records and connections are the run's. Its
    /// sub-cgroups made from now on are the run's too. When profiling, its tasks are sampled
    /// for the run's profile.
    pub fn watch_in_run(&mut self, cgroup_id: u64, run_id: u64) -> Result<(), ProbeError> {
        let mut watched: HashMap<&mut MapData, u64, u64> =
            HashMap::try_from(self.map_mut(maps::WATCHED)?).map_err(map_err(maps::WATCHED))?;
        watched
            .insert(cgroup_id, run_id, 0)
            .map_err(map_err(maps::WATCHED))?;
        self.bump_watch_generation()?;
        self.profile_cgroups(run_id, &[cgroup_id])
    }

    /// Samples the tasks of `cgroups` (and of the sub-cgroups made in them from now on) for
    /// profile `profile_id` (a run id, or a cgroup id the agent watches), when profiling
    /// ([`Probes::start_profiling`]); nothing else about them is tracked.
    pub fn profile_cgroups(&mut self, profile_id: u64, cgroups: &[u64]) -> Result<(), ProbeError> {
        let mut profiled: HashMap<&mut MapData, u64, u64> =
            HashMap::try_from(self.map_mut(maps::PROFILED)?).map_err(map_err(maps::PROFILED))?;
        for id in cgroups {
            profiled
                .insert(id, profile_id, 0)
                .map_err(map_err(maps::PROFILED))?;
        }
        Ok(())
    }

    /// Stops sampling the cgroups of profile `profile_id`.
    pub fn unprofile(&mut self, profile_id: u64) -> Result<(), ProbeError> {
        self.remove_cgroups_of(maps::PROFILED, profile_id)
    }

    /// Removes from `map` (cgroup id → owner id: [`maps::WATCHED`], [`maps::PROFILED`]) every
    /// cgroup of `owner`.
    fn remove_cgroups_of(&mut self, map: &'static str, owner: u64) -> Result<(), ProbeError> {
        let mut cgroups: HashMap<&mut MapData, u64, u64> =
            HashMap::try_from(self.map_mut(map)?).map_err(map_err(map))?;
        let doomed: Vec<u64> = cgroups
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, o)| *o == owner)
            .map(|(id, _)| id)
            .collect();
        for id in doomed {
            ok_if_absent(cgroups.remove(&id), map)?;
        }
        if map == maps::WATCHED {
            self.bump_watch_generation()?;
        }
        Ok(())
    }

    /// Tells the programs' copies of [`maps::WATCHED`] lookups that the agent changed it (after
    /// the change: a program that sees the new count sees the new map). Only the agent writes
    /// its element, so a read and a write cannot lose a count.
    fn bump_watch_generation(&mut self) -> Result<(), ProbeError> {
        let mut generation: Array<&mut MapData, u64> =
            Array::try_from(self.map_mut(maps::WATCH_GENERATION)?)
                .map_err(map_err(maps::WATCH_GENERATION))?;
        let now = generation
            .get(&0, 0)
            .map_err(map_err(maps::WATCH_GENERATION))?;
        generation
            .set(0, now.wrapping_add(1), 0)
            .map_err(map_err(maps::WATCH_GENERATION))
    }

    /// `hook: why` for each of `programs`' hooks that is not attached.
    fn hook_errors<'a>(&'a self, programs: &'a [&str]) -> impl Iterator<Item = String> + 'a {
        self.status
            .iter()
            .filter(|s| programs.contains(&s.hook.program))
            .filter_map(|s| Some(format!("{}: {}", s.hook.attach, s.error.as_ref()?)))
    }

    /// Why processes leaving a run's cgroups cannot be seen here (a hook they need is not
    /// attached), or `None` when they can.
    pub fn escapes_unavailable(&self) -> Option<String> {
        joined(self.hook_errors(ESCAPE_HOOKS))
    }

    /// The processes that left run `run_id`'s cgroups so far (each once, the first time it
    /// left), taken out of the map.
    pub fn escapes(&mut self, run_id: u64) -> Result<Vec<Escape>, ProbeError> {
        let mut map: HashMap<&mut MapData, u32, cleanroom_common::Escape> =
            HashMap::try_from(self.map_mut(maps::ESCAPES)?).map_err(map_err(maps::ESCAPES))?;
        let mut found = Vec::new();
        for entry in map.iter() {
            let (tgid, raw) = entry.map_err(map_err(maps::ESCAPES))?;
            if raw.run_id == run_id {
                found.push((tgid, raw));
            }
        }
        for (tgid, _) in &found {
            ok_if_absent(map.remove(tgid), maps::ESCAPES)?;
        }
        let mut escapes: Vec<Escape> = found
            .iter()
            .map(|(_, raw)| Escape::from_wire(raw))
            .collect();
        escapes.sort_by_key(|e| e.pid);
        Ok(escapes)
    }

    /// Stops watching run `run_id`: forgets its cgroups and processes. Escapes not yet read
    /// stay readable.
    pub fn unwatch_run(&mut self, run_id: u64) -> Result<(), ProbeError> {
        self.remove_cgroups_of(maps::WATCHED, run_id)?;
        let mut procs: HashMap<&mut MapData, u32, RunProc> =
            HashMap::try_from(self.map_mut(maps::RUN_PROCS)?).map_err(map_err(maps::RUN_PROCS))?;
        let doomed: Vec<u32> = procs
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, p)| p.run_id == run_id)
            .map(|(tgid, _)| tgid)
            .collect();
        for tgid in doomed {
            ok_if_absent(procs.remove(&tgid), maps::RUN_PROCS)?;
        }
        self.unprofile(run_id)
    }

    /// Why each process of a run cannot be recorded here (a hook it needs is not attached), or
    /// `None` when it can.
    pub fn processes_unavailable(&self) -> Option<String> {
        joined(
            self.hook_errors(PROCESS_HOOKS)
                .chain(self.escapes_unavailable()),
        )
    }

    /// Why processes' network traffic cannot be told apart here, if it cannot.
    pub fn process_net_unavailable(&self) -> Option<String> {
        joined(self.hook_errors(SOCKET_OWNER_HOOKS))
    }

    /// What processes' network traffic misses here, if the kernel lacks the tracepoints that
    /// name a socket's process at each send and receive.
    pub fn process_net_partial(&self) -> Option<String> {
        self.status
            .iter()
            .find(|s| SOCKET_USE_HOOKS.contains(&s.hook.program) && s.error.is_some())
            .map(|s| {
                format!(
                    "{} is not available on this kernel (6.4 on): a socket is the process's that \
                     connected, listened or closed it, so an accepted connection's traffic is \
                     its closer's and an unconnected UDP socket's is no process's",
                    s.hook.attach
                )
            })
    }

    /// Why processes' command lines cannot be taken here, if they cannot.
    pub fn command_lines_unavailable(&self) -> Option<String> {
        self.status
            .iter()
            .find(|s| s.hook.program == programs::SCHED_PROCESS_EXEC)
            .and_then(|s| Some(format!("{}: {}", s.hook.attach, s.error.as_ref()?)))
    }

    /// The records of run `run_id`'s processes that ended since the last call, taken out of the
    /// kernel's ring buffer (another run's are dropped: each run loads its own probes).
    pub fn process_exits(&mut self, run_id: u64) -> Result<Vec<ProcessExit>, ProbeError> {
        let mut ring = RingBuf::try_from(self.map_mut(maps::PROCESS_RECORDS)?)
            .map_err(map_err(maps::PROCESS_RECORDS))?;
        let mut found = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<ProcessExit>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole `ProcessExit` (repr(C), every bit pattern
            // valid); read unaligned from the ring's bytes.
            let record = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ProcessExit>()) };
            if record.run_id == run_id {
                found.push(record);
            }
        }
        Ok(found)
    }

    /// Run `run_id`'s traffic by remote endpoint, so far.
    pub fn connections(&self, run_id: u64) -> Result<Vec<(ConnKey, ConnStats)>, ProbeError> {
        let map: HashMap<&MapData, ConnKey, ConnStats> =
            HashMap::try_from(self.map(maps::CONNECTIONS)?).map_err(map_err(maps::CONNECTIONS))?;
        let mut found = Vec::new();
        for entry in map.iter() {
            // An entry removed between listing and reading is skipped, not fatal.
            let Ok((key, stats)) = entry else { continue };
            if key.run_id == run_id {
                found.push((key, stats));
            }
        }
        Ok(found)
    }

    /// When a TCP socket of any of `ids` first listened, ns since boot (CLOCK_MONOTONIC);
    /// `None` if none did.
    pub fn first_listen(&self, ids: &BTreeSet<u64>) -> Result<Option<u64>, ProbeError> {
        // aya reads an LRU hash as a hash.
        let map: HashMap<&MapData, u64, u64> = HashMap::try_from(self.map(maps::FIRST_LISTEN)?)
            .map_err(map_err(maps::FIRST_LISTEN))?;
        let mut first: Option<u64> = None;
        for id in ids {
            match map.get(id, 0) {
                Ok(t) => first = Some(first.map_or(t, |f| f.min(t))),
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(maps::FIRST_LISTEN)(e)),
            }
        }
        Ok(first)
    }

    /// Why traffic cannot be told apart by endpoint here, if it cannot.
    pub fn connections_unavailable(&self) -> Option<String> {
        let reasons: Vec<String> = self
            .status
            .iter()
            .filter(|s| {
                [programs::CGROUP_SKB_INGRESS, programs::CGROUP_SKB_EGRESS]
                    .contains(&s.hook.program)
            })
            .filter_map(|s| Some(format!("{}: {}", s.hook.attach, s.error.as_ref()?)))
            .collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Events lost so far, summed over CPUs.
    pub fn drops(&self) -> Result<Drops, ProbeError> {
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map(maps::DROPS)?).map_err(map_err(maps::DROPS))?;
        DROP_NAMES
            .iter()
            .map(|(reason, name)| {
                array
                    .get(reason, 0)
                    .map(|v| (*name, v.iter().copied().fold(0u64, u64::wrapping_add)))
                    .map_err(map_err(maps::DROPS))
            })
            .collect()
    }
}

/// Loads and attaches one program. `Ok(Some(reason))` when the kernel refused it (the hook is
/// then unavailable); `Err` when the object itself is out of step with this agent.
fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    at: Attach,
    btf: &Btf,
    v2_root: Option<&File>,
) -> Result<Option<String>, ProbeError> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| ProbeError::Missing(format!("program {name}")))?;
    let result = match at {
        Attach::TpBtf(tracepoint) => {
            let p: &mut BtfTracePoint = program
                .try_into()
                .map_err(|_| ProbeError::Missing(format!("tp_btf program {name}")))?;
            p.load(tracepoint, btf).and_then(|()| p.attach().map(drop))
        }
        Attach::CgroupSkb(direction) => {
            let Some(root) = v2_root else {
                return Ok(Some("no cgroup v2 root to attach to".into()));
            };
            let p: &mut CgroupSkb = program
                .try_into()
                .map_err(|_| ProbeError::Missing(format!("cgroup_skb program {name}")))?;
            // aya attaches through a bpf_link here (5.7+); links always coexist with other
            // programs on the cgroup (multi mode) and the kernel rejects BPF_F_ALLOW_MULTI on
            // them, so `Single` (no flag) is what keeps us from displacing anyone.
            p.load().and_then(|()| {
                p.attach(root, direction, CgroupAttachMode::Single)
                    .map(drop)
            })
        }
    };
    Ok(result.err().map(|e| error_chain(&e)))
}

/// An attach error without the verifier's log that aya appends to it.
pub fn without_verifier_log(error: &str) -> &str {
    error
        .split_once(". Verifier output")
        .map_or(error, |(reason, _)| reason)
}

/// How many of the verifier's last lines an attach error keeps (the refusal is at the end; the
/// whole log, thousands of lines, is logged at debug level: `-v`).
const VERIFIER_LOG_TAIL: usize = 12;

/// An attach error with only the last `lines` lines of the verifier's log that aya appends.
pub fn verifier_log_tail(error: &str, lines: usize) -> String {
    let Some((reason, log)) = error.split_once(". Verifier output:") else {
        return error.to_owned();
    };
    let all: Vec<&str> = log.trim().lines().collect();
    if all.len() <= lines {
        return error.to_owned();
    }
    format!(
        "{reason}. Verifier output (the last {lines} of {} lines; -v shows all):\n{}",
        all.len(),
        all[all.len() - lines..].join("\n")
    )
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_logs_keep_their_reason_and_last_lines() {
        let log: Vec<String> = (0..100).map(|i| format!("{i}: insn")).collect();
        let error = format!(
            "load failed: Permission denied. Verifier output: {}",
            log.join("\n")
        );
        let short = verifier_log_tail(&error, 3);
        assert!(
            short.starts_with("load failed: Permission denied. Verifier output (the last 3 of 100")
        );
        assert!(short.ends_with("97: insn\n98: insn\n99: insn"), "{short}");
        assert!(!short.contains("96: insn"));
        assert_eq!(
            without_verifier_log(&short),
            "load failed: Permission denied"
        );
        assert_eq!(verifier_log_tail("no log here", 3), "no log here");
    }

    fn wire(pid: u32, tgid: u32, comm: &[u8], via: u32) -> cleanroom_common::Escape {
        let mut raw = cleanroom_common::Escape {
            run_id: 7,
            to_cgroup_id: 1,
            pid,
            tgid,
            via,
            ..Default::default()
        };
        raw.comm[..comm.len()].copy_from_slice(comm);
        raw
    }

    #[test]
    fn escapes_read_from_the_kernel_name_process_thread_and_how() {
        let e = Escape::from_wire(&wire(12, 12, b"sh", escape_via::MOVED));
        assert_eq!(
            e,
            Escape {
                pid: 12,
                thread: None,
                comm: "sh".into(),
                to_cgroup_id: 1,
                forked_into: false,
            }
        );
        // A thread alone; a name of the full 16 bytes has no terminating NUL.
        let e = Escape::from_wire(&wire(13, 12, b"0123456789abcdef", escape_via::FORKED_INTO));
        assert_eq!(e.pid, 12);
        assert_eq!(e.thread, Some(13));
        assert_eq!(e.comm, "0123456789abcdef");
        assert!(e.forked_into);
    }

    #[test]
    fn every_drop_reason_has_a_distinct_name() {
        let reasons: BTreeSet<u32> = DROP_NAMES.iter().map(|(r, _)| *r).collect();
        let names: BTreeSet<&str> = DROP_NAMES.iter().map(|(_, n)| *n).collect();
        assert_eq!(reasons, (0..drop_reason::COUNT).collect());
        assert_eq!(names.len(), DROP_NAMES.len());
    }

    #[test]
    fn escapes_need_hooks_that_exist() {
        for program in ESCAPE_HOOKS {
            assert!(
                HOOKS.iter().any(|h| h.program == *program),
                "{program} is not a hook"
            );
        }
    }
}
