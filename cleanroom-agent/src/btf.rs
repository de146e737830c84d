//! Offsets of kernel structures, read from the running kernel's BTF.
//!
//! The kernel programs follow `task->cgroups->dfl_cgrp->kn->id` with `bpf_probe_read_kernel`.
//! Those offsets change between kernel builds, so they are never compiled in: they are resolved
//! here from `/sys/kernel/btf/vmlinux` and handed to the programs as load-time globals.

use std::path::Path;

use btf_rs::{Btf, BtfType as _, Type};

/// Where the running kernel describes its own types.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// A type or member the kernel's BTF did not have.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file could not be read or parsed.
    #[error(
        "cannot read kernel BTF at {path}: {detail} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)"
    )]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },
    /// A struct or member is missing.
    #[error("kernel BTF has no `{0}`; this kernel's layout is not supported")]
    Missing(String),
}

/// Byte offsets the kernel programs need, in the running kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// `task_struct.cgroups`.
    pub task_cgroups: u64,
    /// `css_set.dfl_cgrp`.
    pub css_set_dfl_cgrp: u64,
    /// `cgroup.kn`.
    pub cgroup_kn: u64,
    /// `kernfs_node.id`.
    pub kernfs_node_id: u64,
}

impl Offsets {
    /// Resolves every offset from the BTF file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let btf = Btf::from_file(path).map_err(|e| BtfError::Unreadable {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        Ok(Self {
            task_cgroups: member_offset(&btf, "task_struct", "cgroups")?,
            css_set_dfl_cgrp: member_offset(&btf, "css_set", "dfl_cgrp")?,
            cgroup_kn: member_offset(&btf, "cgroup", "kn")?,
            kernfs_node_id: member_offset(&btf, "kernfs_node", "id")?,
        })
    }
}

/// Byte offset of `member` in `struct name`, looking through anonymous structs and unions.
pub fn member_offset(btf: &Btf, name: &str, member: &str) -> Result<u64, BtfError> {
    let missing = || BtfError::Missing(format!("struct {name}.{member}"));
    let types = btf
        .resolve_types_by_name(name)
        .map_err(|_| BtfError::Missing(format!("struct {name}")))?;
    let st = types
        .iter()
        .find_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| BtfError::Missing(format!("struct {name}")))?;
    find_member(btf, st, member, 0).ok_or_else(missing)
}

fn find_member(btf: &Btf, st: &btf_rs::Struct, wanted: &str, base_bits: u64) -> Option<u64> {
    for m in &st.members {
        let bits = base_bits + u64::from(m.bit_offset());
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == wanted {
            // Pointers and ids are never bitfields; a member that is not byte-aligned is not ours.
            return bits.is_multiple_of(8).then_some(bits / 8);
        }
        if name.is_empty() {
            let inner = m
                .get_type_id()
                .ok()
                .and_then(|id| btf.resolve_type_by_id(id).ok());
            if let Some(Type::Struct(s) | Type::Union(s)) = inner
                && let Some(found) = find_member(btf, &s, wanted, bits)
            {
                return Some(found);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the real kernel's BTF where there is one; the offsets are then checked against what
    /// any kernel must satisfy (distinct, inside the struct), not against numbers written here.
    #[test]
    fn resolves_offsets_from_running_kernel() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            if std::env::var_os("CI").is_some() {
                panic!("{VMLINUX_BTF} is missing in CI; the kernel needs CONFIG_DEBUG_INFO_BTF");
            }
            eprintln!("skipped: {VMLINUX_BTF} does not exist on this machine");
            return;
        }
        let offsets = Offsets::from_file(path).expect("offsets resolve");
        let btf = Btf::from_file(path).unwrap();
        let size_of = |name: &str| match &btf.resolve_types_by_name(name).unwrap()[..] {
            [Type::Struct(s), ..] => s.size() as u64,
            other => panic!("{name} is not a struct: {other:?}"),
        };
        assert!(offsets.task_cgroups + 8 <= size_of("task_struct"));
        assert!(offsets.css_set_dfl_cgrp + 8 <= size_of("css_set"));
        assert!(offsets.cgroup_kn + 8 <= size_of("cgroup"));
        assert!(offsets.kernfs_node_id + 8 <= size_of("kernfs_node"));
        assert!(matches!(
            member_offset(&btf, "task_struct", "no_such_member"),
            Err(BtfError::Missing(_))
        ));
    }
}
