//! A process's memory mappings, from `/proc/PID/maps`: which file, at which offset, each
//! executable address belongs to.

use std::{io, path::PathBuf};

/// The identity of a mapped file: its device and inode, as `/proc/PID/maps` gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// `major:minor`, as one number (major << 32 | minor).
    pub dev: u64,
    /// Inode number.
    pub inode: u64,
}

/// One executable mapping of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    /// The file.
    pub file: FileId,
    /// Its path as the process sees it (" (deleted)" removed).
    pub path: String,
}

impl Mapping {
    /// Whether `address` is inside it.
    pub fn contains(&self, address: u64) -> bool {
        (self.start..self.end).contains(&address)
    }

    /// Where to open the file while the process lives: `/proc/PID/map_files/…`, which works
    /// for a deleted file and in another mount namespace.
    pub fn map_file(&self, tgid: u32) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{tgid}/map_files/{:x}-{:x}",
            self.start, self.end
        ))
    }
}

/// The executable mappings of files in `maps` (the text of `/proc/PID/maps`), in address order.
/// Anonymous memory, `[vdso]` and the like are left out: nothing there can be unwound with a
/// file's unwind tables.
pub fn parse(maps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = maps.lines().filter_map(parse_line).collect();
    out.sort_by_key(|m| m.start);
    out
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let (range, perms, offset, dev, inode) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let path = fields.next().unwrap_or("").trim_start();
    if !perms.contains('x') || !path.starts_with('/') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    let inode: u64 = inode.parse().ok()?;
    if inode == 0 {
        return None;
    }
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        file: FileId {
            dev: (u64::from_str_radix(major, 16).ok()? << 32)
                | u64::from_str_radix(minor, 16).ok()?,
            inode,
        },
        path: path.strip_suffix(" (deleted)").unwrap_or(path).to_owned(),
    })
}

/// The executable file mappings of process `tgid`.
pub fn read(tgid: u32) -> io::Result<Vec<Mapping>> {
    Ok(parse(&std::fs::read_to_string(format!(
        "/proc/{tgid}/maps"
    ))?))
}

/// Where a sampled process's mappings are found.
pub trait MappingSource {
    /// Process `tgid`'s executable file mappings, with their version when they are followed
    /// as they change (`None`: read from `/proc` as they are now); `None` if they cannot be
    /// had (the process ended unfollowed).
    fn mappings(&mut self, tgid: u32) -> Option<(Option<u64>, Vec<Mapping>)>;

    /// The version of process `tgid`'s mappings, if they are followed.
    fn version(&mut self, tgid: u32) -> Option<u64>;
}

/// Mappings read from `/proc` when asked for.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcMaps;

impl MappingSource for ProcMaps {
    fn mappings(&mut self, tgid: u32) -> Option<(Option<u64>, Vec<Mapping>)> {
        read(tgid).ok().map(|m| (None, m))
    }

    fn version(&mut self, _tgid: u32) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_file_mappings_are_kept() {
        let maps = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 1049 /usr/bin/profilee
55d0c0a01000-55d0c0a02000 r-xp 00001000 08:01 1049 /usr/bin/profilee
55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0          [heap]
7f1a2c028000-7f1a2c1bd000 r-xp 00028000 fd:00 2232 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1a2c400000-7f1a2c401000 r-xp 00000000 00:1f 77 /tmp/gone (deleted)
7ffd5f1f0000-7ffd5f1f2000 r-xp 00000000 00:00 0          [vdso]
";
        let m = parse(maps);
        assert_eq!(m.len(), 3, "{m:#?}");
        assert_eq!(
            m[0],
            Mapping {
                start: 0x55d0c0a01000,
                end: 0x55d0c0a02000,
                offset: 0x1000,
                file: FileId {
                    dev: 8 << 32 | 1,
                    inode: 1049
                },
                path: "/usr/bin/profilee".into(),
            }
        );
        assert_eq!(m[1].file.dev, 0xfd << 32);
        assert_eq!(m[2].path, "/tmp/gone");
        assert!(m[1].contains(0x7f1a2c028000) && !m[1].contains(0x7f1a2c1bd000));
        assert_eq!(parse("garbage\n\n1-2 r-xp zz 0:0 5 /x"), vec![]);
    }
}
