//! Names for a profile's frames: user frames from each file's symbols and DWARF (blazesym,
//! demangled, inlined calls expanded), kernel frames from kallsyms. Done once, at the end, for
//! the distinct frames only.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    os::unix::fs::MetadataExt as _,
    path::Path,
};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Kernel, Source},
};

use crate::profile::mappings::FileId;

/// A frame's names: the function, then the functions inlined into it at that address,
/// outermost first (a stack lists them in that order).
pub type Names = Vec<String>;

/// The names of every frame asked for.
#[derive(Debug, Default)]
pub struct Symbols {
    user: HashMap<(FileId, u64), Names>,
    kernel: HashMap<u64, Names>,
}

impl Symbols {
    /// Looks up `user` frames (by file: its path, and the stated addresses in it) and `kernel`
    /// addresses. A file no longer at its path (same device and inode) gets no names.
    pub fn resolve(
        user: &BTreeMap<FileId, (String, BTreeSet<u64>)>,
        kernel: &BTreeSet<u64>,
    ) -> Self {
        let symbolizer = Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build();
        let mut out = Self::default();
        for (file, (path, addresses)) in user {
            if !same_file(path, *file) {
                log::debug!("{path}: not the file that was mapped any more");
                continue;
            }
            let addresses: Vec<u64> = addresses.iter().copied().collect();
            log::debug!("{path}: naming {} addresses", addresses.len());
            let src = Source::Elf(Elf::new(path));
            match symbolizer.symbolize(&src, Input::VirtOffset(&addresses)) {
                Ok(found) => {
                    for (address, sym) in addresses.iter().zip(found) {
                        if let Some(names) = names_of(&sym) {
                            out.user.insert((*file, *address), names);
                        }
                    }
                }
                Err(e) => log::debug!("{path}: {e}"),
            }
        }
        if !kernel.is_empty() {
            let addresses: Vec<u64> = kernel.iter().copied().collect();
            let src = Source::Kernel(Kernel {
                vmlinux: blazesym::MaybeDefault::None,
                ..Kernel::default()
            });
            match symbolizer.symbolize(&src, Input::AbsAddr(&addresses)) {
                Ok(found) => {
                    for (address, sym) in addresses.iter().zip(found) {
                        if let Some(names) = names_of(&sym) {
                            out.kernel.insert(*address, names);
                        }
                    }
                }
                Err(e) => log::debug!("kallsyms: {e}"),
            }
        }
        out
    }

    /// The names of a user frame, if found.
    pub fn user(&self, file: FileId, svma: u64) -> Option<&Names> {
        self.user.get(&(file, svma))
    }

    /// The names of a kernel frame, if found.
    pub fn kernel(&self, address: u64) -> Option<&Names> {
        self.kernel.get(&address)
    }
}

fn names_of(sym: &Symbolized<'_>) -> Option<Names> {
    let Symbolized::Sym(sym) = sym else {
        return None;
    };
    Some(
        std::iter::once(sym.name.to_string())
            .chain(sym.inlined.iter().map(|f| f.name.to_string()))
            .collect(),
    )
}

/// Whether `path` is still the file `id` that was mapped.
fn same_file(path: &str, id: FileId) -> bool {
    let Ok(meta) = std::fs::metadata(Path::new(path)) else {
        return false;
    };
    let dev = meta.dev();
    // /proc/PID/maps gives major:minor as the kernel's (new) encoding does.
    let (major, minor) = (libc::major(dev) as u64, libc::minor(dev) as u64);
    meta.ino() == id.inode && (major << 32 | minor) == id.dev
}
