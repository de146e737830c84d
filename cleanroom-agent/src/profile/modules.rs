//! The ELF files that sampled processes run code from: what unwinding needs of each (its
//! `.eh_frame` and where its segments load), read once per file however many processes map it.

use std::{
    collections::HashMap, fs::File, ops::Range, os::unix::fs::MetadataExt as _, path::Path,
    sync::Arc,
};

use object::{Object as _, ObjectSection as _, ObjectSegment as _, read::ReadCache};

use crate::profile::mappings::{FileId, Mapping};

/// The page size segments are mapped in.
const PAGE: u64 = 4096;

/// A section's address range as the file states it, and its bytes.
#[derive(Clone, Debug)]
pub struct Section {
    /// Stated virtual addresses.
    pub svma: Range<u64>,
    /// Its bytes.
    pub data: Arc<[u8]>,
}

/// What unwinding needs of one ELF file.
#[derive(Clone, Debug)]
pub struct ModuleFile {
    /// The path it was mapped from.
    pub path: String,
    /// Its GNU build id (`.note.gnu.build-id`), which names this build of it anywhere.
    pub build_id: Option<Vec<u8>>,
    /// `.eh_frame`, if it has one.
    pub eh_frame: Option<Section>,
    /// `.eh_frame_hdr` (the index of `.eh_frame`).
    pub eh_frame_hdr: Option<Section>,
    /// `.text`'s range.
    pub text_svma: Option<Range<u64>>,
    /// `.got`'s range (DWARF CFI may address relative to it).
    pub got_svma: Option<Range<u64>>,
    /// Loadable segments: (file offset, stated address, size in the file).
    loads: Vec<(u64, u64, u64)>,
}

impl ModuleFile {
    /// Reads `file` (opened at `path`, for naming), without loading more than the sections
    /// unwinding needs.
    pub fn read(file: File, path: &str) -> Result<Self, object::Error> {
        let cache = ReadCache::new(file);
        let elf = object::File::parse(&cache)?;
        let section = |name: &str| {
            let s = elf.section_by_name(name)?;
            let data = s.data().ok()?;
            Some(Section {
                svma: s.address()..s.address() + s.size(),
                data: Arc::from(data),
            })
        };
        let range = |name: &str| {
            elf.section_by_name(name)
                .map(|s| s.address()..s.address() + s.size())
        };
        Ok(Self {
            path: path.to_owned(),
            build_id: elf.build_id().ok().flatten().map(<[u8]>::to_vec),
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
            text_svma: range(".text"),
            got_svma: range(".got"),
            loads: elf
                .segments()
                .map(|s| {
                    let (offset, size) = s.file_range();
                    (offset, s.address(), size)
                })
                .collect(),
        })
    }

    /// What to add to a stated address to get the address in a process that mapped this file
    /// as `mapping`; `None` if no segment holds the mapping's offset.
    pub fn bias(&self, mapping: &Mapping) -> Option<u64> {
        // A mapping starts at its segment's offset rounded down to a page, which may fall in
        // the segment before (linkers such as lld do not align segments to pages in the file):
        // the segment is the last that starts at or after that page.
        let &(offset, vaddr, _) = self
            .loads
            .iter()
            .filter(|(offset, _, size)| {
                offset & !(PAGE - 1) <= mapping.offset && mapping.offset < offset + size.max(&1)
            })
            .max_by_key(|(offset, _, _)| *offset)?;
        Some(
            mapping
                .start
                .wrapping_sub(mapping.offset)
                .wrapping_add(offset)
                .wrapping_sub(vaddr),
        )
    }
}

/// Every file read so far, by identity; files that could not be read are remembered too.
#[derive(Debug, Default)]
pub struct ModuleFiles {
    files: HashMap<FileId, Option<Arc<ModuleFile>>>,
}

impl ModuleFiles {
    /// Every file read, by identity.
    pub fn read_files(&self) -> HashMap<FileId, Arc<ModuleFile>> {
        self.files
            .iter()
            .filter_map(|(id, f)| Some((*id, f.clone()?)))
            .collect()
    }

    /// The file of `mapping` in process `tgid`, read on first use through the process's own
    /// view of it; `None` if it cannot be read (the process is gone, or it is not ELF).
    pub fn get(&mut self, tgid: u32, mapping: &Mapping) -> Option<Arc<ModuleFile>> {
        self.files
            .entry(mapping.file)
            .or_insert_with(|| {
                let file = File::open(mapping.map_file(tgid))
                    .ok()
                    .or_else(|| same_file(Path::new(&mapping.path), mapping.file))?;
                match ModuleFile::read(file, &mapping.path) {
                    Ok(m) => Some(Arc::new(m)),
                    Err(e) => {
                        log::debug!("{}: {e}", mapping.path);
                        None
                    }
                }
            })
            .clone()
    }
}

/// The file at `path` if it is still file `id` (its process ended: the path may now name a
/// rebuilt file, whose symbols would be wrong).
fn same_file(path: &Path, id: FileId) -> Option<File> {
    let file = File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    let dev = u64::from(libc::major(meta.dev())) << 32 | u64::from(libc::minor(meta.dev()));
    (FileId {
        dev,
        inode: meta.ino(),
    } == id)
        .then_some(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(loads: Vec<(u64, u64, u64)>) -> ModuleFile {
        ModuleFile {
            path: "/bin/x".into(),
            build_id: None,
            eh_frame: None,
            eh_frame_hdr: None,
            text_svma: None,
            got_svma: None,
            loads,
        }
    }

    fn mapping(start: u64, offset: u64) -> Mapping {
        Mapping {
            start,
            end: start + 0x10000,
            offset,
            file: FileId { dev: 1, inode: 2 },
            path: "/bin/x".into(),
        }
    }

    #[test]
    fn bias_takes_the_segment_a_mapping_holds() {
        // ld.bfd: segments aligned to pages in the file.
        let bfd = module(vec![(0, 0, 0x25388), (0x26000, 0x26000, 0x1550fc)]);
        let text = mapping(0x7f00_0002_6000, 0x26000);
        assert_eq!(bfd.bias(&text), Some(0x7f00_0000_0000));
        // lld: the text segment starts mid-page in the file, one page further in memory; its
        // mapping starts at the page below, which the read-only segment also holds.
        let lld = module(vec![(0, 0, 0x1f6b0), (0x1f6b0, 0x206b0, 0x50000)]);
        let text = mapping(0x5600_0002_0000, 0x1f000);
        let bias = lld.bias(&text).unwrap();
        // The file's byte 0x1f6b0 is at 0x5600_0002_06b0 and its stated address is 0x206b0.
        assert_eq!(0x5600_0002_06b0 - bias, 0x206b0);
        assert_eq!(lld.bias(&mapping(0x1000, 0x90000)), None);
    }
}
