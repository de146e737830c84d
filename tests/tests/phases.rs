//! Phases (`cleanroom mark NAME`): a script of three phases — 300 ms of CPU, a 200 ms sleep,
//! 500 ms of CPU — gets each phase's CPU time as the run cgroup's `cpu.stat` grew between the
//! marks (read by the script just before and just after each), wall times as the script's own
//! clock saw them, and a missed phase SLO fails the run with exit code 3.

use std::fs;

use cleanroom_tests::{TestCgroup, cleanroom_bin, privileged, run_measured_with, u64_at, v2_mount};

#[test]
fn each_phase_has_its_own_figures_and_slos() {
    if !privileged("each_phase_has_its_own_figures_and_slos") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("marks.log");
    let slo = dir.path().join("slo.toml");
    fs::write(
        &slo,
        r#"
[[slos]]
name = "nap is short"
phase = "nap"
objective = "wall_time <= 2s"

[[slos]]
name = "second spin is cheap"
phase = "spin2"
objective = "cpu_time <= 400ms"
"#,
    )
    .unwrap();
    let w = env!("CARGO_BIN_EXE_cleanroom-test-workload");
    let mark = cleanroom_bin();
    // Just before and just after each mark: the time (ns) and the cgroup's CPU (µs), as the
    // kernel has them. The mark's own moment lies between the two, so each phase's true CPU
    // and wall time lie between what the notes around its two ends bracket: a narrow bracket
    // here (a `cleanroom mark` costs about a millisecond), a wide one in an emulated guest.
    let script = format!(
        r#"set -e
cg={mount}$(sed -n 's/^0:://p' /proc/self/cgroup)
note() {{ t=$(date +%s%N); echo "$t $(sed -n 's/^usage_usec //p' $cg/cpu.stat)" >> {log}; }}
note; {mark} mark spin1; note
{w} spin-ms 300 > /dev/null
note; {mark} mark nap; note
sleep 0.2
note; {mark} mark spin2; note
{w} spin-ms 500 > /dev/null
"#,
        mount = v2_mount().display(),
        log = log.display(),
        mark = mark.display(),
    );
    let cg = TestCgroup::new("phases");
    let (output, report) = run_measured_with(
        &cg,
        &["--slo", slo.to_str().unwrap()],
        &["sh", "-c", &script],
    );
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    cleanroom_tests::assert_matches_schema(&report);
    let phases = report["phases"].as_array().expect("phases");
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["spin1", "nap", "spin2"], "{report:#}");

    let notes: Vec<(u64, u64)> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| {
            let (t, cpu) = l.split_once(' ').unwrap();
            (t.parse().unwrap(), cpu.parse::<u64>().unwrap() * 1_000)
        })
        .collect();
    assert_eq!(notes.len(), 6, "{notes:?}");
    // (before, after) each mark.
    let around: Vec<((u64, u64), (u64, u64))> = notes.chunks(2).map(|c| (c[0], c[1])).collect();
    // The last phase ends with the run: the cgroup's CPU at the end is the report's.
    let end_cpu = u64_at(&report, "/kernel/cpu_usage_ns");
    for (i, phase) in phases.iter().enumerate() {
        let cpu = u64_at(phase, "/totals/cpu_time_ns");
        let wall = u64_at(phase, "/wall_time_ns");
        let (begin_before, begin_after) = around[i];
        let (cpu_lo, cpu_hi) = match around.get(i + 1) {
            Some((end_before, end_after)) => {
                (end_before.1 - begin_after.1, end_after.1 - begin_before.1)
            }
            None => (end_cpu - begin_after.1, end_cpu - begin_before.1),
        };
        let walls = around.get(i + 1).map(|(end_before, end_after)| {
            (end_before.0 - begin_after.0, end_after.0 - begin_before.0)
        });
        eprintln!(
            "{}: {:.3} ms of CPU (cpu.stat: {:.3} to {:.3} ms), {:.3} ms of wall time (the \
             script's clock: {:?} ms)",
            names[i],
            cpu as f64 / 1e6,
            cpu_lo as f64 / 1e6,
            cpu_hi as f64 / 1e6,
            wall as f64 / 1e6,
            walls.map(|(lo, hi)| (lo as f64 / 1e6, hi as f64 / 1e6))
        );
        if let Some((lo, hi)) = walls {
            assert!(
                wall + 20_000_000 >= lo && wall <= hi + 20_000_000,
                "{}: {wall} ns of wall time, the script saw {lo} to {hi}",
                names[i]
            );
        }
        if names[i] != "nap" {
            assert!(
                cpu as f64 >= cpu_lo as f64 * 0.98 && cpu as f64 <= cpu_hi as f64 * 1.02,
                "{}: {cpu} ns of CPU, cpu.stat grew {cpu_lo} to {cpu_hi}",
                names[i]
            );
        }
    }
    let slos = report["slos"].as_array().unwrap();
    let status = |name: &str| {
        slos.iter().find(|s| s["name"] == name).unwrap()["status"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(status("nap is short"), "pass", "{slos:#?}");
    assert_eq!(status("second spin is cheap"), "fail", "{slos:#?}");
    assert_eq!(slos[1]["phase"], "spin2");
}

/// `cleanroom mark` outside a run: exit 2, one line saying why.
#[test]
fn marking_outside_a_run_is_a_clear_error() {
    let output = std::process::Command::new(cleanroom_bin())
        .args(["mark", "build"])
        .env_remove("CLEANROOM_RUN_SOCKET")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not inside a `cleanroom run`"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
