//! Processes that leave the run's cgroup: each is named in the report's `escaped` list and in a
//! note, since what it does afterwards is missing from the totals; moving within the run's own
//! sub-cgroups is not leaving.

use std::{fs, os::unix::fs::MetadataExt as _};

use cleanroom_tests::{
    TestCgroup, assert_matches_schema, privileged, run_measured, u64_at, v2_mount, workload_bin,
};

fn workload() -> String {
    workload_bin!().to_str().unwrap().to_owned()
}

/// The only entry of `escaped`.
fn only_escape(report: &serde_json::Value) -> &serde_json::Value {
    let escaped = report["escaped"]
        .as_array()
        .unwrap_or_else(|| panic!("no `escaped` in the report: {report:#}"));
    assert_eq!(escaped.len(), 1, "one process left: {escaped:#?}");
    &escaped[0]
}

fn notes(report: &serde_json::Value) -> Vec<String> {
    report["notes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// CPU time a workload reported for itself (`getrusage`), in ns, from its JSON line.
fn own_cpu_ns(stdout: &[u8]) -> u64 {
    let line = String::from_utf8_lossy(stdout)
        .lines()
        .rfind(|l| l.contains("utime_us"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no rusage line in {}", String::from_utf8_lossy(stdout)));
    let ru: serde_json::Value = serde_json::from_str(&line).expect("rusage JSON");
    (u64_at(&ru, "/utime_us") + u64_at(&ru, "/stime_us")) * 1_000
}

/// The command moves itself to the root cgroup and spins there: the run's totals miss that
/// CPU time, and the report says which process left and where to.
/// The run's CPU time equals what the kernel charged the run's cgroup (`cpu.stat` of its
/// parent, which holds nothing else) — to within 1% or 2 ms — and so leaves out the `outside`
/// ns a process spent after leaving.
fn assert_charged_only_the_run(counted: u64, run_cpu_stat: u64, outside: u64) {
    assert!(
        counted.abs_diff(run_cpu_stat) <= (run_cpu_stat / 100).max(2_000_000),
        "counted {counted} ns, the kernel charged the run {run_cpu_stat} ns (and {outside} ns \
         outside it)"
    );
}

#[test]
fn a_command_moving_itself_to_the_root_cgroup_is_named() {
    if !privileged("a_command_moving_itself_to_the_root_cgroup_is_named") {
        return;
    }
    let cg = TestCgroup::new("escape");
    let v2 = v2_mount();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let script = format!(
        "echo $$ > {}; echo $$ > {}/cgroup.procs; exec {} spin 2",
        pid_file.display(),
        v2.display(),
        workload()
    );
    let (output, report) = run_measured(&cg, &["sh", "-c", &script]);
    assert!(output.status.success(), "{output:?}");
    assert_matches_schema(&report);
    let pid: u64 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let root_id = fs::metadata(&v2).unwrap().ino();

    let escape = only_escape(&report);
    assert_eq!(u64_at(escape, "/pid"), pid, "{escape:#}");
    assert_eq!(escape["comm"], "sh", "{escape:#}");
    assert_eq!(escape["via"], "moved", "{escape:#}");
    assert_eq!(u64_at(escape, "/to_cgroup_id"), root_id, "{escape:#}");
    assert_eq!(
        escape["to_cgroup_path"],
        v2.display().to_string(),
        "{escape:#}"
    );
    let expected = format!(
        "process {pid} (sh) left the run's cgroup for {} (id {root_id}): what it did after \
         leaving is not counted",
        v2.display()
    );
    assert!(
        notes(&report).iter().any(|n| n.starts_with(&expected)),
        "no note `{expected}` in {:#?}",
        notes(&report)
    );
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!text.contains("cannot be detected"), "{text}");

    // What the note is about: the CPU time spent outside is missing from the totals.
    let counted = u64_at(&report, "/totals/cpu_time_ns");
    let outside = own_cpu_ns(&output.stdout);
    eprintln!(
        "escape to the root cgroup: run counted {counted} ns (cpu.stat of the run's parent: {} \
         ns); the process used {outside} ns itself",
        cg.cpu_usage_ns()
    );
    assert!(outside >= 1_500_000_000, "the spin used only {outside} ns");
    // The run holds what the kernel charged the run's cgroup, and so not the spin: had the
    // process been counted after leaving, the totals would exceed cpu.stat by its time.
    assert_charged_only_the_run(counted, cg.cpu_usage_ns(), outside);
}

/// A child started straight in another cgroup (`clone3(CLONE_INTO_CGROUP)`) never joins the
/// run at all: it is named too, with the CPU time its cgroup charged it.
#[test]
fn a_child_cloned_into_another_cgroup_is_named() {
    if !privileged("a_child_cloned_into_another_cgroup_is_named") {
        return;
    }
    let cg = TestCgroup::new("clone-into");
    let dst = TestCgroup::new("clone-into-dst");
    let (output, report) = run_measured(
        &cg,
        &[
            &workload(),
            "clone-into",
            dst.path().to_str().unwrap(),
            "1000",
        ],
    );
    assert!(output.status.success(), "{output:?}");
    assert_matches_schema(&report);
    let child: serde_json::Value = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find(|l| l.starts_with(r#"{"child""#))
        .map(|l| serde_json::from_str(l).unwrap())
        .expect("the workload prints its child's pid");
    let escape = only_escape(&report);
    assert_eq!(
        u64_at(escape, "/pid"),
        u64_at(&child, "/child"),
        "{escape:#}"
    );
    assert_eq!(escape["via"], "forked_into", "{escape:#}");
    assert_eq!(
        u64_at(escape, "/to_cgroup_id"),
        fs::metadata(dst.path()).unwrap().ino(),
        "{escape:#}"
    );
    assert_eq!(
        escape["to_cgroup_path"],
        dst.path().display().to_string(),
        "{escape:#}"
    );
    assert!(
        notes(&report)
            .iter()
            .any(|n| n.contains("CLONE_INTO_CGROUP")),
        "{:#?}",
        notes(&report)
    );
    let counted = u64_at(&report, "/totals/cpu_time_ns");
    let outside = dst.cpu_usage_ns();
    eprintln!(
        "clone into another cgroup: run counted {counted} ns; the child's cgroup {outside} ns"
    );
    assert!(outside >= 1_000_000_000, "{outside}");
    // Not compared with the parent's own time: starting it took up to 389 ms in a loaded
    // emulated guest.
    assert_charged_only_the_run(counted, cg.cpu_usage_ns(), outside);
}

/// Moving into a sub-cgroup of the run's own — the command itself, or a child it forked — is
/// not leaving: no escape, and the CPU time spent there is counted.
#[test]
fn moving_into_a_sub_cgroup_of_the_run_is_not_leaving() {
    if !privileged("moving_into_a_sub_cgroup_of_the_run_is_not_leaving") {
        return;
    }
    let cg = TestCgroup::new("stay");
    let v2 = v2_mount();
    let script = format!(
        "own=$(sed -n 's/^0:://p' /proc/self/cgroup); sub={}$own/sub; mkdir $sub; \
         echo $$ > $sub/cgroup.procs; exec {} spin 1",
        v2.display(),
        workload()
    );
    for command in [
        vec!["sh".to_owned(), "-c".to_owned(), script],
        vec![workload(), "subcgroup-spin".to_owned(), "300".to_owned()],
    ] {
        let command: Vec<&str> = command.iter().map(String::as_str).collect();
        let (output, report) = run_measured(&cg, &command);
        assert!(output.status.success(), "{command:?}: {output:?}");
        assert!(
            report.get("escaped").is_none(),
            "{command:?}: an escape within the run: {:#}",
            report["escaped"]
        );
        assert!(
            !notes(&report).iter().any(|n| n.contains("left the run")),
            "{command:?}: {:#?}",
            notes(&report)
        );
        let cpu = u64_at(&report, "/totals/cpu_time_ns");
        assert!(cpu >= 300_000_000, "{command:?}: only {cpu} ns counted");
    }
}
