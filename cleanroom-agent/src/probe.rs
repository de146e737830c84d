//! Loading the embedded BPF object, attaching its programs and reading its maps.
//!
//! The only module that touches aya. It knows hooks and cgroup ids, nothing of paths, SLOs or
//! reports. A program whose hook the kernel lacks is left detached: its metrics are reported as
//! unavailable by [`Probes::unavailable`], never as zero.

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, MapError, PerCpuArray, PerCpuHashMap},
    programs::BtfTracePoint,
};
use cleanroom_common::{CgroupStats, drop_reason, globals, maps, programs};

use crate::{
    btf::{BtfError, Offsets, VMLINUX_BTF},
    metric::Metric,
};

/// The object `cargo xtask build` made, embedded by `build.rs` (empty if there was none).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cleanroom.bpf.o"));

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
    /// A map could not be read.
    #[error("reading map {map}: {source}")]
    Map {
        /// Which map.
        map: &'static str,
        /// Why.
        source: MapError,
    },
}

/// A kernel hook, the program on it, and the metrics it provides.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// Program name in the object.
    pub program: &'static str,
    /// BTF tracepoint it attaches to.
    pub tracepoint: &'static str,
    /// Metrics that are unavailable without it.
    pub metrics: &'static [Metric],
}

/// Every hook, in attach order.
pub const HOOKS: &[Hook] = &[
    Hook {
        program: programs::SCHED_STAT_RUNTIME,
        tracepoint: "sched_stat_runtime",
        metrics: &[Metric::CpuTime],
    },
    Hook {
        program: programs::SCHED_SWITCH,
        tracepoint: "sched_switch",
        metrics: &[
            Metric::ContextSwitchesVoluntary,
            Metric::ContextSwitchesInvoluntary,
        ],
    },
];

/// Whether a hook could be attached.
#[derive(Clone, Debug)]
pub struct HookStatus {
    /// The hook.
    pub hook: Hook,
    /// `None` when attached; the kernel's refusal otherwise.
    pub error: Option<String>,
}

/// Events the kernel programs could not count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Drops {
    /// Events of a new cgroup lost because the stats map was full.
    pub stats_map_full: u64,
    /// Events lost because a kernel structure could not be read.
    pub read_failed: u64,
}

/// The loaded object with its programs attached. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    status: Vec<HookStatus>,
}

impl Probes {
    /// Whether this binary carries a BPF object at all.
    pub fn object_embedded() -> bool {
        !OBJECT.is_empty()
    }

    /// Loads the object with offsets of the running kernel and attaches every hook it can.
    pub fn load() -> Result<Self, ProbeError> {
        if !Self::object_embedded() {
            return Err(ProbeError::NoObject);
        }
        let offsets = Offsets::from_file(VMLINUX_BTF.as_ref())?;
        let btf = Btf::from_sys_fs()?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global(globals::OFF_TASK_CGROUPS, &offsets.task_cgroups, true)
            .override_global(
                globals::OFF_CSS_SET_DFL_CGRP,
                &offsets.css_set_dfl_cgrp,
                true,
            )
            .override_global(globals::OFF_CGROUP_KN, &offsets.cgroup_kn, true)
            .override_global(globals::OFF_KERNFS_NODE_ID, &offsets.kernfs_node_id, true)
            .load(OBJECT)?;
        let mut status = Vec::with_capacity(HOOKS.len());
        for hook in HOOKS {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(hook.program)
                .ok_or_else(|| ProbeError::Missing(format!("program {}", hook.program)))?
                .try_into()
                .map_err(|_| ProbeError::Missing(format!("tp_btf program {}", hook.program)))?;
            let error = program
                .load(hook.tracepoint, &btf)
                .and_then(|()| program.attach().map(drop))
                .err()
                .map(|e| error_chain(&e));
            if let Some(e) = &error {
                log::warn!(
                    "hook {} unavailable ({e}); not measured: {}",
                    hook.tracepoint,
                    hook.metrics
                        .iter()
                        .map(|m| m.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            status.push(HookStatus { hook: *hook, error });
        }
        Ok(Self { ebpf, status })
    }

    /// Attach status of every hook.
    pub fn status(&self) -> &[HookStatus] {
        &self.status
    }

    /// Metrics whose hook could not be attached.
    pub fn unavailable(&self) -> Vec<Metric> {
        self.status
            .iter()
            .filter(|s| s.error.is_some())
            .flat_map(|s| s.hook.metrics.iter().copied())
            .collect()
    }

    fn stats_map(&self) -> Result<PerCpuHashMap<&MapData, u64, CgroupStats>, ProbeError> {
        let map = self
            .ebpf
            .map(maps::CGROUP_STATS)
            .ok_or_else(|| ProbeError::Missing(format!("map {}", maps::CGROUP_STATS)))?;
        PerCpuHashMap::try_from(map).map_err(|source| ProbeError::Map {
            map: maps::CGROUP_STATS,
            source,
        })
    }

    /// Sum over CPUs and over `cgroup_ids` of the kernel counters. A cgroup the programs have
    /// not seen yet counts as zero (it has had no event).
    pub fn totals(&self, cgroup_ids: &[u64]) -> Result<CgroupStats, ProbeError> {
        let map = self.stats_map()?;
        let mut total = CgroupStats::default();
        for id in cgroup_ids {
            match map.get(id, 0) {
                Ok(per_cpu) => total = per_cpu.iter().fold(total, |acc, v| acc.wrapping_add(*v)),
                Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(ProbeError::Map {
                        map: maps::CGROUP_STATS,
                        source,
                    });
                }
            }
        }
        Ok(total)
    }

    /// Removes the counters of cgroups that are gone, so the bounded map does not fill up.
    pub fn forget(&mut self, cgroup_ids: &[u64]) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut(maps::CGROUP_STATS)
            .ok_or_else(|| ProbeError::Missing(format!("map {}", maps::CGROUP_STATS)))?;
        let mut map: PerCpuHashMap<&mut MapData, u64, CgroupStats> =
            PerCpuHashMap::try_from(map).map_err(|source| ProbeError::Map {
                map: maps::CGROUP_STATS,
                source,
            })?;
        for id in cgroup_ids {
            match map.remove(id) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(ProbeError::Map {
                        map: maps::CGROUP_STATS,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Events lost so far, summed over CPUs.
    pub fn drops(&self) -> Result<Drops, ProbeError> {
        let map = self
            .ebpf
            .map(maps::DROPS)
            .ok_or_else(|| ProbeError::Missing(format!("map {}", maps::DROPS)))?;
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| ProbeError::Map {
                map: maps::DROPS,
                source,
            })?;
        let sum = |reason: u32| -> Result<u64, ProbeError> {
            array
                .get(&reason, 0)
                .map(|v| v.iter().copied().fold(0u64, u64::wrapping_add))
                .map_err(|source| ProbeError::Map {
                    map: maps::DROPS,
                    source,
                })
        };
        Ok(Drops {
            stats_map_full: sum(drop_reason::STATS_MAP_FULL)?,
            read_failed: sum(drop_reason::READ_FAILED)?,
        })
    }
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
