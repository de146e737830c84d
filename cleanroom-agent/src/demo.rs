//! `cleanroom demo`: a workload of known size, measured by `cleanroom run`, so a new user sees
//! every metric at work, beside the kernel's own figures.
//!
//! The workload runs as a child (`cleanroom demo-workload`) so that it is measured exactly like
//! any other command.

use std::{
    hint::black_box,
    io::{self, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    thread,
    time::Duration,
};

/// What the demo workload does, in sizes a reader can check against the totals.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// Busy threads, each spinning until it has used `cpu_per_thread` of CPU.
    pub cpu_threads: u32,
    /// CPU time each busy thread uses.
    pub cpu_per_thread: Duration,
    /// Fresh anonymous memory touched once per page.
    pub touch_bytes: usize,
    /// Bytes written to a file, then fsync'ed.
    pub file_bytes: usize,
    /// Bytes sent over loopback TCP.
    pub tcp_bytes: usize,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            cpu_threads: 2,
            cpu_per_thread: Duration::from_millis(500),
            touch_bytes: 64 << 20,
            file_bytes: 16 << 20,
            tcp_bytes: 32 << 20,
        }
    }
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Spins until this thread has used `budget` of CPU.
pub fn spin_for(budget: Duration) -> u64 {
    let start = thread_cpu_time();
    let mut x = 0u64;
    while thread_cpu_time() - start < budget {
        for _ in 0..10_000 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    x
}

/// Runs the workload in this process, printing what it did.
pub fn run_workload(w: &Workload) -> io::Result<()> {
    let spinners: Vec<_> = (0..w.cpu_threads)
        .map(|_| {
            let budget = w.cpu_per_thread;
            thread::spawn(move || spin_for(budget))
        })
        .collect();
    for s in spinners {
        black_box(s.join().map_err(|_| io::Error::other("spinner panicked"))?);
    }
    println!(
        "demo: {} threads spun for {:?} of CPU each",
        w.cpu_threads, w.cpu_per_thread
    );

    let mut memory = vec![0u8; w.touch_bytes];
    for page in memory.chunks_mut(4096) {
        page[0] = 1;
    }
    black_box(&memory);
    drop(memory);
    println!("demo: touched {} fresh pages", w.touch_bytes.div_ceil(4096));

    let dir = tempfile_dir()?;
    let path = dir.join(format!("cleanroom-demo-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&path)?;
        let block = vec![0x5au8; 1 << 20];
        for _ in 0..w.file_bytes.div_ceil(block.len()) {
            file.write_all(&block)?;
        }
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result?;
    println!(
        "demo: wrote {} MiB to {} and fsync'ed it",
        w.file_bytes >> 20,
        dir.display()
    );

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let receiver = thread::spawn(move || -> io::Result<u64> {
        let (mut conn, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            match conn.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let mut conn = TcpStream::connect(addr)?;
    let chunk = vec![0xa5u8; 1 << 16];
    let mut sent = 0;
    while sent < w.tcp_bytes {
        let n = chunk.len().min(w.tcp_bytes - sent);
        conn.write_all(&chunk[..n])?;
        sent += n;
    }
    drop(conn);
    let received = receiver
        .join()
        .map_err(|_| io::Error::other("receiver panicked"))??;
    println!("demo: sent {sent} bytes over loopback TCP, received {received}");
    Ok(())
}

/// A directory on a real file system when there is one (so the fsync reaches a disk).
fn tempfile_dir() -> io::Result<std::path::PathBuf> {
    let tmp = std::env::temp_dir();
    let var_tmp = std::path::PathBuf::from("/var/tmp");
    Ok(if var_tmp.is_dir() { var_tmp } else { tmp })
}
