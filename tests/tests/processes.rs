//! Each process of a run in the report's `processes`, against the kernel's own per-process
//! accounting as its parent saw it (`getrusage(RUSAGE_CHILDREN)` across each reap).

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use cleanroom_tests::{
    Started, TestCgroup, cleanroom_bin, privileged, rel_diff, run_measured, u64_at, v2_mount,
    workload_bin,
};

/// 20 processes of 50 ms of CPU and one of 500 ms, one after the other: each is listed with
/// its CPU time within 2% of what the kernel gave its parent's `getrusage(RUSAGE_CHILDREN)`
/// when it was reaped (its whole life, exit included), and the processes' CPU adds up to the
/// run's within 1%.
#[test]
fn every_process_is_listed_with_its_own_cpu_time() {
    if !privileged("every_process_is_listed_with_its_own_cpu_time") {
        return;
    }
    let w = workload_bin!().to_str().unwrap().to_owned();
    let cg = TestCgroup::new("processes");
    let (output, report) = run_measured(&cg, &[&w, "children", "20", "50", "500"]);
    assert!(output.status.success(), "{output:?}");
    cleanroom_tests::assert_matches_schema(&report);
    // The parent printed each child's pid and CPU time.
    let own: BTreeMap<u64, u64> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("child").is_some())
        .map(|v| (u64_at(&v, "/child"), u64_at(&v, "/cpu_ns")))
        .collect();
    assert_eq!(own.len(), 21, "{own:?}");
    let processes = report["processes"]
        .as_array()
        .expect("processes in the report");
    let by_pid: BTreeMap<u64, &serde_json::Value> =
        processes.iter().map(|p| (u64_at(p, "/pid"), p)).collect();
    for (pid, getrusage_ns) in &own {
        let p = by_pid
            .get(pid)
            .unwrap_or_else(|| panic!("process {pid} is not listed: {processes:#?}"));
        let listed = u64_at(p, "/cpu_time_ns");
        assert!(
            rel_diff(listed, *getrusage_ns) < 0.02,
            "process {pid}: listed {listed} ns, its parent's getrusage {getrusage_ns} ns"
        );
        assert_eq!(p["exit_code"], 0);
        assert!(u64_at(p, "/end_ns") > u64_at(p, "/start_ns"), "{p:#}");
        // A child forked without exec has its parent's command line.
        assert_eq!(
            p["command_line"].as_str(),
            Some(format!("{w} children 20 50 500").as_str()),
            "{p:#}"
        );
    }
    let sum: u64 = processes.iter().map(|p| u64_at(p, "/cpu_time_ns")).sum();
    let run = u64_at(&report, "/totals/cpu_time_ns");
    eprintln!(
        "{} processes listed, their CPU {sum} ns, the run's {run} ns",
        processes.len()
    );
    assert!(
        rel_diff(sum, run) < 0.01,
        "processes {sum} ns vs run {run} ns"
    );
    assert_eq!(
        processes.len() as u64,
        u64_at(&report, "/totals/processes_exited"),
        "every process that ended is listed"
    );

    // The Markdown lists the busiest and groups them by program.
    let md = cleanroom_tests::markdown_of(&report);
    assert!(
        md.contains(&format!(
            "**Processes** ({}): the most CPU",
            processes.len()
        )),
        "{md}"
    );
    let group = md
        .lines()
        .find(|l| l.starts_with("| `cleanroom-test-workload` |"))
        .unwrap_or_else(|| panic!("no group of the workload in:\n{md}"));
    assert!(
        group.starts_with("| `cleanroom-test-workload` | 22 |"),
        "{group}"
    );
}

/// A shell running programs: each program's command line as it was given (quoted where an
/// argument holds a space, cut at 256 bytes and marked so), its parent the shell, and the
/// shell's own exit code; against `/proc/PID/cmdline` of the same commands read by the
/// programs themselves.
#[test]
fn command_lines_and_parents_are_the_processes_own() {
    if !privileged("command_lines_and_parents_are_the_processes_own") {
        return;
    }
    let w = workload_bin!().to_str().unwrap().to_owned();
    let long = "x".repeat(300);
    let script = format!(
        "for i in 1 2 3; do {w} cmdline \"marker $i\" plain-$i; done; {w} cmdline {long}; exit 3"
    );
    let cg = TestCgroup::new("cmdlines");
    let (output, report) = run_measured(&cg, &["sh", "-c", &script]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    cleanroom_tests::assert_matches_schema(&report);
    // Each program printed its pid, its parent and its /proc/self/cmdline.
    let own: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("cmdline").is_some())
        .collect();
    assert_eq!(own.len(), 4, "{own:?}");
    let processes = report["processes"].as_array().unwrap();
    let by_pid: BTreeMap<u64, &serde_json::Value> =
        processes.iter().map(|p| (u64_at(p, "/pid"), p)).collect();
    let shell = processes
        .iter()
        .find(|p| p["command"] == "sh")
        .unwrap_or_else(|| panic!("no shell in {processes:#?}"));
    assert_eq!(shell["exit_code"], 3, "{shell:#}");
    // The script is longer than what is kept: its start, quoted, and the cut marked.
    let shell_line = shell["command_line"].as_str().unwrap();
    let kept = &script[..256 - "sh\0-c\0".len()];
    assert_eq!(shell_line, format!("sh -c '{kept}'"), "{shell:#}");
    assert_eq!(shell["command_line_truncated"], true, "{shell:#}");
    for (i, o) in own.iter().enumerate() {
        let p = by_pid
            .get(&u64_at(o, "/pid"))
            .unwrap_or_else(|| panic!("{o} not listed: {processes:#?}"));
        assert_eq!(p["ppid"], o["ppid"], "{p:#}");
        assert_eq!(p["ppid"], shell["pid"], "{p:#}");
        let args: Vec<&str> = o["cmdline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let line = p["command_line"].as_str().unwrap();
        if i < 3 {
            assert_eq!(
                args,
                [
                    w.as_str(),
                    "cmdline",
                    &format!("marker {}", i + 1),
                    &format!("plain-{}", i + 1)
                ]
            );
            assert_eq!(
                line,
                format!("{w} cmdline 'marker {}' plain-{}", i + 1, i + 1),
                "{p:#}"
            );
            assert!(p.get("command_line_truncated").is_none(), "{p:#}");
        } else {
            let whole = args.join(" ");
            assert!(whole.len() > 256, "{whole}");
            assert_eq!(p["command_line_truncated"], true, "{p:#}");
            assert!(
                whole.starts_with(line),
                "{line} is not the start of {whole}"
            );
            assert!(line.len() >= 250, "{line}");
        }
    }
}

/// The per-process entries the programs keep (command lines, socket traffic by process) are
/// counted as they are made and dropped, so that the exit of a process with none can skip
/// looking for them while no process has any. Held against the maps themselves, read with
/// bpftool from outside the run while it sleeps: the count equals the entries, and a process
/// that left the run and ended outside it had its command line dropped at its exit.
#[test]
fn per_process_entries_are_counted_and_dropped_outside_the_run() {
    let test = "per_process_entries_are_counted_and_dropped_outside_the_run";
    if !privileged(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("left");
    let cg = TestCgroup::new("process-entries");
    let w = workload_bin!().display().to_string();
    // Two processes with sockets and programs of their own; one that leaves the run for the
    // root cgroup and ends there; then the command sleeps while the test looks.
    let script = format!(
        "{w} tcp-loop 200000 >/dev/null\n\
         sh -c 'echo $$ > {root}/cgroup.procs && exec sleep 0.3' >/dev/null 2>&1 &\n\
         echo $! > {marker}\n\
         exec sleep 4",
        root = v2_mount().display(),
        marker = marker.display()
    );
    let run = Started::new(
        Command::new(cleanroom_bin())
            .args(["run", "-q", "--cgroup-parent"])
            .arg(cg.path())
            .arg("--report")
            .arg(dir.path().join("report.json"))
            .args(["--", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting cleanroom run"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let left: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the script did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Ended: gone, or a zombie (its parent, now `sleep`, never reaps it).
    while std::fs::read_to_string(format!("/proc/{left}/stat")).is_ok_and(|stat| {
        stat.rsplit(") ")
            .next()
            .is_some_and(|s| !s.starts_with('Z'))
    }) {
        assert!(
            Instant::now() < deadline,
            "the process that left did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (counted, lines, nets) = process_entries();
    assert!(
        !lines.contains(&left),
        "{left} ended outside the run: {lines:?}"
    );
    assert!(!lines.is_empty(), "the sleeping command's line");
    assert_eq!(
        counted,
        (lines.len() + nets) as u64,
        "{lines:?}, {nets} by process"
    );
    let out = run.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The newest loaded Cleanroom object's count of per-process entries, the tgids its
/// command-line map holds, and how many processes its traffic-by-process map holds, read with
/// bpftool.
fn process_entries() -> (u64, Vec<u32>, usize) {
    let bpftool = |args: &[&str]| -> serde_json::Value {
        let out = Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .expect("bpftool");
        assert!(out.status.success(), "bpftool {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let maps = bpftool(&["map", "show"]);
    let newest = |name: &str| -> String {
        maps.as_array()
            .unwrap()
            .iter()
            .filter(|m| m["name"] == name)
            .filter_map(|m| m["id"].as_u64())
            .max()
            .unwrap_or_else(|| panic!("no map {name} loaded"))
            .to_string()
    };
    let entries = |name: &str| -> Vec<serde_json::Value> {
        bpftool(&["map", "dump", "id", &newest(name)])
            .as_array()
            .unwrap()
            .clone()
    };
    let bytes = |v: &serde_json::Value| -> Vec<u8> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
            .collect()
    };
    let count = entries("PROCESS_ENTRIES");
    let counted = u64::from_le_bytes(bytes(&count[0]["value"]).try_into().unwrap());
    let lines = entries("COMMAND_LINES")
        .iter()
        .map(|e| u32::from_le_bytes(bytes(&e["key"]).try_into().unwrap()))
        .collect();
    (counted, lines, entries("PROCESS_NET").len())
}
