//! Every kernel metric against ground truth nobody here wrote: bytes moved with O_DIRECT to a
//! loop device, interface counters of loopback and of a veth pair, the process's own
//! `getrusage`, and the kernel's `cpu.stat`.

use std::{
    fs,
    process::{Command, Stdio},
};

use cleanroom_tests::{
    LoopDevice, Netns, Started, TestCgroup, VethPeer, block_device, cleanroom_bin, iface_counters,
    kernel_at_least, privileged, rel_diff, run_measured, sh, u64_at, workload_bin,
};

const MIB: u64 = 1 << 20;

fn workload() -> String {
    workload_bin!().to_str().unwrap().to_owned()
}

/// O_DIRECT to a loop device: bytes equal what was moved, ops equal bytes / request size, and
/// the latency histograms hold exactly that many I/Os.
#[test]
fn block_direct_io_on_a_loop_device_is_exact() {
    if !privileged("block_direct_io_on_a_loop_device_is_exact") {
        return;
    }
    let dev = LoopDevice::new(64 * MIB);
    let cg = TestCgroup::new("block");
    let chunk = 64 * 1024;
    let (bytes, ops) = (16 * MIB, 16 * MIB / chunk);
    // Warm the page cache with the workload binary, so that no read of it lands in the run.
    sh(&[&workload(), "sleepy", "0", "0"]);
    let (output, report) = run_measured(
        &cg,
        &[
            &workload(),
            "direct-io",
            &dev.path,
            &bytes.to_string(),
            &chunk.to_string(),
        ],
    );
    assert!(output.status.success(), "{output:?}");

    let loop_dev = block_device(&report, &dev.major_minor());
    assert_eq!(u64_at(loop_dev, "/write_bytes"), bytes, "{loop_dev:#}");
    assert_eq!(u64_at(loop_dev, "/read_bytes"), bytes, "{loop_dev:#}");
    assert_eq!(u64_at(loop_dev, "/write_ops"), ops, "{loop_dev:#}");
    assert_eq!(u64_at(loop_dev, "/read_ops"), ops, "{loop_dev:#}");
    // Histograms are per cgroup: they hold the loop device's I/Os, and I/O the run's own
    // tasks submitted elsewhere. 257 for 256 was seen for writes in 2 of ~10 full test runs
    // and once for reads on a fresh CI machine (a guess: a task that finds the root file
    // system's journal full writes it back itself; a page of a shared library evicted or not
    // yet read). Such I/O shows as other devices' bios; requests can merge bios, so a
    // histogram holds at most that many more. With none, the count is exact.
    let elsewhere = |key: &str| -> u64 {
        report["block_devices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["device"] != dev.major_minor().as_str())
            .map(|d| u64_at(d, key))
            .sum()
    };
    let (other_writes, other_reads) = (elsewhere("/write_ops"), elsewhere("/read_ops"));
    let write_requests = u64_at(&report, "/totals/block_write_latency/count");
    assert!(
        (ops..=ops + other_writes).contains(&write_requests),
        "{write_requests} write requests for {ops} loop writes and {other_writes} elsewhere: {:#}",
        report["block_devices"]
    );
    let read_requests = u64_at(&report, "/totals/block_read_latency/count");
    assert!(
        (ops..=ops + other_reads).contains(&read_requests),
        "{read_requests} read requests for {ops} loop reads and {other_reads} elsewhere: {:#}",
        report["block_devices"]
    );
    let buckets: u64 = report["totals"]["block_read_latency"]["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| u64_at(b, "/count"))
        .sum();
    assert_eq!(buckets, read_requests, "the buckets hold every read");
    let p50 = u64_at(&report, "/totals/block_read_latency/p50_ns");
    let max = u64_at(&report, "/totals/block_read_latency/max_ns");
    assert!(p50 > 0 && p50 <= max, "p50 {p50} max {max}");
    let other_read_bytes = elsewhere("/read_bytes");
    assert_eq!(
        u64_at(&report, "/totals/block_read_bytes"),
        bytes + other_read_bytes
    );
}

/// A buffered write with fsync, on a file system on a loop device, is charged to the run's
/// cgroup (the writer), not to the root or the kernel thread that may write it back.
#[test]
fn buffered_write_with_fsync_is_charged_to_the_run() {
    if !privileged("buffered_write_with_fsync_is_charged_to_the_run") {
        return;
    }
    let dev = LoopDevice::new(128 * MIB);
    sh(&[
        "mkfs.ext4",
        "-q",
        "-F",
        "-E",
        "lazy_itable_init=0,lazy_journal_init=0",
        &dev.path,
    ]);
    let mnt = tempfile::tempdir().unwrap();
    let mnt_path = mnt.path().to_str().unwrap().to_owned();
    sh(&["mount", "-o", "noatime", &dev.path, &mnt_path]);
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt_path.clone());

    let cg = TestCgroup::new("buffered");
    let file = format!("{mnt_path}/data");
    let bytes = 8 * MIB;
    let (output, report) = run_measured(&cg, &[&workload(), "buffered", &file, &bytes.to_string()]);
    assert!(output.status.success(), "{output:?}");
    let written = u64_at(block_device(&report, &dev.major_minor()), "/write_bytes");
    assert!(
        written >= bytes,
        "only {written} of {bytes} bytes charged to the run"
    );
    // Data, plus at most a little metadata submitted by the writer itself.
    assert!(
        written <= bytes + MIB,
        "{written} bytes charged for {bytes} written"
    );
    assert_eq!(fs::metadata(&file).unwrap().len(), bytes);
}

/// Two processes of the run talk over loopback in a network namespace of the test's own, whose
/// `lo` counts nothing else: bytes match its counters within 1% in both directions. (`lo`
/// counts after stripping its Ethernet header, so its bytes are IP bytes, like ours.) Received
/// packets match too; sent packets can only be fewer: pure ACKs the kernel sends without a
/// full socket never reach `cgroup_skb/egress`.
#[test]
fn loopback_traffic_matches_interface_counters() {
    if !privileged("loopback_traffic_matches_interface_counters") {
        return;
    }
    let ns = Netns::new("crlo");
    let cg = TestCgroup::new("loopback");
    let before = iface_counters(Some(&ns.0), "lo");
    let bytes = 8 * MIB;
    let (output, report) = run_measured(
        &cg,
        &[
            &workload(),
            "--netns",
            &ns.0,
            "tcp-loop",
            &bytes.to_string(),
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let after = iface_counters(Some(&ns.0), "lo");
    let d: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let (lo_rx, lo_tx) = (d[0], d[2]);

    let tx = u64_at(&report, "/totals/net_tx_bytes");
    let rx = u64_at(&report, "/totals/net_rx_bytes");
    assert!(
        tx >= 2 * bytes,
        "sent {tx} bytes for 2 x {bytes} of payload"
    );
    assert!(
        rel_diff(tx, lo_tx) < 0.01,
        "run sent {tx} B, lo says {lo_tx} B (IP level)"
    );
    assert!(
        rel_diff(rx, lo_rx) < 0.01,
        "run received {rx} B, lo says {lo_rx} B (IP level)"
    );
    let rx_packets = u64_at(&report, "/totals/net_rx_packets");
    assert!(
        rel_diff(rx_packets, d[1]) < 0.01,
        "run received {rx_packets} packets, lo {}",
        d[1]
    );
    let tx_packets = u64_at(&report, "/totals/net_tx_packets");
    assert!(
        tx_packets <= d[3],
        "run sent {tx_packets} packets, more than lo's {}",
        d[3]
    );
    assert_eq!(
        u64_at(&report, "/totals/tcp_connect_latency/count"),
        1,
        "one connect"
    );
    assert_eq!(
        u64_at(&report, "/totals/processes_forked"),
        1,
        "the client process"
    );
}

/// A veth pair to a peer namespace of the test's own, link-local addresses, static neighbours
/// and no IPv6, so the interface carries only the run's traffic. The run's bytes match the
/// root-side interface's counters within 1% both ways, and a busy bystander run with no
/// sockets, measured at the same time, is charged no network at all.
#[test]
fn veth_traffic_matches_interface_counters_and_spares_bystanders() {
    if !privileged("veth_traffic_matches_interface_counters_and_spares_bystanders") {
        return;
    }
    let peer = VethPeer::new("crpeer", 77);
    let mut server = peer.echo_server(&workload_bin!());

    // The bystander spins (so it is often the task a softirq interrupts) and has no sockets.
    let bystander_cg = TestCgroup::new("bystander");
    let bystander_dir = tempfile::tempdir().unwrap();
    let bystander_report = bystander_dir.path().join("r.json");
    let bystander = Command::new(cleanroom_bin())
        .args(["run", "-q", "--cgroup-parent"])
        .arg(bystander_cg.path())
        .arg("--report")
        .arg(&bystander_report)
        .args(["--", &workload(), "spin", "3"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    let cg = TestCgroup::new("veth");
    let before = peer.ip_counters();
    let bytes = 8 * MIB;
    let (output, report) = run_measured(
        &cg,
        &[
            &workload(),
            "tcp-send",
            &format!("{}:5001", peer.peer_addr),
            &bytes.to_string(),
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let after = peer.ip_counters();
    assert!(server.wait().unwrap().success(), "the peer failed");
    let d: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let (if_rx, if_tx) = (d[0], d[2]);
    let a = &peer.host_if;

    let tx = u64_at(&report, "/totals/net_tx_bytes");
    let rx = u64_at(&report, "/totals/net_rx_bytes");
    assert!(
        tx >= bytes && rx >= bytes,
        "tx {tx} rx {rx} for {bytes} each way"
    );
    assert!(
        rel_diff(tx, if_tx) < 0.01,
        "run sent {tx} B, {a} sent {if_tx} B (IP level)"
    );
    assert!(
        rel_diff(rx, if_rx) < 0.01,
        "run received {rx} B, {a} received {if_rx} B (IP level)"
    );

    let status = bystander.wait_with_output().unwrap().status;
    assert!(status.success(), "bystander run failed");
    let other: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&bystander_report).unwrap()).unwrap();
    for metric in [
        "net_rx_bytes",
        "net_tx_bytes",
        "net_rx_packets",
        "net_tx_packets",
    ] {
        assert_eq!(
            u64_at(&other, &format!("/totals/{metric}")),
            0,
            "bystander charged {metric}"
        );
    }
    assert!(
        u64_at(&other, "/totals/cpu_time_ns") > 1_000_000_000,
        "the bystander did spin"
    );
}

/// A program touching N fresh pages: at least N user faults, and all faults agree with the
/// process's own getrusage minor + major within 1%.
#[test]
fn page_faults_match_getrusage() {
    if !privileged("page_faults_match_getrusage") {
        return;
    }
    let cg = TestCgroup::new("faults");
    let pages = 20_000;
    let (output, report) = run_measured(&cg, &[&workload(), "touch", &pages.to_string()]);
    assert!(output.status.success(), "{output:?}");
    let rusage: serde_json::Value = serde_json::from_slice(output.stdout.trim_ascii()).unwrap();
    let own = u64_at(&rusage, "/minflt") + u64_at(&rusage, "/majflt");
    let user = u64_at(&report, "/totals/page_faults_user");
    let kernel = u64_at(&report, "/totals/page_faults_kernel");
    assert!(
        user >= pages,
        "{user} user faults for {pages} pages touched"
    );
    assert!(
        rel_diff(user + kernel, own) < 0.01,
        "probes counted {user}+{kernel} faults, getrusage {own}"
    );
    assert!(report["totals"]["page_faults_major"].is_u64(), "{report:#}");
    // Unavailable only where the kernel keeps no memory.peak (cgroup v2 before 5.19).
    match report["totals"]["memory_peak_bytes"].as_u64() {
        Some(peak) => assert!(peak >= pages * 4096, "{report:#}"),
        None => assert!(!kernel_at_least(5, 19), "no memory_peak_bytes: {report:#}"),
    }
}

/// As above, with a bystander outside the run forking and exiting on the same CPU all along:
/// each of its forks and exits takes that CPU's pending fork and exit copies from the run's
/// cgroup, which must add them to the run's entry first, so the counts stay exact.
#[test]
fn forks_and_exits_interleaved_with_a_bystanders_are_all_counted() {
    if !privileged("forks_and_exits_interleaved_with_a_bystanders_are_all_counted") {
        return;
    }
    let bystander = Started::new(
        Command::new("taskset")
            .args(["-c", "0", "sh", "-c", "while :; do /bin/true; done"])
            .stdout(Stdio::null())
            .spawn()
            .expect("taskset"),
    );
    let cg = TestCgroup::new("forks-bystander");
    let k = 40;
    let command = [
        "taskset",
        "-c",
        "0",
        &workload(),
        "fork",
        &k.to_string(),
        "2",
    ];
    let (output, report) = run_measured(&cg, &command);
    drop(bystander);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(u64_at(&report, "/totals/processes_forked"), k);
    assert_eq!(u64_at(&report, "/totals/processes_exited"), k + 1);
}

/// K short-lived children: exactly K forks, K + 1 exits (the children and the command itself),
/// and their CPU time in the run, equal to cpu.stat.
#[test]
fn forks_exits_and_their_cpu_time_are_counted() {
    if !privileged("forks_exits_and_their_cpu_time_are_counted") {
        return;
    }
    let cg = TestCgroup::new("forks");
    let k = 20;
    let (output, report) = run_measured(&cg, &[&workload(), "fork", &k.to_string(), "20"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(u64_at(&report, "/totals/processes_forked"), k);
    assert_eq!(u64_at(&report, "/totals/processes_exited"), k + 1);
    let cpu = u64_at(&report, "/totals/cpu_time_ns");
    assert!(
        cpu >= k * 20_000_000,
        "{cpu} ns of CPU for {k} children of 20 ms each"
    );
    let kernel = cg.cpu_usage_ns();
    assert!(
        rel_diff(cpu, kernel) < 0.01,
        "probes {cpu} ns, cpu.stat {kernel} ns"
    );
}

/// A sub-cgroup the command makes and removes before the end still counts: the kernel's
/// cgroup_mkdir/rmdir hooks keep its lineage until the run has read it.
#[test]
fn removed_sub_cgroups_still_count() {
    if !privileged("removed_sub_cgroups_still_count") {
        return;
    }
    let cg = TestCgroup::new("subcg");
    let (output, report) = run_measured(&cg, &[&workload(), "subcgroup-spin", "300"]);
    assert!(output.status.success(), "{output:?}");
    let cpu = u64_at(&report, "/totals/cpu_time_ns");
    let kernel = cg.cpu_usage_ns();
    assert!(
        cpu >= 300_000_000,
        "the sub-cgroup's 300 ms are missing: {cpu} ns"
    );
    assert!(
        rel_diff(cpu, kernel) < 0.01,
        "probes {cpu} ns, cpu.stat {kernel} ns"
    );
}
