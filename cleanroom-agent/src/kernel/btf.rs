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

/// Byte offsets the kernel programs need, resolved in the running kernel: one per entry of
/// [`cleanroom_common::OFFSETS`], `Err` with the reason for those this kernel lacks.
#[derive(Debug)]
pub struct Offsets {
    /// (global name, offset or why not).
    pub entries: Vec<(&'static str, Result<u64, String>)>,
    /// Whether the kernel has the `bpf_get_current_task_btf` helper (5.11 on): its
    /// `enum bpf_func_id` names it.
    pub has_task_btf_helper: bool,
}

/// What an unresolved offset is set to: any read at it fails (and is counted), never guessed.
pub const UNRESOLVED: u64 = u64::MAX;

impl Offsets {
    /// Resolves every offset from the BTF file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let btf = Btf::from_file(path).map_err(|e| BtfError::Unreadable {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        let has_task_btf_helper =
            has_enum_value(&btf, "bpf_func_id", "BPF_FUNC_get_current_task_btf");
        Ok(Self {
            has_task_btf_helper,
            entries: cleanroom_common::OFFSETS
                .iter()
                .map(|(global, st, path)| {
                    (
                        *global,
                        member_path_offset(&btf, st, path).map_err(|e| e.to_string()),
                    )
                })
                .collect(),
        })
    }

    /// The value to load for `global`: its offset, or [`UNRESOLVED`].
    pub fn value(&self, global: &str) -> u64 {
        self.entries
            .iter()
            .find(|(g, _)| *g == global)
            .and_then(|(_, r)| r.as_ref().ok().copied())
            .unwrap_or(UNRESOLVED)
    }

    /// Why `global` could not be resolved, if it could not (a name not in
    /// [`cleanroom_common::OFFSETS`] never is).
    pub fn missing(&self, global: &str) -> Option<&str> {
        match self.entries.iter().find(|(g, _)| *g == global) {
            Some((_, r)) => r.as_ref().err().map(String::as_str),
            None => Some("an offset cleanroom_common::OFFSETS does not list"),
        }
    }
}

/// Whether `enum name` of the kernel has a value named `value`.
pub fn has_enum_value(btf: &Btf, name: &str, value: &str) -> bool {
    btf.resolve_types_by_name(name)
        .unwrap_or_default()
        .iter()
        .any(|t| match t {
            Type::Enum(e) => e
                .members
                .iter()
                .any(|m| btf.resolve_name(m).is_ok_and(|n| n == value)),
            _ => false,
        })
}

/// Offset of a member path like `bi_iter.bi_size` in `struct name`; each step may list
/// alternative names of a member renamed across kernels (`__parent|parent`). Steps go into
/// members by their type, through typedefs and qualifiers (`live.counter` of an `atomic_t`).
pub fn member_path_offset(btf: &Btf, name: &str, path: &str) -> Result<u64, BtfError> {
    let mut st = struct_by_name(btf, name)?;
    let mut at = name.to_owned();
    let mut total = 0;
    let steps: Vec<&str> = path.split('.').collect();
    for (i, step) in steps.iter().enumerate() {
        let (offset, type_id) = step
            .split('|')
            .find_map(|alt| find_member(btf, &st, alt, 0))
            .ok_or_else(|| BtfError::Missing(format!("struct {at}.{step}")))?;
        total += offset;
        at = format!("{at}.{step}");
        if i + 1 < steps.len() {
            st = struct_of_type(btf, type_id)
                .ok_or_else(|| BtfError::Missing(format!("struct {at} (not a struct)")))?;
        }
    }
    Ok(total)
}

/// The struct or union a type id names, through typedefs and qualifiers.
fn struct_of_type(btf: &Btf, mut type_id: u32) -> Option<btf_rs::Struct> {
    // A bounded walk: BTF chains of typedefs and qualifiers are short.
    for _ in 0..16 {
        match btf.resolve_type_by_id(type_id).ok()? {
            Type::Struct(s) | Type::Union(s) => return Some(s),
            Type::Typedef(t) => type_id = t.get_type_id().ok()?,
            Type::Const(t) => type_id = t.get_type_id().ok()?,
            Type::Volatile(t) => type_id = t.get_type_id().ok()?,
            _ => return None,
        }
    }
    None
}

fn struct_by_name(btf: &Btf, name: &str) -> Result<btf_rs::Struct, BtfError> {
    btf.resolve_types_by_name(name)
        .map_err(|_| BtfError::Missing(format!("struct {name}")))?
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| BtfError::Missing(format!("struct {name}")))
}

/// Byte offset of `member` in `struct name`, looking through anonymous structs and unions.
pub fn member_offset(btf: &Btf, name: &str, member: &str) -> Result<u64, BtfError> {
    member_offset_and_type(btf, name, member).map(|(o, _)| o)
}

fn member_offset_and_type(btf: &Btf, name: &str, member: &str) -> Result<(u64, u32), BtfError> {
    let st = struct_by_name(btf, name)?;
    find_member(btf, &st, member, 0)
        .ok_or_else(|| BtfError::Missing(format!("struct {name}.{member}")))
}

fn find_member(btf: &Btf, st: &btf_rs::Struct, wanted: &str, base_bits: u64) -> Option<(u64, u32)> {
    for m in &st.members {
        let bits = base_bits + u64::from(m.bit_offset());
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == wanted {
            // Pointers and ids are never bitfields; a member that is not byte-aligned is not ours.
            return bits
                .is_multiple_of(8)
                .then(|| Some((bits / 8, m.get_type_id().ok()?)))
                .flatten();
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
        let offsets = Offsets::from_file(path).expect("BTF parses");
        let btf = Btf::from_file(path).unwrap();
        let size_of = |name: &str| match &btf.resolve_types_by_name(name).unwrap()[..] {
            [Type::Struct(s), ..] => s.size() as u64,
            other => panic!("{name} is not a struct: {other:?}"),
        };
        for (global, st, _) in cleanroom_common::OFFSETS {
            let offset = offsets.value(global);
            if offset == UNRESOLVED && cleanroom_common::LAYOUT_ALTERNATIVES.contains(global) {
                continue;
            }
            assert_ne!(
                offset,
                UNRESOLVED,
                "{global}: {:?}",
                offsets.missing(global)
            );
            assert!(
                offset < size_of(st),
                "{global} = {offset} outside struct {st}"
            );
        }
        // A nested path adds up: bio.bi_iter.bi_size = bio.bi_iter + bvec_iter.bi_size.
        assert_eq!(
            member_path_offset(&btf, "bio", "bi_iter.bi_size").unwrap(),
            member_offset(&btf, "bio", "bi_iter").unwrap()
                + member_offset(&btf, "bvec_iter", "bi_size").unwrap()
        );
        assert!(matches!(
            member_offset(&btf, "task_struct", "no_such_member"),
            Err(BtfError::Missing(_))
        ));
    }
}
