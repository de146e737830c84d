//! Monitoring, thresholds, SLOs and limits on real runs, with the exit codes of the contract:
//! the command's own failure first, else 3 when an SLO or threshold failed, else 0.

use std::{fs, process::Command};

use cleanroom_tests::{
    TestCgroup, cleanroom_bin, kernel_at_least, privileged, run_measured_with, temp_file, u64_at,
    workload_bin,
};

fn workload() -> String {
    workload_bin!().to_str().unwrap().to_owned()
}

fn status_of<'a>(list: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    list.as_array()
        .and_then(|l| l.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {list:#}"))
}

/// A busy run breaches a CPU threshold (reported at once, as an event) and fails an SLO:
/// exit 3. The same run under generous limits passes everything: exit 0. A time series is kept
/// every interval, with aggregates.
#[test]
fn thresholds_and_slos_breached_and_not() {
    if !privileged("thresholds_and_slos_breached_and_not") {
        return;
    }
    let (_d1, strict) = temp_file(
        "strict.toml",
        "[performance_monitoring]\nmetrics_interval = \"200ms\"\n\
         [performance_monitoring.thresholds]\nmax_cpu_usage_percent = 50\n\
         [[slos]]\nname = \"quick\"\nobjective = \"cpu_time <= 500ms\"\n",
    );
    let cg = TestCgroup::new("strict");
    let (output, report) =
        run_measured_with(&cg, &["--config", &strict], &[&workload(), "spin", "2"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "stderr: {stderr}");
    assert!(
        stderr.contains("threshold breached: cpu_percent"),
        "stderr: {stderr}"
    );
    assert_eq!(report["verdict"], "fail");
    let t = status_of(
        &report["thresholds"],
        "performance_monitoring.thresholds.max_cpu_usage_percent",
    );
    assert_eq!(t["status"], "fail", "{t:#}");
    assert!(t["peak"].as_f64().unwrap() > 80.0, "{t:#}");
    assert_eq!(status_of(&report["slos"], "quick")["status"], "fail");
    let events = report["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["kind"] == "threshold_breached"),
        "{events:#?}"
    );
    let series = report["series"].as_array().unwrap();
    assert!(
        series.len() >= 8,
        "2 s at 200 ms gave only {} points",
        series.len()
    );
    let cpu = &report["aggregates"]["cpu_percent"];
    assert!(cpu["avg"].as_f64().unwrap() > 70.0, "{cpu:#}");
    assert!(
        cpu["trend_per_sec"].is_f64() && cpu["p90"].is_f64(),
        "{cpu:#}"
    );
    assert!(
        !report["insights"].as_array().unwrap().is_empty(),
        "no insights: {report:#}"
    );

    let (_d2, easy) = temp_file(
        "easy.toml",
        "[performance_monitoring]\nmetrics_interval = \"200ms\"\n\
         [performance_monitoring.thresholds]\nmax_cpu_usage_percent = 400\n\
         [[slos]]\nname = \"roomy\"\nobjective = \"cpu_time <= 30s\"\n",
    );
    let (_d3, slos) = temp_file(
        "slo.toml",
        "[[slos]]\nname = \"wall\"\nobjective = \"wall_time < 20s\"\n",
    );
    let cg = TestCgroup::new("easy");
    let (output, report) = run_measured_with(
        &cg,
        &["--config", &easy, "--slo", &slos],
        &[&workload(), "spin", "1"],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(report["verdict"], "pass", "{report:#}");
    assert_eq!(status_of(&report["slos"], "roomy")["status"], "pass");
    assert_eq!(status_of(&report["slos"], "wall")["status"], "pass");
}

/// The command's own failure wins over a failed SLO.
#[test]
fn command_failure_code_comes_first() {
    if !privileged("command_failure_code_comes_first") {
        return;
    }
    let (_d, slos) = temp_file(
        "slo.toml",
        "[[slos]]\nname = \"never\"\nobjective = \"wall_time < 1ms\"\n",
    );
    let cg = TestCgroup::new("failfirst");
    let (output, report) =
        run_measured_with(&cg, &["--slo", &slos], &["sh", "-c", "sleep 0.1; exit 5"]);
    assert_eq!(output.status.code(), Some(5));
    assert_eq!(status_of(&report["slos"], "never")["status"], "fail");
}

/// memory.max (or its v1 twin) stops a run that allocates beyond it, and the report says so.
#[test]
fn memory_limit_stops_a_run_that_allocates_beyond_it() {
    if !privileged("memory_limit_stops_a_run_that_allocates_beyond_it") {
        return;
    }
    let (_d, config) = temp_file(
        "limit.toml",
        "[resource_limits]\nmax_memory_usage_bytes = \"64MiB\"\n",
    );
    let cg = TestCgroup::new("oom");
    // 256 MiB of pages, four times the limit.
    let (output, report) = run_measured_with(
        &cg,
        &["--config", &config],
        &[&workload(), "touch", "65536"],
    );
    assert_eq!(
        output.status.code(),
        Some(137),
        "killed by SIGKILL: {output:?}"
    );
    let events = report["events"].as_array().unwrap();
    let oom = events
        .iter()
        .find(|e| e["kind"] == "oom_kill")
        .unwrap_or_else(|| panic!("no oom_kill event: {events:#?}"));
    assert!(
        oom["message"].as_str().unwrap().contains("64.0 MiB"),
        "{oom:#}"
    );
    // Unavailable only where the kernel keeps no memory.peak (cgroup v2 before 5.19).
    match report["totals"]["memory_peak_bytes"].as_u64() {
        Some(peak) => assert!(peak <= 64 << 20, "peak {peak} above the 64 MiB limit"),
        None => assert!(!kernel_at_least(5, 19), "no memory_peak_bytes: {report:#}"),
    }
    let insights = report["insights"].to_string();
    assert!(insights.contains("memory limit"), "{insights}");
}

/// A run over resource_limits.max_test_execution_time is stopped (SIGTERM) and reported.
#[test]
fn over_time_runs_are_stopped() {
    if !privileged("over_time_runs_are_stopped") {
        return;
    }
    let (_d, config) = temp_file(
        "time.toml",
        "[resource_limits]\nmax_test_execution_time = \"1s\"\nresource_cleanup_timeout = \"2s\"\n",
    );
    let cg = TestCgroup::new("timeout");
    let (output, report) = run_measured_with(&cg, &["--config", &config], &["sleep", "30"]);
    assert_eq!(
        output.status.code(),
        Some(143),
        "sleep dies of SIGTERM: {output:?}"
    );
    assert!(u64_at(&report, "/wall_time_ns") < 5_000_000_000);
    let events = report["events"].to_string();
    assert!(events.contains("\"timeout\""), "{events}");
}

/// Bad configuration: exit 2, naming file, line and key; nothing runs.
#[test]
fn bad_config_names_file_line_and_key() {
    if !privileged("bad_config_names_file_line_and_key") {
        return;
    }
    let (_d, config) = temp_file(
        "bad.toml",
        "[performance_monitoring]\n\nmetric_interval = \"1s\"\n",
    );
    let marker = tempfile::tempdir().unwrap();
    let touched = marker.path().join("ran");
    let output = Command::new(cleanroom_bin())
        .args([
            "run",
            "--config",
            &config,
            "--",
            "touch",
            touched.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{config}:3: key `metric_interval`")),
        "{stderr}"
    );
    assert!(!touched.exists(), "the command ran despite a bad config");
}

/// A limit this host cannot enforce is an error before the command starts, unless the config
/// says to only monitor it.
#[test]
fn unenforceable_limit_is_an_error_unless_monitored() {
    if !privileged("unenforceable_limit_is_an_error_unless_monitored") {
        return;
    }
    let (_d, config) = temp_file(
        "net.toml",
        "[resource_limits]\nmax_network_bandwidth_bytes_per_sec = \"1MiB\"\n",
    );
    let marker = tempfile::tempdir().unwrap();
    let touched = marker.path().join("ran");
    let cg = TestCgroup::new("unenforceable");
    let output = Command::new(cleanroom_bin())
        .args(["run", "--cgroup-parent"])
        .arg(cg.path())
        .args([
            "--config",
            &config,
            "--",
            "touch",
            touched.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("max_network_bandwidth_bytes_per_sec cannot be enforced"),
        "{stderr}"
    );
    assert!(!touched.exists(), "the command ran");
    assert!(cg.children().is_empty(), "cgroup left behind");

    let (_d2, monitored) = temp_file(
        "net.toml",
        "[resource_limits]\nmax_network_bandwidth_bytes_per_sec = \"1MiB\"\nmonitor_only = true\n",
    );
    let (output, report) = run_measured_with(
        &cg,
        &["--config", &monitored],
        &["touch", touched.to_str().unwrap()],
    );
    assert!(output.status.success(), "{output:?}");
    assert!(touched.exists());
    assert!(
        report["notes"].to_string().contains("monitored only"),
        "{report:#}"
    );
    assert!(fs::metadata(&touched).is_ok());
}
