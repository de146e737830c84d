//! The kernel's reports of processes' `exec`, `fork`, executable `mmap` and exit, as perf's
//! side-band records: one software "dummy" perf event on each CPU that counts nothing and
//! writes a record into its ring buffer at each (`mmap2`, `comm_exec`, `task`), as
//! `perf record` learns the mappings of processes too short-lived to read from `/proc`.
//!
//! [`Sideband::drain`] reads what every CPU wrote since the last call, in time order, as
//! [`SpaceEvent`]s for [`super::spaces::AddressSpaces`], each with its time on the clock of
//! the samples' (`CLOCK_MONOTONIC`, `bpf_ktime_get_ns`), so a sample read late is unwound with
//! the mappings of its moment, not those of a later `exec`.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    ptr::NonNull,
    sync::atomic::{Ordering, fence},
};

use perf_event_open_sys::bindings::{
    PERF_COUNT_SW_DUMMY, PERF_FLAG_FD_CLOEXEC, PERF_RECORD_COMM, PERF_RECORD_EXIT,
    PERF_RECORD_FORK, PERF_RECORD_LOST, PERF_RECORD_MISC_COMM_EXEC, PERF_RECORD_MMAP2,
    PERF_SAMPLE_TID, PERF_SAMPLE_TIME, PERF_TYPE_SOFTWARE, perf_event_attr, perf_event_mmap_page,
};

use crate::profile::{
    mappings::{FileId, Mapping},
    spaces::SpaceEvent,
};

/// Pages of each CPU's ring (a power of two): 512 KiB, some 4,000 records between reads.
const RING_PAGES: usize = 128;

/// `PROT_EXEC` of a mapping's protection.
const PROT_EXEC: u32 = 4;

/// The side-band records of every CPU.
#[derive(Debug)]
pub struct Sideband {
    rings: Vec<Ring>,
    /// Records read, kept to be put in time order.
    read: Vec<(u64, SpaceEvent)>,
}

impl Sideband {
    /// Starts the reports on each of `cpus`.
    pub fn open(cpus: &[u32]) -> io::Result<Self> {
        let rings = cpus
            .iter()
            .map(|&cpu| Ring::open(cpu))
            .collect::<io::Result<_>>()?;
        Ok(Self {
            rings,
            read: Vec::new(),
        })
    }

    /// Every event reported since the last call, oldest first, with its time, into `out`.
    pub fn drain(&mut self, mut out: impl FnMut(u64, SpaceEvent)) {
        for ring in &mut self.rings {
            ring.drain(|kind, misc, body| {
                if let Some(event) = parse(kind, misc, body) {
                    self.read.push(event);
                }
            });
        }
        // Stable: a CPU's records in the order written when two share a time.
        self.read.sort_by_key(|(time, _)| *time);
        for (time, event) in self.read.drain(..) {
            out(time, event);
        }
    }
}

/// One CPU's event and its ring buffer.
#[derive(Debug)]
struct Ring {
    /// The ring's mapping (unmapped on drop, before the event is closed).
    base: NonNull<u8>,
    len: usize,
    page: usize,
    _fd: OwnedFd,
    /// A record that wraps around the ring's end, put together.
    wrapped: Vec<u8>,
}

// SAFETY: the mapping is owned by this value and used by one thread at a time.
unsafe impl Send for Ring {}

impl Ring {
    fn open(cpu: u32) -> io::Result<Self> {
        // SAFETY: a plain C struct, valid zeroed.
        let mut attr: perf_event_attr = unsafe { std::mem::zeroed() };
        attr.type_ = PERF_TYPE_SOFTWARE;
        attr.size = std::mem::size_of::<perf_event_attr>() as u32;
        attr.config = u64::from(PERF_COUNT_SW_DUMMY);
        attr.sample_type = u64::from(PERF_SAMPLE_TID | PERF_SAMPLE_TIME);
        attr.set_mmap(1);
        attr.set_mmap2(1);
        attr.set_comm(1);
        attr.set_comm_exec(1);
        attr.set_task(1);
        attr.set_sample_id_all(1);
        // The samples' clock (`bpf_ktime_get_ns`), not perf's own.
        attr.set_use_clockid(1);
        attr.clockid = libc::CLOCK_MONOTONIC;
        // SAFETY: `attr` is initialised and outlives the call; pid -1 with a CPU is every task
        // on that CPU.
        let fd = unsafe {
            perf_event_open_sys::perf_event_open(
                &mut attr,
                -1,
                cpu as i32,
                -1,
                u64::from(PERF_FLAG_FD_CLOEXEC),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor, ours alone.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = page * (RING_PAGES + 1);
        // SAFETY: mapping the event's ring, shared with the kernel, at an address it picks.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            base: NonNull::new(base.cast()).ok_or_else(io::Error::last_os_error)?,
            len,
            page,
            _fd: fd,
            wrapped: Vec::new(),
        })
    }

    /// Hands each record written since the last call to `each` (type, misc, the bytes after
    /// the header), then gives their room back to the kernel.
    fn drain(&mut self, mut each: impl FnMut(u32, u16, &[u8])) {
        let meta = self.base.as_ptr().cast::<perf_event_mmap_page>();
        // SAFETY: the first page of the ring is the kernel's control page; `data_head` is
        // written by the kernel, read here once, then the records it covers are complete.
        let head = unsafe { std::ptr::read_volatile(&raw const (*meta).data_head) };
        fence(Ordering::Acquire);
        // SAFETY: `data_tail` is ours to write and the kernel's to read.
        let mut tail = unsafe { std::ptr::read_volatile(&raw const (*meta).data_tail) };
        let size = (self.len - self.page) as u64;
        // SAFETY: the data area follows the control page, `size` bytes long.
        let data =
            unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(self.page), size as usize) };
        while tail + 8 <= head {
            let at = (tail % size) as usize;
            let header = self.bytes(data, at, 8);
            let kind = u32::from_ne_bytes(header[0..4].try_into().unwrap_or_default());
            let misc = u16::from_ne_bytes(header[4..6].try_into().unwrap_or_default());
            let len = u16::from_ne_bytes(header[6..8].try_into().unwrap_or_default()) as u64;
            if len < 8 || tail + len > head {
                break;
            }
            each(kind, misc, &self.bytes(data, at, len as usize)[8..]);
            tail += len;
        }
        fence(Ordering::SeqCst);
        // SAFETY: as above; the records before `tail` are no longer read.
        unsafe { std::ptr::write_volatile(&raw mut (*meta).data_tail, tail) };
    }

    /// `len` bytes of the ring's data from `at`, put together if they wrap around its end.
    fn bytes<'a>(&'a mut self, data: &'a [u8], at: usize, len: usize) -> &'a [u8] {
        if at + len <= data.len() {
            return &data[at..at + len];
        }
        self.wrapped.clear();
        self.wrapped.extend_from_slice(&data[at..]);
        self.wrapped
            .extend_from_slice(&data[..len - (data.len() - at)]);
        &self.wrapped
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// The event in a record of type `kind` (the bytes after its header, ending with the sample
/// id: pid, tid, time), with its time; `None` for records of no interest.
fn parse(kind: u32, misc: u16, body: &[u8]) -> Option<(u64, SpaceEvent)> {
    let u32_at = |at: usize| Some(u32::from_ne_bytes(body.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_ne_bytes(body.get(at..at + 8)?.try_into().ok()?));
    let time = u64_at(body.len().checked_sub(8)?)?;
    let event = match kind {
        PERF_RECORD_COMM if u32::from(misc) & PERF_RECORD_MISC_COMM_EXEC != 0 => {
            SpaceEvent::Exec { tgid: u32_at(0)? }
        }
        PERF_RECORD_FORK => {
            let (tgid, parent) = (u32_at(0)?, u32_at(4)?);
            // A new thread is forked into its own process: nothing to copy.
            if tgid == parent {
                return None;
            }
            SpaceEvent::Fork { tgid, parent }
        }
        PERF_RECORD_EXIT => {
            let (tgid, tid) = (u32_at(0)?, u32_at(8)?);
            if tgid != tid {
                return None;
            }
            SpaceEvent::Exit { tgid }
        }
        PERF_RECORD_MMAP2 => {
            // pid, tid, addr, len, pgoff, maj, min, ino, ino_generation, prot, flags, filename.
            let (tgid, start, len, offset) = (u32_at(0)?, u64_at(8)?, u64_at(16)?, u64_at(24)?);
            let (major, minor, inode) = (u32_at(32)?, u32_at(36)?, u64_at(40)?);
            let prot = u32_at(56)?;
            let name = body.get(64..body.len().checked_sub(16)?)?;
            let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
            let path = String::from_utf8_lossy(name).into_owned();
            if prot & PROT_EXEC == 0 || inode == 0 || !path.starts_with('/') {
                return None;
            }
            SpaceEvent::Map {
                tgid,
                mapping: Mapping {
                    start,
                    end: start.checked_add(len)?,
                    offset,
                    file: FileId {
                        dev: u64::from(major) << 32 | u64::from(minor),
                        inode,
                    },
                    path,
                },
            }
        }
        PERF_RECORD_LOST => SpaceEvent::Lost,
        _ => return None,
    };
    Some((time, event))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record's body: `fields`, then the sample id (pid, tid, time).
    fn body(fields: &[&[u8]], time: u64) -> Vec<u8> {
        let mut b: Vec<u8> = fields.concat();
        b.extend_from_slice(&1u32.to_ne_bytes());
        b.extend_from_slice(&1u32.to_ne_bytes());
        b.extend_from_slice(&time.to_ne_bytes());
        b
    }

    #[test]
    fn records_are_read_as_the_kernel_lays_them_out() {
        let mmap = body(
            &[
                &42u32.to_ne_bytes(),
                &43u32.to_ne_bytes(),
                &0x7f00_0000_1000u64.to_ne_bytes(),
                &0x2000u64.to_ne_bytes(),
                &0x1000u64.to_ne_bytes(),
                &0xfdu32.to_ne_bytes(),
                &1u32.to_ne_bytes(),
                &77u64.to_ne_bytes(),
                &0u64.to_ne_bytes(),
                &5u32.to_ne_bytes(),
                &2u32.to_ne_bytes(),
                b"/usr/lib/libc.so.6\0\0\0\0\0\0",
            ],
            900,
        );
        let (time, event) = parse(PERF_RECORD_MMAP2, 2, &mmap).unwrap();
        assert_eq!(time, 900);
        assert_eq!(
            event,
            SpaceEvent::Map {
                tgid: 42,
                mapping: Mapping {
                    start: 0x7f00_0000_1000,
                    end: 0x7f00_0000_3000,
                    offset: 0x1000,
                    file: FileId {
                        dev: 0xfd << 32 | 1,
                        inode: 77
                    },
                    path: "/usr/lib/libc.so.6".into(),
                }
            }
        );
        let comm = body(
            &[&9u32.to_ne_bytes(), &9u32.to_ne_bytes(), b"sh\0\0\0\0\0\0"],
            5,
        );
        assert_eq!(
            parse(PERF_RECORD_COMM, PERF_RECORD_MISC_COMM_EXEC as u16, &comm),
            Some((5, SpaceEvent::Exec { tgid: 9 }))
        );
        assert_eq!(parse(PERF_RECORD_COMM, 0, &comm), None, "a rename");
        let task = |pid: u32, ppid: u32, tid: u32| {
            body(
                &[
                    &pid.to_ne_bytes(),
                    &ppid.to_ne_bytes(),
                    &tid.to_ne_bytes(),
                    &1u32.to_ne_bytes(),
                    &7u64.to_ne_bytes(),
                ],
                7,
            )
        };
        assert_eq!(
            parse(PERF_RECORD_FORK, 0, &task(20, 9, 20)),
            Some((
                7,
                SpaceEvent::Fork {
                    tgid: 20,
                    parent: 9
                }
            ))
        );
        assert_eq!(
            parse(PERF_RECORD_FORK, 0, &task(9, 9, 21)),
            None,
            "a thread"
        );
        assert_eq!(
            parse(PERF_RECORD_EXIT, 0, &task(9, 1, 9)),
            Some((7, SpaceEvent::Exit { tgid: 9 }))
        );
        assert_eq!(parse(PERF_RECORD_EXIT, 0, &task(9, 1, 12)), None);
        assert_eq!(parse(PERF_RECORD_MMAP2, 0, &[0; 10]), None, "too short");
    }
}
