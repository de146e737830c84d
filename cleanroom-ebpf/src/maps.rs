//! Every map of the object, with its capacity, and the helpers that update them.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{PerCpuArray, PerCpuHashMap},
};
use cleanroom_common::{CgroupStats, MAX_CGROUPS, drop_reason};

/// cgroup v2 id → counters, one copy per CPU. Bounded at [`MAX_CGROUPS`]; a cgroup that finds it
/// full is counted in [`DROPS`] instead.
#[map]
pub static CGROUP_STATS: PerCpuHashMap<u64, CgroupStats> =
    PerCpuHashMap::with_max_entries(MAX_CGROUPS, 0);

/// Events that could not be counted, by [`drop_reason`].
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_reason::COUNT, 0);

/// Counts one lost event under `reason`.
#[inline(always)]
pub fn count_drop(reason: u32) {
    if let Some(slot) = DROPS.get_ptr_mut(reason) {
        // SAFETY: a per-CPU slot, and programs do not nest on one CPU, so nothing else writes it
        // while this program runs.
        unsafe { *slot += 1 };
    }
}

/// This CPU's counters for cgroup `cgroup_id`, creating them at zero on first use.
#[inline(always)]
pub fn stats_of(cgroup_id: u64) -> Option<&'static mut CgroupStats> {
    if let Some(stats) = CGROUP_STATS.get_ptr_mut(cgroup_id) {
        // SAFETY: a per-CPU value, written only by programs running on this CPU, which do not
        // nest; the map element lives as long as the map.
        return Some(unsafe { &mut *stats });
    }
    // Another CPU may insert the same key meanwhile (EEXIST); either way look it up again.
    if CGROUP_STATS
        .insert(cgroup_id, CgroupStats::default(), u64::from(BPF_NOEXIST))
        .is_err()
        && CGROUP_STATS.get_ptr_mut(cgroup_id).is_none()
    {
        count_drop(drop_reason::STATS_MAP_FULL);
        return None;
    }
    // SAFETY: as above.
    CGROUP_STATS
        .get_ptr_mut(cgroup_id)
        .map(|s| unsafe { &mut *s })
}
