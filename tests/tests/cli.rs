//! The command line's contract: exit codes, errors, Ctrl-C, cleanup, demo and doctor.

use std::{
    fs,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use cleanroom_tests::{TestCgroup, cleanroom_bin, privileged, rel_diff, run_measured, u64_at};

#[test]
fn failing_command_keeps_its_exit_code_and_gets_a_report() {
    if !privileged("failing_command_keeps_its_exit_code_and_gets_a_report") {
        return;
    }
    let cg = TestCgroup::new("fail");
    let (output, report) = run_measured(&cg, &["sh", "-c", "exit 7"]);
    assert_eq!(output.status.code(), Some(7), "{output:?}");
    assert_eq!(u64_at(&report, "/exit_code"), 7);
    assert_eq!(u64_at(&report, "/schema_version"), 1);
    // Everything is measurable on this host; only the sampled anonymous-memory peak needs a run
    // longer than one metrics interval, and a note says so — and where cgroup v2 has no
    // memory.peak (before 5.19), the peak charge is unavailable too.
    let no_peak =
        cg.path().join("memory.current").exists() && !cleanroom_tests::kernel_at_least(5, 19);
    let expected: &[&str] = if no_peak {
        &["memory_peak_bytes", "memory_anon_peak_bytes"]
    } else {
        &["memory_anon_peak_bytes"]
    };
    assert_eq!(
        report["unavailable"],
        serde_json::json!(expected),
        "{report:#}"
    );
    assert!(
        report["notes"].to_string().contains("shorter than that"),
        "{:#}",
        report["notes"]
    );
    assert!(cg.children().is_empty(), "run cgroup left behind");
}

#[test]
fn unknown_command_is_exit_2_and_leaves_no_cgroup() {
    if !privileged("unknown_command_is_exit_2_and_leaves_no_cgroup") {
        return;
    }
    let cg = TestCgroup::new("unknown");
    let output = Command::new(cleanroom_bin())
        .args(["run", "--cgroup-parent"])
        .arg(cg.path())
        .args(["--", "no-such-command-cleanroom-test", "arg"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("command not found: no-such-command-cleanroom-test"),
        "stderr: {stderr}"
    );
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one-line message expected: {stderr}"
    );
    assert!(
        cg.children().is_empty(),
        "cgroup left behind: {:?}",
        cg.children()
    );
}

#[test]
fn not_root_is_exit_2_naming_the_privilege() {
    if !privileged("not_root_is_exit_2_naming_the_privilege") {
        return;
    }
    // A copy that an unprivileged user can execute, wherever the build tree lives.
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("cleanroom");
    fs::copy(cleanroom_bin(), &bin).unwrap();
    let output = Command::new(&bin)
        .args(["run", "--", "true"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("needs root"), "stderr: {stderr}");
    assert!(stderr.contains("CAP_BPF"), "stderr: {stderr}");
}

#[test]
fn interrupt_reaches_command_removes_cgroup_and_writes_report() {
    if !privileged("interrupt_reaches_command_removes_cgroup_and_writes_report") {
        return;
    }
    let cg = TestCgroup::new("sigint");
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("r.json");
    let child = Command::new(cleanroom_bin())
        .args(["run", "-q", "--cgroup-parent"])
        .arg(cg.path())
        .arg("--report")
        .arg(&report_path)
        .args(["--", "sleep", "30"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the command is in its cgroup, then interrupt Cleanroom (not the command).
    let mut waited = 0;
    while cg.children().is_empty()
        || fs::read_to_string(cg.children()[0].join("cgroup.procs"))
            .unwrap_or_default()
            .is_empty()
    {
        thread::sleep(Duration::from_millis(20));
        waited += 1;
        assert!(waited < 500, "the run never started");
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(130),
        "sleep should die of SIGINT; stderr: {stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&report_path).expect("report written")).unwrap();
    assert_eq!(report["interrupted"]["signal"], "SIGINT", "{report:#}");
    assert_eq!(u64_at(&report, "/exit_code"), 130);
    assert!(report["totals"]["cpu_time_ns"].is_u64(), "{report:#}");
    assert!(
        cg.children().is_empty(),
        "cgroup left behind: {:?}",
        cg.children()
    );
}

#[test]
fn leftover_processes_are_killed_and_counted() {
    if !privileged("leftover_processes_are_killed_and_counted") {
        return;
    }
    let cg = TestCgroup::new("leftover");
    // The command exits at once, leaving a busy grandchild behind.
    let (output, report) = run_measured(
        &cg,
        &[
            "sh",
            "-c",
            "(while :; do :; done) >/dev/null 2>&1 & sleep 0.5",
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let measured = u64_at(&report, "/totals/cpu_time_ns");
    let kernel = cg.cpu_usage_ns();
    assert!(
        measured > 300_000_000,
        "the busy grandchild's CPU is missing: {measured} ns"
    );
    assert!(
        rel_diff(measured, kernel) < 0.01,
        "probes {measured} ns, cpu.stat {kernel} ns"
    );
    assert!(cg.children().is_empty(), "cgroup left behind");
}

#[test]
fn demo_shows_every_metric_beside_the_kernel() {
    if !privileged("demo_shows_every_metric_beside_the_kernel") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("demo.json");
    let output = Command::new(cleanroom_bin())
        .args(["demo", "--report"])
        .arg(&report_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed: {stderr}");
    for metric in [
        "cpu_time_ns",
        "context_switches_voluntary",
        "context_switches_involuntary",
    ] {
        assert!(stderr.contains(metric), "summary lacks {metric}: {stderr}");
    }
    assert!(
        stderr.contains("cpu.stat usage_usec"),
        "no kernel figure beside: {stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&report_path).unwrap()).unwrap();
    let cpu = u64_at(&report, "/totals/cpu_time_ns");
    // Two threads spin until each has used 500 ms of CPU.
    assert!(
        cpu >= 1_000_000_000,
        "demo used 2 x 500 ms of CPU, measured {cpu} ns"
    );
    let kernel = u64_at(&report, "/kernel/cpu_usage_ns");
    assert!(
        rel_diff(cpu, kernel) < 0.01,
        "probes {cpu} ns, cpu.stat {kernel} ns"
    );
}

/// The benchmark's floor (`cleanroom attach --floor`) has an empty program on every hook the
/// probes attach here: without one, `cargo xtask bench` cannot tell what a hook costs.
#[test]
fn the_benchmark_floor_covers_every_hook() {
    if !privileged("the_benchmark_floor_covers_every_hook") {
        return;
    }
    let hooks = |floor: bool| -> std::collections::BTreeSet<String> {
        let mut cmd = Command::new(cleanroom_bin());
        cmd.args(["attach", "--limit", "1s"]);
        if floor {
            cmd.arg("--floor");
        }
        let output = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "attach (floor: {floor}) failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line: serde_json::Value =
            serde_json::from_str(stdout.lines().next().unwrap_or("")).expect("one JSON line");
        line["programs"]
            .as_array()
            .expect("programs")
            .iter()
            .map(|p| p["hook"].as_str().unwrap().to_owned())
            .collect()
    };
    let (probes, floor) = (hooks(false), hooks(true));
    assert!(probes.len() > 10, "{probes:?}");
    let uncovered: Vec<&String> = probes.difference(&floor).collect();
    assert!(uncovered.is_empty(), "no floor program on {uncovered:?}");
}

#[test]
fn doctor_attaches_every_hook() {
    if !privileged("doctor_attaches_every_hook") {
        return;
    }
    let output = Command::new(cleanroom_bin())
        .arg("doctor")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "doctor failed:\n{stdout}");
    assert!(
        stdout.contains("cleanroom can run on this host"),
        "{stdout}"
    );
    // Every metric, but memory_peak_bytes where the kernel keeps no memory.peak (v2 before
    // 5.19), which doctor says.
    for line in stdout.lines().filter(|l| l.contains("UNAVAILABLE")) {
        assert!(
            !cleanroom_tests::kernel_at_least(5, 19)
                && line.trim_start().starts_with("memory_peak_bytes "),
            "{line}\n{stdout}"
        );
    }
}

#[test]
fn the_ci_example_passes_a_healthy_suite() {
    if !privileged("the_ci_example_passes_a_healthy_suite") {
        return;
    }
    let cg = TestCgroup::new("ci-example");
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ci.toml");
    let (output, report) = cleanroom_tests::run_measured_with(
        &cg,
        &["--config", config.to_str().unwrap()],
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/null bs=1M count=64 2>/dev/null",
        ],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{output:?}\nSLOs: {:#}\nthresholds: {:#}\nnotes: {:#}",
        report["slos"],
        report["thresholds"],
        report["notes"]
    );
    assert_eq!(report["verdict"], "pass", "{report:#}");
    assert!(
        report["slos"].as_array().is_some_and(|s| s.len() >= 3),
        "{report:#}"
    );
}
