//! Storage I/O of a run's live threads, as the kernel accounts each task (`/proc/PID/task/TID/io`).
//!
//! The kernel keeps `read_bytes`, `write_bytes` and `cancelled_write_bytes` per thread
//! (`task->ioac`); the probes add each thread's figures to its cgroup when it exits. While a run
//! goes on, the threads still alive hold the rest: this module reads them, so each sample is
//! "exited threads (BPF) + live threads (here)". Per-thread files, not `/proc/PID/io`: the
//! process file also holds its exited threads, which the probes already counted.

use std::ops::AddAssign;

/// Bytes of storage I/O, as `/proc/.../io` names them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskIo {
    /// Bytes the tasks caused to be read from storage.
    pub read_bytes: u64,
    /// Bytes dirtied in the page cache or written directly.
    pub write_bytes: u64,
    /// Bytes dirtied and then dropped before writeback.
    pub cancelled_write_bytes: u64,
}

impl AddAssign for TaskIo {
    fn add_assign(&mut self, o: Self) {
        self.read_bytes = self.read_bytes.saturating_add(o.read_bytes);
        self.write_bytes = self.write_bytes.saturating_add(o.write_bytes);
        self.cancelled_write_bytes = self
            .cancelled_write_bytes
            .saturating_add(o.cancelled_write_bytes);
    }
}

/// The storage I/O of every live thread of `pids`. A process or thread that exits meanwhile is
/// skipped: the probes count it at its exit.
pub fn live_threads(pids: &[i32]) -> TaskIo {
    let mut total = TaskIo::default();
    for pid in pids {
        let Ok(process) = procfs::process::Process::new(*pid) else {
            continue;
        };
        let Ok(tasks) = process.tasks() else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(io) = task.io() {
                total += TaskIo {
                    read_bytes: io.read_bytes,
                    write_bytes: io.write_bytes,
                    cancelled_write_bytes: io.cancelled_write_bytes,
                };
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_saturate() {
        let mut a = TaskIo {
            read_bytes: u64::MAX,
            ..TaskIo::default()
        };
        a += TaskIo {
            read_bytes: 1,
            write_bytes: 2,
            cancelled_write_bytes: 3,
        };
        assert_eq!(
            (a.read_bytes, a.write_bytes, a.cancelled_write_bytes),
            (u64::MAX, 2, 3)
        );
    }
}
