//! What an off-CPU wait was waiting for, told from the kernel functions on its stack as it
//! switched out (the innermost that names a kind of wait decides), and its state then.

use serde::{Deserialize, Serialize};

/// A kind of wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitKind {
    /// A timed sleep: `nanosleep`, `clock_nanosleep`, a poll's timeout with nothing to wait on.
    Sleep,
    /// Block I/O: a read or write waiting for the device, a page under I/O.
    BlockIo,
    /// A lock: a futex (user-space mutexes, condition variables, thread joins), a kernel
    /// mutex or semaphore.
    Lock,
    /// A pipe, a socket or a poll over them: waiting for data or room.
    PipeSocket,
    /// A child process: `wait`/`waitpid`.
    Child,
    /// Anything else.
    Other,
}

impl WaitKind {
    /// Its name in reports.
    pub fn label(self) -> &'static str {
        match self {
            WaitKind::Sleep => "sleep",
            WaitKind::BlockIo => "block I/O",
            WaitKind::Lock => "lock/futex",
            WaitKind::PipeSocket => "pipe/socket",
            WaitKind::Child => "child process",
            WaitKind::Other => "other",
        }
    }

    /// Every kind, in the order reports list them when equal.
    pub const ALL: [WaitKind; 6] = [
        WaitKind::Sleep,
        WaitKind::BlockIo,
        WaitKind::Lock,
        WaitKind::PipeSocket,
        WaitKind::Child,
        WaitKind::Other,
    ];
}

/// Kernel functions (prefixes) that say what a wait is for, checked from the innermost frame
/// out. The generic ones (`schedule`, `schedule_timeout`) name nothing and are passed over.
const MARKERS: &[(&str, WaitKind)] = &[
    ("io_schedule", WaitKind::BlockIo),
    ("folio_wait", WaitKind::BlockIo),
    ("wait_on_page", WaitKind::BlockIo),
    ("__lock_page", WaitKind::BlockIo),
    ("__folio_lock", WaitKind::BlockIo),
    ("bit_wait_io", WaitKind::BlockIo),
    ("blk_", WaitKind::BlockIo),
    ("submit_bio_wait", WaitKind::BlockIo),
    ("__blkdev_direct_IO", WaitKind::BlockIo),
    ("iomap_dio_rw", WaitKind::BlockIo),
    ("jbd2_", WaitKind::BlockIo),
    ("futex_", WaitKind::Lock),
    ("__futex", WaitKind::Lock),
    ("__mutex_lock", WaitKind::Lock),
    ("mutex_lock", WaitKind::Lock),
    ("rwsem_down", WaitKind::Lock),
    ("__down", WaitKind::Lock),
    ("rt_mutex", WaitKind::Lock),
    ("pipe_read", WaitKind::PipeSocket),
    ("anon_pipe_", WaitKind::PipeSocket),
    ("pipe_write", WaitKind::PipeSocket),
    ("pipe_wait", WaitKind::PipeSocket),
    ("wait_for_partner", WaitKind::PipeSocket),
    ("sk_wait_data", WaitKind::PipeSocket),
    ("sk_stream_wait", WaitKind::PipeSocket),
    ("__skb_wait_for_more_packets", WaitKind::PipeSocket),
    ("__skb_recv", WaitKind::PipeSocket),
    ("unix_", WaitKind::PipeSocket),
    ("inet_csk_accept", WaitKind::PipeSocket),
    ("inet_wait_for_connect", WaitKind::PipeSocket),
    ("tcp_recvmsg", WaitKind::PipeSocket),
    ("udp_recvmsg", WaitKind::PipeSocket),
    ("sock_", WaitKind::PipeSocket),
    ("ep_poll", WaitKind::PipeSocket),
    ("do_select", WaitKind::PipeSocket),
    ("do_poll", WaitKind::PipeSocket),
    ("do_sys_poll", WaitKind::PipeSocket),
    ("n_tty_read", WaitKind::PipeSocket),
    ("do_nanosleep", WaitKind::Sleep),
    ("hrtimer_nanosleep", WaitKind::Sleep),
    ("common_nsleep", WaitKind::Sleep),
    ("msleep", WaitKind::Sleep),
    ("do_wait", WaitKind::Child),
    ("kernel_wait", WaitKind::Child),
];

/// The kind of a wait whose kernel stack, innermost first, has the functions `frames`.
pub fn classify<'a>(frames: impl IntoIterator<Item = &'a str>) -> WaitKind {
    for f in frames {
        for (prefix, kind) in MARKERS {
            if f.starts_with(prefix) {
                return *kind;
            }
        }
    }
    WaitKind::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_innermost_telling_frame_decides() {
        let sleep = [
            "__schedule",
            "schedule",
            "do_nanosleep",
            "hrtimer_nanosleep",
            "__x64_sys_clock_nanosleep",
        ];
        assert_eq!(classify(sleep), WaitKind::Sleep);
        let pipe = [
            "__schedule",
            "schedule",
            "pipe_read",
            "vfs_read",
            "ksys_read",
        ];
        assert_eq!(classify(pipe), WaitKind::PipeSocket);
        let futex = ["__schedule", "schedule", "futex_wait_queue", "futex_wait"];
        assert_eq!(classify(futex), WaitKind::Lock);
        let io = [
            "__schedule",
            "io_schedule",
            "folio_wait_bit_common",
            "filemap_read",
        ];
        assert_eq!(classify(io), WaitKind::BlockIo);
        assert_eq!(
            classify(["__schedule", "schedule", "do_wait"]),
            WaitKind::Child
        );
        assert_eq!(classify(["__schedule", "schedule"]), WaitKind::Other);
    }
}
