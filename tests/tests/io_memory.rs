//! What a run wrote, the memory it used, and how often it blocked — the way people mean them —
//! against figures nobody here wrote: the workload's own `getrusage` and `/proc/self/io`, the
//! loop device's own write counter, and the size of the files a real `tar` made.

use std::fs;

use cleanroom_tests::{
    ScratchFs, TestCgroup, kernel_at_least, privileged, rel_diff, run_measured, run_measured_with,
    temp_file, u64_at, workload_bin,
};

const MIB: u64 = 1 << 20;

fn workload() -> String {
    workload_bin!().to_str().unwrap().to_owned()
}

fn rusage(output: &std::process::Output) -> serde_json::Value {
    let last = output
        .stdout
        .trim_ascii()
        .rsplit(|b| *b == b'\n')
        .next()
        .unwrap_or_default();
    serde_json::from_slice(last).unwrap_or_else(|e| panic!("workload output: {e}: {output:?}"))
}

/// Threads writing through the page cache (no fsync), and a scratch file deleted before
/// writeback: `io_write_bytes` and `io_cancelled_write_bytes` equal the process's own
/// `/proc/self/io` within 1%, and `ru_oublock` too. The device level can't see these writes as
/// the run's on a host without cgroup writeback, and the report then says so.
#[test]
fn buffered_writes_of_threads_match_proc_io_and_getrusage() {
    if !privileged("buffered_writes_of_threads_match_proc_io_and_getrusage") {
        return;
    }
    let scratch = ScratchFs::new(256 * MIB);
    let cg = TestCgroup::new("written");
    let bytes = 64 * MIB;
    let (output, report) = run_measured(
        &cg,
        &[
            &workload(),
            "write-threads",
            &scratch.mount,
            &bytes.to_string(),
            "4",
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let own = rusage(&output);
    let written = u64_at(&report, "/totals/io_write_bytes");
    let cancelled = u64_at(&report, "/totals/io_cancelled_write_bytes");
    let proc_written = u64_at(&own, "/io_write_bytes");
    assert!(
        proc_written >= bytes + bytes / 4,
        "/proc/self/io says {proc_written} for {bytes} + {} written",
        bytes / 4
    );
    assert!(
        rel_diff(written, proc_written) < 0.01,
        "run wrote {written} B, /proc/self/io {proc_written} B"
    );
    let oublock = u64_at(&own, "/oublock") * 512;
    assert!(
        rel_diff(written, oublock) < 0.01,
        "run wrote {written} B, getrusage ru_oublock {oublock} B"
    );
    let proc_cancelled = u64_at(&own, "/io_cancelled_write_bytes");
    assert!(
        proc_cancelled >= bytes / 4 && rel_diff(cancelled, proc_cancelled) < 0.01,
        "run cancelled {cancelled} B, /proc/self/io {proc_cancelled} B"
    );
    let block = u64_at(&report, "/totals/block_write_bytes");
    if block + MIB < written - cancelled {
        let notes = report["notes"].to_string();
        assert!(
            notes.contains("io_write_bytes") && notes.contains("block_write_bytes"),
            "device level saw {block} of {written} B and no note says why: {notes}"
        );
    }
}

/// A new user's job: `tar czf` of incompressible files onto a file system of its own, then
/// `sync`. What the run wrote is within 2% of the archive's size and of the bytes the loop
/// device itself counted written.
#[test]
fn a_tar_and_sync_job_writes_what_the_device_counts() {
    if !privileged("a_tar_and_sync_job_writes_what_the_device_counts") {
        return;
    }
    let source = tempfile::tempdir().expect("source dir");
    let mut noise = vec![0u8; 8 * MIB as usize];
    for i in 0..6 {
        // A cheap incompressible stream (xorshift), different per file.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ i;
        for chunk in noise.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        fs::write(source.path().join(format!("f{i}")), &noise).expect("source file");
    }
    let scratch = ScratchFs::new(256 * MIB);
    let archive = format!("{}/a.tgz", scratch.mount);
    let script = format!(
        "tar czf {archive} -C {} . && sync",
        source.path().to_str().unwrap()
    );
    let before = scratch.device_written_bytes();
    let cg = TestCgroup::new("tar");
    let (output, report) = run_measured(&cg, &["sh", "-c", &script]);
    assert!(output.status.success(), "{output:?}");
    let device = scratch.device_written_bytes() - before;
    let size = fs::metadata(&archive).expect("the archive").len();
    let written = u64_at(&report, "/totals/io_write_bytes");
    assert!(size >= 48 * MIB, "archive of {size} B");
    assert!(
        rel_diff(written, size) < 0.02,
        "run wrote {written} B for an archive of {size} B"
    );
    assert!(
        rel_diff(written, device) < 0.02,
        "run wrote {written} B, the loop device counted {device} B"
    );
    // With cgroup writeback (memory and io on v2: pure v2 hosts), the flusher's bios carry the
    // run's cgroup, and the device level holds the run's writes too.
    let root_controllers =
        fs::read_to_string(cleanroom_tests::v2_mount().join("cgroup.subtree_control"))
            .unwrap_or_default();
    let writeback = ["memory", "io"]
        .iter()
        .all(|c| root_controllers.split_whitespace().any(|w| w == *c));
    if writeback {
        let at_device = u64_at(
            cleanroom_tests::block_device(&report, &scratch.dev.major_minor()),
            "/write_bytes",
        );
        assert!(
            rel_diff(at_device, device) < 0.02,
            "with cgroup writeback the run's writes to the device were {at_device} B, the \
             device counted {device} B"
        );
    }
}

/// A process holding 64 MiB of anonymous memory for several samples: its peak RSS equals what
/// its parent's getrusage says of it (`ru_maxrss` of the waited-for child) exactly, the anonymous peak holds the 64 MiB (and not much more),
/// and neither exceeds the cgroup's charge.
#[test]
fn memory_peaks_match_getrusage() {
    if !privileged("memory_peaks_match_getrusage") {
        return;
    }
    let cg = TestCgroup::new("memory");
    let pages: u64 = 16_384;
    let (_dir, config) = temp_file(
        "c.toml",
        "[performance_monitoring]\nmetrics_interval = \"100ms\"\n",
    );
    let (output, report) = run_measured_with(
        &cg,
        &["--config", &config],
        &[&workload(), "hold", &pages.to_string(), "600"],
    );
    assert!(output.status.success(), "{output:?}");
    let own = rusage(&output);
    let rss = u64_at(&report, "/totals/process_peak_rss_bytes");
    assert_eq!(
        rss,
        u64_at(&own, "/children_maxrss_kib") * 1024,
        "peak RSS against getrusage"
    );
    assert!(rss >= pages * 4096, "{rss} B of RSS for {pages} pages");
    let anon = u64_at(&report, "/totals/memory_anon_peak_bytes");
    // Before 5.13 memory.stat is not flushed when read: each CPU may still hold up to
    // MEMCG_CHARGE_BATCH (32) pages of changes it has not added to the cgroup's figure.
    let lag = if kernel_at_least(5, 13) {
        0
    } else {
        32 * 4096 * std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
    };
    assert!(
        (pages * 4096 - lag..pages * 4096 + 32 * MIB).contains(&anon),
        "anonymous peak {anon} B for {} B held",
        pages * 4096
    );
    // Without the kernel's own peak (cgroup v2 before 5.19) there is none, and the report
    // says why; a sampled maximum is not passed off as one.
    let v2_memory = cg.path().join("memory.current").exists();
    if v2_memory && !kernel_at_least(5, 19) {
        assert!(
            report["totals"]["memory_peak_bytes"].is_null(),
            "{report:#}"
        );
        let notes = report["notes"].to_string();
        assert!(notes.contains("no memory.peak"), "{notes}");
        return;
    }
    let charged = u64_at(&report, "/totals/memory_peak_bytes");
    assert!(
        anon <= charged,
        "anonymous {anon} B above the charge {charged} B"
    );
}

/// Threads that block: voluntary switches equal the kernel's own `nvcsw` (getrusage, which
/// folds each thread's count into its process before the thread's last switch) and processes
/// the same (their parent reads a child's count after its last switch).
#[test]
fn voluntary_switches_match_getrusage() {
    if !privileged("voluntary_switches_match_getrusage") {
        return;
    }
    let cg = TestCgroup::new("switches");
    let threads = 200;
    let (output, report) = run_measured(&cg, &[&workload(), "threads", &threads.to_string(), "3"]);
    assert!(output.status.success(), "{output:?}");
    let own = rusage(&output);
    let counted = u64_at(&report, "/totals/context_switches_voluntary");
    let nvcsw = u64_at(&own, "/nvcsw");
    // The workload's own last steps after it read its figures: printing them, and exiting (a
    // few blocking steps; up to 4 seen in a slow emulated guest). Each of the threads would add
    // one if their last switches were counted.
    assert!(
        (nvcsw..=nvcsw + 10).contains(&counted),
        "{counted} voluntary switches counted, getrusage says {nvcsw} ({threads} threads)"
    );

    let cg = TestCgroup::new("switches-forks");
    let (output, report) = run_measured(&cg, &[&workload(), "fork", "50", "5"]);
    assert!(output.status.success(), "{output:?}");
    let own = rusage(&output);
    let counted = u64_at(&report, "/totals/context_switches_voluntary");
    let nvcsw = u64_at(&own, "/nvcsw") + u64_at(&own, "/children_nvcsw");
    assert!(
        (nvcsw..=nvcsw + 10).contains(&counted),
        "{counted} voluntary switches counted, getrusage says {nvcsw} (50 processes)"
    );
}

/// Four processes reading one file through shared mappings, its pages dropped from the cache
/// first: major faults equal what getrusage says of them (the kernel's per-task `maj_flt`), at
/// least the cgroup's own `memory.stat pgmajfault`, and a note explains any excess.
#[test]
fn major_faults_match_getrusage() {
    if !privileged("major_faults_match_getrusage") {
        return;
    }
    let scratch = ScratchFs::new(64 * MIB);
    let file = format!("{}/data", scratch.mount);
    fs::write(&file, vec![0x42u8; 16 * MIB as usize]).expect("the file");
    cleanroom_tests::sh(&["sync"]);
    let cg = TestCgroup::new("majflt");
    let (output, report) = run_measured(&cg, &[&workload(), "mmap-readers", &file, "4"]);
    assert!(output.status.success(), "{output:?}");
    let own = rusage(&output);
    let theirs = u64_at(&own, "/majflt") + u64_at(&own, "/children_majflt");
    let counted = u64_at(&report, "/totals/page_faults_major");
    assert!(theirs >= 4096, "{theirs} major faults for 4096 pages read");
    assert!(
        (theirs..=theirs + 2).contains(&counted),
        "{counted} major faults counted, getrusage says {theirs}"
    );
    let cgroup = u64_at(&report, "/kernel/memory_stat_pgmajfault");
    assert!(counted >= cgroup, "{counted} < memory.stat's {cgroup}");
    if counted > cgroup {
        assert!(
            report["notes"].to_string().contains("pgmajfault"),
            "{counted} vs {cgroup} unexplained: {:#}",
            report["notes"]
        );
    }
}

/// Disk-write thresholds watch what the run writes, when it writes it: a process whose main
/// thread wrote 80 MiB through the page cache and then sleeps breaches both the write-rate threshold and the
/// disk-usage limit while it is still alive (its live threads are read at each sample), though
/// not a byte of it reached the device as the run's on a host without cgroup writeback.
#[test]
fn disk_write_thresholds_see_buffered_writes_as_they_happen() {
    if !privileged("disk_write_thresholds_see_buffered_writes_as_they_happen") {
        return;
    }
    let scratch = ScratchFs::new(256 * MIB);
    let (_dir, config) = temp_file(
        "c.toml",
        "[performance_monitoring]\nmetrics_interval = \"100ms\"\n\
         [performance_monitoring.thresholds]\nmax_disk_write_bytes_per_sec = \"4MiB\"\n\
         [resource_limits]\nmonitor_only = true\nmax_disk_usage_bytes = \"16MiB\"\n",
    );
    let cg = TestCgroup::new("write-thresholds");
    let sleep_ms = 1500;
    let (output, report) = run_measured_with(
        &cg,
        &["--config", &config],
        &[
            &workload(),
            "write-threads",
            &scratch.mount,
            &(64 * MIB).to_string(),
            "0",
            &sleep_ms.to_string(),
        ],
    );
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let wall = u64_at(&report, "/wall_time_ns");
    for name in [
        "performance_monitoring.thresholds.max_disk_write_bytes_per_sec",
        "resource_limits.max_disk_usage_bytes",
    ] {
        let t = report["thresholds"]
            .as_array()
            .and_then(|l| l.iter().find(|t| t["name"] == name))
            .unwrap_or_else(|| panic!("no {name}: {:#}", report["thresholds"]));
        assert_eq!(t["status"], "fail", "{t:#}");
        let breach = report["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "threshold_breached" && e["subject"] == name)
            .unwrap_or_else(|| panic!("no breach of {name}: {:#}", report["events"]));
        let at = u64_at(breach, "/t_ns");
        assert!(
            at + sleep_ms / 2 * 1_000_000 < wall,
            "{name} breached at {at} ns of {wall} ns: only when the writer exited"
        );
    }
}
