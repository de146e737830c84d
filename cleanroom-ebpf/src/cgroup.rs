//! cgroup lifecycle hooks: remember each new v2 cgroup's parent, and mark removed ones, so the
//! agent can add up a run's sub-cgroups that are already gone and then clean them out of the maps.
//! They also keep a watched run's sub-cgroups inside the run (see [`crate::escape`]).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use cleanroom_common::{CgroupNode, drop_reason};

use crate::{
    escape,
    maps::{CGROUP_TREE, count_drop},
    task::{
        OFF_CGROUP_KN, OFF_KERNFS_NODE_ID, OFF_KERNFS_NODE_PARENT, on_default_hierarchy, read,
        read_ptr,
    },
};

/// Records `cgroup` (a `struct cgroup *` of the v2 hierarchy) with its parent; returns both
/// ids.
#[inline(always)]
fn remember(cgroup: *const u8, removed: u64) -> Option<(u64, u64)> {
    if !on_default_hierarchy(cgroup) {
        return None;
    }
    let kn = read_ptr(cgroup, &OFF_CGROUP_KN)?;
    let id = read::<u64>(kn, &OFF_KERNFS_NODE_ID);
    let parent_id =
        read_ptr(kn, &OFF_KERNFS_NODE_PARENT).and_then(|p| read::<u64>(p, &OFF_KERNFS_NODE_ID));
    if let (Some(id), Some(parent_id)) = (id, parent_id) {
        if CGROUP_TREE
            .insert(id, CgroupNode { parent_id, removed }, 0)
            .is_err()
        {
            count_drop(drop_reason::TREE_MAP_FULL);
        }
        return Some((id, parent_id));
    }
    None
}

/// `cgroup_mkdir(struct cgroup *cgrp, const char *path)`.
#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: BtfTracePointContext) -> u32 {
    if let Some((id, parent_id)) = remember(ctx.arg(0), 0) {
        escape::on_mkdir(id, parent_id);
    }
    0
}

/// `cgroup_rmdir(struct cgroup *cgrp, const char *path)`.
#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn cgroup_rmdir(ctx: BtfTracePointContext) -> u32 {
    if let Some((id, _)) = remember(ctx.arg(0), 1) {
        escape::on_rmdir(id);
    }
    0
}
