//! What the probes cost a run, as its report says, against the kernel's own accounting of the
//! same programs: BPF run-time statistics switched on by the test for the whole run and read
//! from the loaded programs (by name) while the run's command still sleeps.

use std::{
    collections::BTreeSet,
    fs,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use cleanroom_tests::{TestCgroup, cleanroom_bin, privileged, run_measured, workload_bin};
use serde_json::Value;

/// Puts `kernel.bpf_stats_enabled` back as it was.
struct StatsSysctl(String);

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl StatsSysctl {
    fn on() -> Self {
        let was = fs::read_to_string(SYSCTL).expect("reading the sysctl");
        fs::write(SYSCTL, "1").expect("switching BPF statistics on");
        Self(was.trim().to_owned())
    }
}

impl Drop for StatsSysctl {
    fn drop(&mut self) {
        let _ = fs::write(SYSCTL, &self.0);
    }
}

/// Ids of the loaded programs named `name`.
fn program_ids(name: &str) -> BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(name))
        .map(|p| p.id())
        .collect()
}

/// Run time (ns) and runs of every loaded program named `name` but those in `old` (another
/// run's, which the kernel may free a moment after that run ended), summed.
fn program_stats(name: &str, old: &BTreeSet<u32>) -> (u64, u64) {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(name) && !old.contains(&p.id()))
        .fold((0, 0), |(t, n), p| {
            (t + p.run_time().as_nanos() as u64, n + p.run_count())
        })
}

fn hook<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["probes"]["hooks"]
        .as_array()
        .and_then(|hooks| hooks.iter().find(|h| h["hook"] == name))
        .unwrap_or_else(|| panic!("no {name} in {:#}", report["probes"]))
}

#[test]
fn the_fault_hooks_cost_agrees_with_the_kernels_statistics_of_the_program() {
    if !privileged("the_fault_hooks_cost_agrees_with_the_kernels_statistics_of_the_program") {
        return;
    }
    let cg = TestCgroup::new("probe-cost");
    let dir = tempfile::tempdir().unwrap();
    let (report_path, marker) = (dir.path().join("r.json"), dir.path().join("touched"));
    let _stats = StatsSysctl::on();
    let old = program_ids("page_fault_user");
    let script = format!(
        "{} touch 300000 && : > {} && sleep 3",
        workload_bin!().display(),
        marker.display()
    );
    let mut child = Command::new(cleanroom_bin())
        .args(["run", "-q", "--no-store", "--cgroup-parent"])
        .arg(cg.path())
        .arg("--report")
        .arg(&report_path)
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting cleanroom");
    let started = Instant::now();
    while !marker.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the workload never finished"
        );
        assert!(child.try_wait().unwrap().is_none(), "cleanroom ended early");
        thread::sleep(Duration::from_millis(50));
    }
    // The faults are over; the program is still loaded while the command sleeps.
    let (truth_ns, truth_runs) = program_stats("page_fault_user", &old);
    assert!(child.wait().unwrap().success());
    let report: Value = serde_json::from_str(&fs::read_to_string(&report_path).unwrap()).unwrap();
    let h = hook(&report, "tp_btf/page_fault_user");
    let events = h["events"].as_u64().unwrap();
    let cost = h["cpu_ns"].as_u64().unwrap();
    println!(
        "page_fault_user: report {events} events, {cost} ns ({:.1} ns/event); kernel {truth_runs} \
         runs, {truth_ns} ns ({:.1} ns/run)",
        h["ns_per_event"].as_f64().unwrap(),
        truth_ns as f64 / truth_runs.max(1) as f64
    );
    assert_eq!(h["events_are"], "counted");
    // The run's faults, counted for the run, are among the program's runs on this host (the
    // rest: the host's other faults meanwhile).
    assert!(
        events >= 300_000 && events <= truth_runs,
        "{events} vs {truth_runs}"
    );
    // Measured in windows by Cleanroom, over the whole run by the kernel: within 30%.
    let truth_share = truth_ns as f64 * events as f64 / truth_runs as f64;
    let ratio = cost as f64 / truth_share;
    assert!((0.7..1.3).contains(&ratio), "estimate/kernel = {ratio:.2}");
    let p = &report["probes"];
    let (low, mid, high) = (
        p["low_ns"].as_u64().unwrap(),
        p["cpu_ns"].as_u64().unwrap(),
        p["high_ns"].as_u64().unwrap(),
    );
    assert!(low <= mid && mid <= high && mid >= cost, "{p:#}");
    let cpu = report["totals"]["cpu_time_ns"].as_u64().unwrap();
    let share = p["share_of_cpu"].as_f64().unwrap();
    assert!(
        (share - mid as f64 / cpu as f64).abs() < 1e-9,
        "{share} vs {mid}/{cpu}"
    );
    cleanroom_tests::assert_matches_schema(&report);
}

#[test]
fn a_short_run_says_what_its_probes_cost_and_leaves_the_statistics_off() {
    if !privileged("a_short_run_says_what_its_probes_cost_and_leaves_the_statistics_off") {
        return;
    }
    let before = fs::read_to_string(SYSCTL).unwrap();
    let cg = TestCgroup::new("probe-cost-short");
    let workload = workload_bin!();
    let (out, report) = run_measured(&cg, &[workload.to_str().unwrap(), "touch", "20000"]);
    assert!(out.status.success(), "{out:?}");
    let p = &report["probes"];
    assert!(
        p["cpu_ns"].as_u64().is_some_and(|ns| ns > 0),
        "no estimate for a 20,000-fault run: {p:#}"
    );
    assert!(hook(&report, "tp_btf/page_fault_user")["events"].as_u64() >= Some(20_000));
    assert!(p["not_included"].as_array().is_some());
    // The statistics the run switched on went off with it: the sysctl is as it was.
    assert_eq!(fs::read_to_string(SYSCTL).unwrap(), before);
    // The Markdown says it in one line, as the summary does.
    let text = cleanroom_tests::markdown_of(&report);
    assert!(
        text.lines().any(|l| l.starts_with("Cleanroom's probes: ≈")
            && l.contains(" to ")
            && l.contains("of the run's CPU")),
        "{text}"
    );
}
