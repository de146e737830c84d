//! Workloads of known shape for the integration tests, each printing what the kernel itself
//! says it cost (`getrusage`) as one JSON line on stdout.
//!
//! `spin SECS`                     busy loop for SECS of wall time
//! `spin-ms MS`                    spin MS ms of CPU time
//! `contend T MS`                  pinned to one CPU, T threads each spin MS ms of CPU time, so
//!                                 they wait for it in turn; prints `{"run_delay_ns":N}`, the
//!                                 time every thread of the process (main included) waited on a
//!                                 run queue, as each one's /proc/thread-self/schedstat says
//! `hot-chain MS`                  main → outer → hot_a for 70% of MS ms of CPU, hot_b for
//!                                 30% (in ten rounds); no frame pointers (a release build)
//! `cmdline ARGS...`              print `{"pid","ppid","cmdline"}`: its own from /proc
//! `children N MS LAST`            one at a time, N children spinning MS ms of CPU, then one
//!                                 LAST ms; for each, a line `{"child":PID,"cpu_ns":N}` with
//!                                 its CPU time as the parent's RUSAGE_CHILDREN grew by it
//! `sleepy N MS`                   sleep N times for MS milliseconds
//! `touch PAGES`                   touch PAGES fresh 4 KiB pages (no huge pages)
//! `fork K MS`                     fork K children that each spin MS ms of CPU, then wait
//! `direct-io DEV BYTES CHUNK`     O_DIRECT: write BYTES to DEV in CHUNK-sized writes, read back
//! `buffered FILE BYTES`           write BYTES to FILE through the page cache, then fsync
//! `write-threads DIR BYTES T [MS]` T threads each write BYTES/T to a file of their own in DIR
//!                                 through the page cache (no fsync; T = 0: the main thread
//!                                 writes BYTES); then BYTES/4 more to a
//!                                 scratch file that is deleted before writeback (cancelled);
//!                                 then MS ms (default 0) of sleep before exiting
//! `mmap-readers FILE N`           drop FILE from the page cache, then N children read it at
//!                                 once through a shared mapping (they wait on each other's
//!                                 reads); the parent waits for them
//! `threads T N`                   T threads that each sleep N times for 1 ms, joined
//! `hold PAGES MS`                 a child touches PAGES fresh 4 KiB pages and keeps them MS
//!                                 ms; the parent waits for it (its getrusage is the child's)
//! `tcp-loop BYTES`                two processes: BYTES each way over loopback TCP
//! `tcp-echo-serve ADDR`           accept once; read a length and that many bytes; send them back
//! `tcp-send ADDR BYTES`           send BYTES to a tcp-echo-serve at ADDR and read them back
//! `connects N`                    N loopback TCP connections one after another, each
//!                                 accepted and closed by both ends (10 socket state changes)
//! `subcgroup-spin MS`             make a sub-cgroup of its own, spin MS ms in it, remove it
//! `clone-into DIR MS`             clone3(CLONE_INTO_CGROUP) a child into cgroup DIR that spins
//!                                 MS ms; prints `{"child":PID}` on a line of its own first
//! `cgroups N SECS`                N sub-cgroups of its own, a sleeping process in each, for SECS
//! `churn DIR N`                  N times: make DIR/cI, a process in it forks one child there
//!                                 (both exit), remove it
//! `monotonic`                     print CLOCK_MONOTONIC in ns (when the command started)
//!
//! `--netns NAME` before the workload runs it in network namespace NAME (/run/netns/NAME).

use std::{
    fs::{self, File, OpenOptions},
    hint::black_box,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    time::{Duration, Instant},
};

fn rusage(who: libc::c_int) -> libc::rusage {
    // SAFETY: zeroed rusage is a valid value; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid and writable.
    unsafe { libc::getrusage(who, &mut ru) };
    ru
}

/// getrusage of this process and of its waited-for children, and this process's
/// `/proc/self/io` storage figures.
fn rusage_json() -> String {
    let ru = rusage(libc::RUSAGE_SELF);
    let children = rusage(libc::RUSAGE_CHILDREN);
    let us = |tv: libc::timeval| tv.tv_sec * 1_000_000 + tv.tv_usec;
    let io = fs::read_to_string("/proc/self/io").unwrap_or_default();
    let io_field = |key: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    format!(
        r#"{{"pid":{},"nvcsw":{},"nivcsw":{},"minflt":{},"majflt":{},"children_majflt":{},"utime_us":{},"stime_us":{},"maxrss_kib":{},"children_maxrss_kib":{},"oublock":{},"inblock":{},"children_nvcsw":{},"children_nivcsw":{},"io_read_bytes":{},"io_write_bytes":{},"io_cancelled_write_bytes":{}}}"#,
        std::process::id(),
        ru.ru_nvcsw,
        ru.ru_nivcsw,
        ru.ru_minflt,
        ru.ru_majflt,
        children.ru_majflt,
        us(ru.ru_utime),
        us(ru.ru_stime),
        ru.ru_maxrss,
        children.ru_maxrss,
        ru.ru_oublock,
        ru.ru_inblock,
        children.ru_nvcsw,
        children.ru_nivcsw,
        io_field("read_bytes"),
        io_field("write_bytes"),
        io_field("cancelled_write_bytes"),
    )
}

fn spin_cpu(budget: Duration) {
    let start = cpu_time();
    let mut x = 0u64;
    while cpu_time() - start < budget {
        for _ in 0..10_000 {
            x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
    }
}

/// This thread's CPU time.
fn thread_cpu_time() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// This thread's time waiting on a run queue so far (`run_delay`, the second figure of its
/// schedstat), ns.
fn own_run_delay() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .expect("reading /proc/thread-self/schedstat")
}

/// `contend T MS`: see the module doc.
fn contend(threads: usize, budget: Duration) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning to CPU 0"
        );
    }
    // Each thread reads its run_delay only once all have stopped spinning (a barrier: they
    // sleep, not queue, until then): a thread that read it while the others still spun could
    // wait on the run queue again before it exits, a wait the probes rightly see and the
    // reading missed (some 200 ms of it in an emulated 5.10 guest).
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let start = thread_cpu_time();
                let mut x = 0u64;
                while thread_cpu_time() - start < budget {
                    for _ in 0..10_000 {
                        x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
                    }
                }
                barrier.wait();
                own_run_delay()
            })
        })
        .collect();
    let waited: u64 = handles
        .into_iter()
        .map(|h| h.join().expect("a spinning thread"))
        .sum();
    println!("{{\"run_delay_ns\":{}}}", waited + own_run_delay());
}

/// Spins `budget` of CPU time, inlined into each caller so each has a loop of its own.
#[inline(always)]
fn spin_inline(budget: Duration, mul: u64, add: u64) -> u64 {
    let start = cpu_time();
    let mut x = add;
    while cpu_time() - start < budget {
        for _ in 0..200_000 {
            x = black_box(x.wrapping_mul(mul).wrapping_add(add));
        }
    }
    x
}

/// A function of its own that spins `budget` of CPU time.
#[inline(never)]
fn hot_a(budget: Duration) -> u64 {
    spin_inline(budget, 6_364_136_223_846_793_005, 1)
}

/// Another (its constants differ, so it is not merged with `hot_a`).
#[inline(never)]
fn hot_b(budget: Duration) -> u64 {
    spin_inline(budget, 2_862_933_555_777_941_757, 3)
}

/// Calls `hot_a` for 70% of `total` and `hot_b` for 30%, in ten rounds.
#[inline(never)]
fn outer(total: Duration) -> u64 {
    let mut x = 0;
    for _ in 0..10 {
        x ^= hot_a(total * 7 / 100);
        x ^= hot_b(total * 3 / 100);
    }
    x
}

/// This process's CPU time.
fn cpu_time() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// The time of clock `id`.
fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid and writable.
    unsafe { libc::clock_gettime(id, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A page-aligned buffer for O_DIRECT.
fn aligned(len: usize) -> &'static mut [u8] {
    // SAFETY: an anonymous private mapping of `len` bytes, never unmapped (the process is short).
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap failed");
        std::slice::from_raw_parts_mut(p.cast::<u8>(), len)
    }
}

fn enter_netns(name: &str) {
    let ns = File::open(format!("/run/netns/{name}")).expect("opening the netns");
    // SAFETY: setns on a valid namespace fd.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

fn echo_serve(addr: &str) {
    let listener = TcpListener::bind(addr).expect("bind");
    println!("listening");
    let (mut conn, _) = listener.accept().expect("accept");
    let mut len = [0u8; 8];
    conn.read_exact(&mut len).expect("length");
    let len = u64::from_le_bytes(len) as usize;
    let mut buf = vec![0u8; len];
    conn.read_exact(&mut buf).expect("data");
    conn.write_all(&buf).expect("echo");
}

fn send_and_receive(addr: &str, bytes: usize) {
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.write_all(&(bytes as u64).to_le_bytes()).unwrap();
    conn.write_all(&vec![0x5a; bytes]).unwrap();
    let mut back = vec![0u8; bytes];
    conn.read_exact(&mut back).expect("echo back");
}

/// This process's cgroup directory in the v2 hierarchy.
fn own_v2_cgroup() -> String {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a v2 line")
        .to_owned();
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(|m| format!("{m}{rel}"))
        .find(|p| std::path::Path::new(p).join("cgroup.procs").exists())
        .expect("the v2 mount")
}

/// `clone3(CLONE_INTO_CGROUP)` without a new stack (like fork): 0 in the child, its pid in the
/// parent.
fn clone_into_cgroup(cgroup: &File) -> libc::pid_t {
    /// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed; without CLONE_VM or a stack the
    // child runs on a copy of this address space, as after fork.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    assert!(
        pid >= 0,
        "clone3 failed: {}",
        std::io::Error::last_os_error()
    );
    pid as libc::pid_t
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--netns") {
        enter_netns(&args[1]);
        args.drain(..2);
    }
    let num = |i: usize| -> u64 {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("argument {i} must be a number: {args:?}"))
    };
    match args.first().map(String::as_str) {
        Some("spin") => {
            let until = Instant::now() + Duration::from_secs(num(1));
            let mut x = 0u64;
            while Instant::now() < until {
                for _ in 0..10_000 {
                    x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
                }
            }
        }
        Some("spin-ms") => spin_cpu(Duration::from_millis(num(1))),
        Some("contend") => contend(num(1) as usize, Duration::from_millis(num(2))),
        Some("hot-chain") => {
            black_box(outer(Duration::from_millis(num(1))));
        }
        Some("cmdline") => {
            // Its own pid, parent and arguments as /proc has them.
            let raw = std::fs::read("/proc/self/cmdline").expect("reading /proc/self/cmdline");
            let args: Vec<String> = raw
                .strip_suffix(&[0])
                .unwrap_or(&raw)
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "pid": std::process::id(),
                    "ppid": std::os::unix::process::parent_id(),
                    "cmdline": args,
                })
            );
        }
        Some("children") => {
            // One child at a time: N spinning MS ms of CPU, then one spinning LAST ms. The
            // kernel adds each child's final CPU time to the parent's RUSAGE_CHILDREN when it is
            // reaped, so the difference across one wait is that child's own, exit included.
            let mut budgets = vec![num(2); num(1) as usize];
            budgets.push(num(3));
            let cpu_ns = |ru: libc::rusage| {
                let us = |tv: libc::timeval| (tv.tv_sec * 1_000_000 + tv.tv_usec) as u64;
                (us(ru.ru_utime) + us(ru.ru_stime)) * 1_000
            };
            for ms in budgets {
                let before = cpu_ns(rusage(libc::RUSAGE_CHILDREN));
                // SAFETY: the child only spins and calls _exit.
                let pid = unsafe { libc::fork() };
                assert!(pid >= 0, "fork failed");
                if pid == 0 {
                    spin_cpu(Duration::from_millis(ms));
                    // SAFETY: leaves the child without running the parent's destructors.
                    unsafe { libc::_exit(0) };
                }
                // Reaped only once it has surely switched away for the last time: a reap adds
                // the child's CPU time as it stands, and a child reaped before its last switch
                // (seen in an emulated guest) would keep running its exit path after.
                // SAFETY: a zeroed siginfo_t (plain integers) is a valid value.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                // SAFETY: waits for our own child, leaving it unreaped (WNOWAIT); `info` is
                // valid and writable.
                unsafe {
                    libc::waitid(
                        libc::P_PID,
                        pid as libc::id_t,
                        &mut info,
                        libc::WEXITED | libc::WNOWAIT,
                    )
                };
                std::thread::sleep(Duration::from_millis(50));
                let mut status = 0;
                // SAFETY: reaps our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                let after = cpu_ns(rusage(libc::RUSAGE_CHILDREN));
                println!(r#"{{"child":{pid},"cpu_ns":{}}}"#, after - before);
            }
        }
        Some("sleepy") => {
            for _ in 0..num(1) {
                std::thread::sleep(Duration::from_millis(num(2)));
            }
        }
        Some("touch") => {
            let len = num(1) as usize * 4096;
            let mem = aligned(len);
            // SAFETY: advice on our own mapping.
            unsafe { libc::madvise(mem.as_mut_ptr().cast(), len, libc::MADV_NOHUGEPAGE) };
            for page in mem.chunks_mut(4096) {
                page[0] = 1;
            }
            black_box(&mem);
        }
        Some("fork") => {
            let budget = Duration::from_millis(num(2));
            let mut children = Vec::new();
            for _ in 0..num(1) {
                // SAFETY: the child only spins and calls _exit.
                let pid = unsafe { libc::fork() };
                assert!(pid >= 0, "fork failed");
                if pid == 0 {
                    spin_cpu(budget);
                    // SAFETY: leaves the child without running the parent's destructors.
                    unsafe { libc::_exit(0) };
                }
                children.push(pid);
            }
            for pid in children {
                let mut status = 0;
                // SAFETY: waits for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
            }
        }
        Some("direct-io") => {
            let (bytes, chunk) = (num(2) as usize, num(3) as usize);
            let mut dev = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&args[1])
                .expect("opening the device O_DIRECT");
            let buf = aligned(chunk);
            buf.fill(0xa5);
            for _ in 0..bytes / chunk {
                dev.write_all(buf).expect("direct write");
            }
            dev.sync_all().expect("fsync");
            let mut dev = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(&args[1])
                .expect("reopening the device");
            for _ in 0..bytes / chunk {
                dev.read_exact(buf).expect("direct read");
            }
        }
        Some("buffered") => {
            let mut f = File::create(&args[1]).expect("creating the file");
            f.write_all(&vec![0x3c; num(2) as usize])
                .expect("buffered write");
            f.sync_all().expect("fsync");
        }
        Some("write-threads") => {
            let (dir, bytes, threads) = (args[1].clone(), num(2), num(3));
            if threads == 0 {
                // The main thread writes it all: its figures stay live until the process exits.
                let mut f = File::create(format!("{dir}/main")).expect("creating a file");
                for _ in 0..bytes / (1 << 20) {
                    f.write_all(&[0x3c; 1 << 20]).expect("buffered write");
                }
            }
            let writers: Vec<_> = (0..threads)
                .map(|i| {
                    let path = format!("{dir}/t{i}");
                    std::thread::spawn(move || {
                        let mut f = File::create(path).expect("creating a file");
                        for _ in 0..(bytes / threads.max(1)) / (1 << 20) {
                            f.write_all(&[0x3c; 1 << 20]).expect("buffered write");
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().expect("writer thread");
            }
            let scratch = format!("{dir}/scratch");
            let mut f = File::create(&scratch).expect("creating the scratch file");
            f.write_all(&vec![0x5a; (bytes / 4) as usize])
                .expect("buffered write");
            drop(f);
            fs::remove_file(&scratch).expect("deleting the scratch file");
            if let Some(ms) = args.get(4) {
                std::thread::sleep(Duration::from_millis(ms.parse().expect("MS")));
            }
        }
        Some("mmap-readers") => {
            let file = File::open(&args[1]).expect("opening the file");
            let len = file.metadata().expect("file size").len() as usize;
            // SAFETY: advice on our own descriptor; clean pages are dropped from the cache.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            let (mut go_read, go_write) = std::io::pipe().expect("pipe");
            let mut children = Vec::new();
            for _ in 0..num(2) {
                // SAFETY: the child only maps, reads and calls _exit.
                let pid = unsafe { libc::fork() };
                assert!(pid >= 0, "fork failed");
                if pid == 0 {
                    drop(go_write);
                    let mut byte = [0u8; 1];
                    // Every child starts at once: when the parent closes the pipe.
                    let _ = go_read.read(&mut byte);
                    // SAFETY: a private read-only mapping of the whole file, never unmapped.
                    let p = unsafe {
                        libc::mmap(
                            std::ptr::null_mut(),
                            len,
                            libc::PROT_READ,
                            libc::MAP_PRIVATE,
                            file.as_raw_fd(),
                            0,
                        )
                    };
                    assert_ne!(p, libc::MAP_FAILED, "mmap failed");
                    // No read-around: each fault reads its own page, so the children meet on
                    // pages in flight instead of finding them read ahead.
                    // SAFETY: advice on our own mapping.
                    unsafe { libc::madvise(p, len, libc::MADV_RANDOM) };
                    // SAFETY: `len` bytes mapped readable at `p`.
                    let data = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) };
                    let sum = data
                        .iter()
                        .step_by(4096)
                        .fold(0u64, |a, b| a + u64::from(*b));
                    black_box(sum);
                    // SAFETY: leaves the child without running the parent's destructors.
                    unsafe { libc::_exit(0) };
                }
                children.push(pid);
            }
            drop(go_write);
            for pid in children {
                let mut status = 0;
                // SAFETY: waits for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
            }
        }
        Some("threads") => {
            let sleeps = num(2);
            let sleepers: Vec<_> = (0..num(1))
                .map(|_| {
                    std::thread::spawn(move || {
                        for _ in 0..sleeps {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    })
                })
                .collect();
            for s in sleepers {
                s.join().expect("sleeper thread");
            }
        }
        Some("hold") => {
            // SAFETY: the child only touches memory, sleeps and calls _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                let len = num(1) as usize * 4096;
                let mem = aligned(len);
                // SAFETY: advice on our own mapping.
                unsafe { libc::madvise(mem.as_mut_ptr().cast(), len, libc::MADV_NOHUGEPAGE) };
                for page in mem.chunks_mut(4096) {
                    page[0] = 1;
                }
                std::thread::sleep(Duration::from_millis(num(2)));
                black_box(&mem);
                // SAFETY: leaves the child without running the parent's destructors.
                unsafe { libc::_exit(0) };
            }
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        }
        Some("tcp-loop") => {
            let bytes = num(1) as usize;
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().unwrap().to_string();
            // SAFETY: the child serves one connection and calls _exit.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                drop(listener);
                send_and_receive(&addr, bytes);
                // SAFETY: as above.
                unsafe { libc::_exit(0) };
            }
            let (mut conn, _) = listener.accept().expect("accept");
            let mut len = [0u8; 8];
            conn.read_exact(&mut len).unwrap();
            let mut buf = vec![0u8; u64::from_le_bytes(len) as usize];
            conn.read_exact(&mut buf).unwrap();
            conn.write_all(&buf).unwrap();
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            assert_eq!(status, 0, "the client process failed");
        }
        Some("connects") => {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().unwrap();
            for _ in 0..num(1) {
                let client = std::net::TcpStream::connect(addr).expect("connect");
                let (server, _) = listener.accept().expect("accept");
                drop(client);
                drop(server);
            }
        }
        Some("tcp-echo-serve") => echo_serve(&args[1]),
        Some("tcp-send") => send_and_receive(&args[1], num(2) as usize),
        Some("monotonic") => {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is valid and writable.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
            println!("{}", ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128);
            return;
        }
        Some("cgroups") => {
            let base = own_v2_cgroup();
            let mut children = Vec::new();
            for i in 0..num(1) {
                let dir = format!("{base}/c{i}");
                fs::create_dir(&dir).expect("mkdir sub-cgroup");
                // SAFETY: the child joins its cgroup and sleeps; it is killed at the end.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    fs::write(format!("{dir}/cgroup.procs"), "0").expect("joining");
                    loop {
                        // SAFETY: pause(2) only waits for a signal.
                        unsafe { libc::pause() };
                    }
                }
                children.push((pid, dir));
            }
            std::thread::sleep(Duration::from_secs(num(2)));
            for (pid, _) in &children {
                // SAFETY: our own children.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            for (pid, dir) in &children {
                let mut status = 0;
                // SAFETY: our own child.
                unsafe { libc::waitpid(*pid, &mut status, 0) };
                let started = Instant::now();
                while fs::remove_dir(dir).is_err() && started.elapsed() < Duration::from_secs(5) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        Some("churn") => {
            // N times: make DIR/cI, start a process in it that forks one child there (both
            // exit), remove it. Without an exec, so thousands take seconds even when emulated.
            let dir = &args[1];
            for i in 0..num(2) {
                let sub = format!("{dir}/c{i}");
                fs::create_dir(&sub).expect("mkdir churn cgroup");
                // SAFETY: the child only joins the cgroup, forks once, waits and exits.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    let joined = fs::write(format!("{sub}/cgroup.procs"), "0").is_ok();
                    // SAFETY: the grandchild exits at once.
                    let grandchild = unsafe { libc::fork() };
                    if grandchild == 0 {
                        // SAFETY: _exit ends the process without running anything else.
                        unsafe { libc::_exit(0) };
                    }
                    let mut status = 0;
                    // SAFETY: our own child.
                    unsafe { libc::waitpid(grandchild, &mut status, 0) };
                    // SAFETY: as above.
                    unsafe { libc::_exit(if joined { 0 } else { 1 }) };
                }
                let mut status = 0;
                // SAFETY: our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert!(
                    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                    "joining {sub}"
                );
                let started = Instant::now();
                while let Err(e) = fs::remove_dir(&sub) {
                    assert!(
                        started.elapsed() < Duration::from_secs(5),
                        "rmdir {sub}: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        Some("subcgroup-spin") => {
            let own = fs::read_to_string("/proc/self/cgroup").unwrap();
            let rel = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .expect("a v2 line");
            let mount = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
                .iter()
                .find(|m| {
                    std::path::Path::new(m).join("cgroup.procs").exists()
                        && std::path::Path::new(&format!("{m}{rel}")).is_dir()
                })
                .expect("the v2 mount");
            let sub = format!("{mount}{rel}/sub");
            fs::create_dir(&sub).expect("mkdir sub-cgroup");
            // SAFETY: the child moves itself, spins and calls _exit.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                fs::write(format!("{sub}/cgroup.procs"), "0").expect("joining sub");
                spin_cpu(Duration::from_millis(num(1)));
                // SAFETY: as above.
                unsafe { libc::_exit(0) };
            }
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            // The child is reaped; the cgroup may take a moment to empty.
            let started = Instant::now();
            while fs::remove_dir(&sub).is_err() {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "cannot remove {sub}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Some("clone-into") => {
            let dir = File::open(&args[1]).expect("opening the cgroup directory");
            let pid = clone_into_cgroup(&dir);
            if pid == 0 {
                spin_cpu(Duration::from_millis(num(2)));
                // SAFETY: leaves the child without running the parent's destructors.
                unsafe { libc::_exit(0) };
            }
            println!(r#"{{"child":{pid}}}"#);
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        }
        other => panic!("unknown workload {other:?}; see the module doc"),
    }
    println!("{}", rusage_json());
}
