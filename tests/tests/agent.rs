//! `cleanroom agent` against the kernel's own figures and a real Prometheus: a watched cgroup's
//! CPU and block bytes as Prometheus scrapes them and as its stored report has them (against
//! `cpu.stat`, O_DIRECT bytes on a loop device, and `cleanroom run` on the same workload);
//! cgroups made and removed by the thousand with flat map use; SIGTERM storing every live
//! watch; HTTP statuses; start-up failures.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use cleanroom_tests::{
    LoopDevice, Prometheus, TestCgroup, block_device, cleanroom, cleanroom_bin, free_loopback_port,
    privileged, rel_diff, run_in_cgroup, run_measured, tool, u64_at, v2_mount, workload_bin,
};

const MIB: u64 = 1 << 20;

fn workload() -> String {
    workload_bin!().to_str().unwrap().to_owned()
}

/// A running `cleanroom agent`, killed on drop if still running.
struct Agent {
    child: Child,
    url: String,
    store: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `cleanroom agent ARGS --listen 127.0.0.1:<free> --store <own>` and waits until it
    /// answers.
    fn start(args: &[&str], token: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("history.db");
        let port = free_loopback_port();
        let listen = format!("127.0.0.1:{port}");
        let socket = dir.path().join("agent.sock");
        let mut cmd = Command::new(cleanroom_bin());
        cmd.arg("agent")
            .args(args)
            .args(["--listen", &listen, "--store", store.to_str().unwrap()])
            .args(["--socket", socket.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("agent.log")).unwrap());
        if let Some(token) = token {
            cmd.env("CLEANROOM_AGENT_TOKEN", token);
        }
        let child = cmd.spawn().expect("starting cleanroom agent");
        let agent = Self {
            child,
            url: format!("http://{listen}"),
            store,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if agent.get("/api/v1/runs", token).0 == 200 {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not answer in 30 s: {}",
                agent.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self._dir.path().join("agent.log")).unwrap_or_default()
    }

    /// GET `path`: the status and body (0 when nothing answered).
    fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut request = agent.get(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        match request.call() {
            Ok(mut response) => (
                response.status().as_u16(),
                response.body_mut().read_to_string().unwrap_or_default(),
            ),
            Err(_) => (0, String::new()),
        }
    }

    fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path, None);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits (up to `timeout`) for `done` to hold of `GET path`'s JSON.
    fn wait_json(
        &self,
        path: &str,
        timeout: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.json(path);
            if done(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{path} after {timeout:?}: {value:#}\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The stored run of cgroup `relative`, once there.
    fn stored_report(&self, relative: &str) -> serde_json::Value {
        let runs = self.wait_json("/api/v1/runs", Duration::from_secs(20), |v| {
            v["runs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["command"] == relative)
        });
        let id = runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["command"] == relative)
            .unwrap()["id"]
            .as_i64()
            .unwrap();
        self.json(&format!("/api/v1/runs/{id}"))
    }

    /// A gauge or counter of `/metrics`, by its full series text (`name{labels}`).
    fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics", None);
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// SIGTERM; the exit status and how long it took.
    fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let began = Instant::now();
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = began + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, began.elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "the agent ignored SIGTERM: {}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of the agent, bytes.
    fn rss(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The workload of the accuracy tests: two spinners of 1 s beside each other, then 16 MiB
/// written and read back with O_DIRECT on `dev`.
fn known_workload(dev: &LoopDevice) -> String {
    let w = workload();
    format!(
        "{w} spin 1 & {w} spin 1 & wait; {w} direct-io {} {} {}",
        dev.path,
        16 * MIB,
        64 * 1024
    )
}

fn relative(path: &Path) -> String {
    path.strip_prefix(v2_mount()).unwrap().display().to_string()
}

fn cpu_usage_ns(path: &Path) -> u64 {
    let text = fs::read_to_string(path.join("cpu.stat")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap()
        * 1000
}

/// Prometheus scraping the agent sees a watched cgroup's CPU within 2% of its cpu.stat and its
/// block bytes exactly; the stored report of the cgroup, once removed, agrees with the kernel
/// and with `cleanroom run` on the same workload.
#[test]
fn prometheus_and_the_stored_report_agree_with_the_kernel_and_with_run() {
    if !privileged("prometheus_and_the_stored_report_agree_with_the_kernel_and_with_run")
        || !tool("prometheus_and_the_stored_report", "prometheus")
    {
        return;
    }
    let parent = TestCgroup::new("agent-accuracy");
    let glob = format!("{}/*", relative(parent.path()));
    let agent = Agent::start(&["--watch", &glob, "--interval", "500ms"], None);
    let prometheus = Prometheus::start(agent.url.trim_start_matches("http://"), None);
    let dev = LoopDevice::new(64 * MIB);
    // Warm the page cache with the workload binary, so that no read of it lands in the run.
    Command::new(workload())
        .args(["sleepy", "0", "0"])
        .output()
        .unwrap();

    let job = parent.path().join("job");
    fs::create_dir(&job).unwrap();
    let job_rel = relative(&job);
    agent.wait_json("/api/v1/cgroups", Duration::from_secs(10), |v| {
        v["cgroups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["cgroup"] == job_rel)
    });
    run_in_cgroup(&job, &known_workload(&dev));
    let kernel_cpu = cpu_usage_ns(&job);

    let cpu = format!("cleanroom_cpu_time_seconds_total{{cgroup=\"{job_rel}\"}}");
    let samples = prometheus.wait_for(&cpu, Duration::from_secs(30), |s| {
        s.first()
            .is_some_and(|(_, v)| rel_diff((v * 1e9) as u64, kernel_cpu) < 0.02)
    });
    eprintln!(
        "Prometheus: {cpu} = {:?}, cpu.stat {kernel_cpu} ns",
        samples[0].1
    );
    let written = format!("cleanroom_block_write_bytes_total{{cgroup=\"{job_rel}\"}}");
    let samples = prometheus.wait_for(&written, Duration::from_secs(30), |s| {
        s.first().is_some_and(|(_, v)| *v == (16 * MIB) as f64)
    });
    assert_eq!(samples.len(), 1, "{samples:?}");
    assert!(prometheus.targets_up(), "{}", prometheus.targets());

    fs::remove_dir(&job).unwrap();
    let report = agent.stored_report(&job_rel);
    let agent_cpu = u64_at(&report, "/totals/cpu_time_ns");
    assert!(
        rel_diff(agent_cpu, kernel_cpu) < 0.01,
        "agent {agent_cpu} ns vs cpu.stat {kernel_cpu} ns"
    );
    let on_loop = block_device(&report, &dev.major_minor());
    assert_eq!(u64_at(on_loop, "/write_bytes"), 16 * MIB, "{on_loop:#}");
    assert_eq!(u64_at(on_loop, "/read_bytes"), 16 * MIB, "{on_loop:#}");
    assert_eq!(report["name"], glob);
    assert_eq!(report["tags"]["cgroup"], job_rel);
    assert_eq!(report["tags"]["ended"], "removed");
    cleanroom_tests::assert_matches_schema(&report);

    // The same workload under `cleanroom run`.
    let cg = TestCgroup::new("agent-vs-run");
    let (output, run) = run_measured(&cg, &["sh", "-c", &known_workload(&dev)]);
    assert!(output.status.success(), "{output:?}");
    let run_cpu = u64_at(&run, "/totals/cpu_time_ns");
    assert!(
        rel_diff(run_cpu, cg.cpu_usage_ns()) < 0.01,
        "run {run_cpu} ns vs cpu.stat {} ns",
        cg.cpu_usage_ns()
    );
    let run_loop = block_device(&run, &dev.major_minor());
    for key in ["/write_bytes", "/read_bytes", "/write_ops", "/read_ops"] {
        assert_eq!(u64_at(run_loop, key), u64_at(on_loop, key), "{key}");
    }
    assert_eq!(
        u64_at(&run, "/totals/processes_forked"),
        u64_at(&report, "/totals/processes_forked"),
        "the same processes started"
    );
}

/// Thousands of cgroups made, given a process, and removed under a watched cgroup: the map
/// entries of the gone ones are freed (back to where they started), nothing is dropped, the
/// agent's memory stays flat, and the watched cgroup's report still counts every process.
#[test]
fn cgroups_made_and_removed_by_the_thousand_leave_flat_maps() {
    if !privileged("cgroups_made_and_removed_by_the_thousand_leave_flat_maps") {
        return;
    }
    let n: usize = std::env::var("CLEANROOM_CHURN_CGROUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let parent = TestCgroup::new("agent-churn");
    let rel = relative(parent.path());
    let mut agent = Agent::start(&["--watch", &rel, "--interval", "200ms"], None);
    agent.wait_json("/api/v1/cgroups", Duration::from_secs(10), |v| {
        v["cgroups"].as_array().unwrap().len() == 1
    });
    thread::sleep(Duration::from_millis(600));
    let entries = |agent: &Agent, map: &str| {
        agent
            .metric(&format!("cleanroom_map_entries{{map=\"{map}\"}}"))
            .unwrap_or_else(|| panic!("no map_entries for {map}"))
    };
    let maps = ["CGROUP_STATS", "CGROUP_TREE", "HISTOGRAMS", "BLOCK_STATS"];
    let before: Vec<f64> = maps.iter().map(|m| entries(&agent, m)).collect();
    let began = Instant::now();
    // A quarter first, to see the agent's memory with the churn under way.
    let churn = |from: &str, count: usize| {
        let sub = parent.path().join(from);
        fs::create_dir(&sub).unwrap();
        let output = Command::new(workload())
            .args(["churn", sub.to_str().unwrap(), &count.to_string()])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        fs::remove_dir(&sub).unwrap();
    };
    churn("first", n / 4);
    let rss_mid = agent.rss();
    churn("rest", n - n / 4);
    eprintln!("{n} cgroups made and removed in {:?}", began.elapsed());
    // Two ticks: the last ones removed are seen and freed.
    thread::sleep(Duration::from_millis(800));
    let after: Vec<f64> = maps.iter().map(|m| entries(&agent, m)).collect();
    eprintln!("map entries {maps:?}: before {before:?}, after {after:?}");
    for ((map, b), a) in maps.iter().zip(&before).zip(&after) {
        // Other cgroups of the host come and go meanwhile (sessions, services): a little slack.
        assert!(
            *a <= b + 50.0,
            "{map}: {b} entries before, {a} after {n} cgroups"
        );
    }
    let (_, metrics) = agent.get("/metrics", None);
    // A block completion whose issue was not seen (under way when the probes attached) is a
    // note in every report, not an event lost; anything else would be.
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("cleanroom_dropped_events_total"))
    {
        eprintln!("{line}");
        if !line.contains("latency_start_unseen") {
            assert!(line.ends_with(" 0"), "{line}");
        }
    }
    let rss_end = agent.rss();
    eprintln!(
        "agent RSS: {} KiB at {} cgroups, {} KiB at {n}",
        rss_mid / 1024,
        n / 4,
        rss_end / 1024
    );
    assert!(
        rss_end <= rss_mid + 8 * MIB,
        "agent RSS grew from {rss_mid} to {rss_end} bytes"
    );

    let (status, _) = agent.terminate();
    assert!(status.success(), "{status:?}: {}", agent.log());
    let output = cleanroom(&agent.store, &["history"]);
    let history = String::from_utf8_lossy(&output.stdout);
    assert!(history.contains(&rel), "{history}");
    let report = stored_reports(&agent.store).pop().unwrap();
    // Each process forked one child inside its cgroup, and both exited there.
    assert_eq!(u64_at(&report, "/totals/processes_forked"), n as u64);
    assert_eq!(u64_at(&report, "/totals/processes_exited"), 2 * n as u64);
}

/// Every report in a store, oldest first.
fn stored_reports(store: &Path) -> Vec<serde_json::Value> {
    let output = cleanroom(store, &["history", "--last", "1000"]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut ids: Vec<i64> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids.iter()
        .map(|id| {
            let out = cleanroom(store, &["report", &id.to_string(), "--format", "json"]);
            assert!(out.status.success(), "{out:?}");
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect()
}

/// SIGTERM with three live watched cgroups: three reports stored, marked `agent_stopped`, and
/// exit 0.
#[test]
fn sigterm_stores_the_report_of_every_live_watch() {
    if !privileged("sigterm_stores_the_report_of_every_live_watch") {
        return;
    }
    let parent = TestCgroup::new("agent-stop");
    let glob = format!("{}/*", relative(parent.path()));
    let mut agent = Agent::start(&["--watch", &glob], None);
    let mut sleepers = Vec::new();
    for i in 0..3 {
        let dir = parent.path().join(format!("job{i}"));
        fs::create_dir(&dir).unwrap();
        sleepers.push(
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "echo $$ > {}/cgroup.procs && exec sleep 60",
                    dir.display()
                ))
                .spawn()
                .unwrap(),
        );
    }
    agent.wait_json("/api/v1/cgroups", Duration::from_secs(10), |v| {
        v["cgroups"].as_array().unwrap().len() == 3
    });
    let (status, took) = agent.terminate();
    eprintln!("the agent stopped {took:?} after SIGTERM");
    assert!(status.success(), "{status:?}: {}", agent.log());
    let reports = stored_reports(&agent.store);
    assert_eq!(reports.len(), 3, "{reports:#?}");
    for report in &reports {
        assert_eq!(report["tags"]["ended"], "agent_stopped", "{report:#}");
        assert_eq!(report["interrupted"]["signal"], "agent_stopped");
        assert!(
            report["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "watch_ended" && e["subject"] == "agent_stopped")
        );
        cleanroom_tests::assert_matches_schema(report);
    }
    for mut s in sleepers {
        let _ = s.kill();
        let _ = s.wait();
    }
}

/// SIGHUP re-reads the configuration: new rules pick their cgroups, a cgroup no rule matches
/// any more ends (`unwatched`, its report stored); a bad file keeps the rules in force.
#[test]
fn sighup_reloads_the_rules_and_a_bad_file_keeps_the_old_ones() {
    if !privileged("sighup_reloads_the_rules_and_a_bad_file_keeps_the_old_ones") {
        return;
    }
    let parent = TestCgroup::new("agent-reload");
    let rel = relative(parent.path());
    for name in ["a-1", "b-1"] {
        fs::create_dir(parent.path().join(name)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let rule = |glob: &str| format!("interval = \"200ms\"\n[[watch]]\nglob = \"{rel}/{glob}\"\n");
    fs::write(&config, rule("a-*")).unwrap();
    let mut agent = Agent::start(&["--config", config.to_str().unwrap()], None);
    let listed = |v: &serde_json::Value| -> Vec<String> {
        v["cgroups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["cgroup"].as_str().unwrap().to_owned())
            .collect()
    };
    let a = format!("{rel}/a-1");
    let b = format!("{rel}/b-1");
    agent.wait_json("/api/v1/cgroups", Duration::from_secs(10), |v| {
        listed(v) == [a.clone()]
    });

    fs::write(&config, rule("b-*")).unwrap();
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGHUP) };
    agent.wait_json("/api/v1/cgroups", Duration::from_secs(10), |v| {
        listed(v) == [b.clone()]
    });
    let report = agent.stored_report(&a);
    assert_eq!(report["tags"]["ended"], "unwatched", "{report:#}");

    fs::write(&config, "[[watch]]\nglob = \"x/[\"\n").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("not reloaded") {
        assert!(
            Instant::now() < deadline,
            "no word of the bad file: {}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(agent.log().contains("not a glob"), "{}", agent.log());
    thread::sleep(Duration::from_millis(500));
    assert_eq!(listed(&agent.json("/api/v1/cgroups")), [b]);
    let (status, _) = agent.terminate();
    assert!(status.success(), "{status:?}");
}

/// A malformed id, an unknown id, a missing or wrong token: each its documented status, with a
/// JSON error.
#[test]
fn bad_requests_unknown_ids_and_missing_tokens_get_their_status() {
    if !privileged("bad_requests_unknown_ids_and_missing_tokens_get_their_status") {
        return;
    }
    let parent = TestCgroup::new("agent-http");
    let token = "t0ken-of-the-test";
    let agent = Agent::start(&["--watch", &relative(parent.path())], Some(token));
    let status = |path: &str, token: Option<&str>| {
        let (status, body) = agent.get(path, token);
        if status != 200 {
            let v: serde_json::Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"));
            assert!(v["error"].is_string(), "{path}: {body}");
        }
        status
    };
    assert_eq!(status("/metrics", Some(token)), 200);
    assert_eq!(status("/", Some(token)), 200);
    assert_eq!(status("/metrics", None), 401);
    assert_eq!(status("/api/v1/cgroups", Some("wrong")), 401);
    assert_eq!(status("/api/v1/runs/not-a-number", Some(token)), 400);
    assert_eq!(status("/api/v1/cgroups/x1", Some(token)), 400);
    assert_eq!(status("/api/v1/runs/999999", Some(token)), 404);
    assert_eq!(status("/api/v1/cgroups/1", Some(token)), 404);
    assert_eq!(status("/runs/999999", Some(token)), 404);
    assert_eq!(status("/no/such/path", Some(token)), 404);
}

/// A port in use, a bad glob, no rules, a reachable address without a token, a bad config: exit
/// 2 with one line saying what to do.
#[test]
fn start_up_failures_exit_2_with_one_line() {
    if !privileged("start_up_failures_exit_2_with_one_line") {
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let (_dir, bad_config) =
        cleanroom_tests::temp_file("agent.toml", "[[watch]]\nglob = \"a/*\"\nnmae = \"x\"\n");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--watch", "x/*", "--listen", &port],
            "choose another with --listen",
        ),
        (&["--watch", "ci/[job"], "not a glob"),
        (
            &["--watch", "/sys/fs/cgroup/x"],
            "relative to the cgroup v2 mount",
        ),
        (&["--no-socket"], "nothing to do"),
        (
            &["--socket-group", "no-such-group-cleanroom"],
            "no group \"no-such-group-cleanroom\"",
        ),
        (&["--watch", "x/*", "--listen", "0.0.0.0:9"], "token"),
        (&["--config", &bad_config], "agent.toml:3: key `nmae`"),
    ];
    for (args, expected) in cases {
        let output = Command::new(cleanroom_bin())
            .arg("agent")
            .args(*args)
            .args(["--no-store"])
            .env_remove("CLEANROOM_AGENT_TOKEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
    drop(taken);
}

/// `cleanroom agent --profile` profiles each watched cgroup apart: the stored report of a
/// cgroup that ran the Rust program main → outer → {hot_a 70%, hot_b 30%} (in a sub-cgroup
/// made after the watch began) has its stacks whole, split as the program splits them, as many
/// samples as its CPU time at the frequency asked for, and none of a spinner beside it in a
/// cgroup the agent does not watch.
#[test]
fn a_profiling_agent_reports_each_watched_cgroups_stacks() {
    if !privileged("a_profiling_agent_reports_each_watched_cgroups_stacks") {
        return;
    }
    const HZ: u64 = 199;
    let parent = TestCgroup::new("agent-profile");
    let unwatched = TestCgroup::new("agent-profile-other");
    let glob = format!("{}/*", relative(parent.path()));
    let agent = Agent::start(
        &[
            "--watch",
            &glob,
            "--interval",
            "200ms",
            "--profile",
            "--profile-frequency",
            &HZ.to_string(),
        ],
        None,
    );
    let job = parent.path().join("job");
    fs::create_dir(&job).unwrap();
    agent.wait_json("/api/v1/cgroups", Duration::from_secs(10), |v| {
        v["cgroups"].as_array().unwrap().len() == 1
    });
    let w = workload();
    let beside = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs || exit 1\nexec {w} spin 1",
            unwatched.path().display()
        ))
        .spawn()
        .unwrap();
    let inner = job.join("inner");
    fs::create_dir(&inner).unwrap();
    run_in_cgroup(&inner, &format!("{w} hot-chain 1500"));
    let mut beside = beside;
    assert!(beside.wait().unwrap().success());
    fs::remove_dir(&inner).unwrap();
    fs::remove_dir(&job).unwrap();
    let report = agent.stored_report(&relative(&job));
    cleanroom_tests::assert_matches_schema(&report);
    let profile = &report["profile"];
    assert_eq!(profile["frequency_hz"], HZ, "{report:#}\n{}", agent.log());
    // Every sample (the shell's too) against the cgroup's CPU time; the program's own for the
    // chain.
    let (mut all, mut program, mut a, mut b) = (0, 0, 0, 0);
    let name = |f: &str| format!("cleanroom_test_workload::{f}");
    for s in profile["stacks"].as_array().expect("profile stacks") {
        let stack = s["stack"].as_str().unwrap();
        assert!(
            !stack.contains(&name("spin_cpu")),
            "a sample of the unwatched cgroup: {stack}"
        );
        let n = u64_at(s, "/samples");
        all += n;
        if stack.starts_with("cleanroom-test") {
            program += n;
        }
        let chain = |hot: &str| {
            stack.contains(&format!(
                ";{};{};{}",
                name("main"),
                name("outer"),
                name(hot)
            ))
        };
        if chain("hot_a") {
            a += n;
        } else if chain("hot_b") {
            b += n;
        }
    }
    let cpu_ns = u64_at(&report, "/totals/cpu_time_ns");
    let expected = cpu_ns as f64 / 1e9 * HZ as f64;
    eprintln!(
        "{all} samples for {:.3} s of CPU (expected {expected:.0}); of the program's {program}, \
         hot_a {a}, hot_b {b}",
        cpu_ns as f64 / 1e9
    );
    assert!(
        (all as f64 - expected).abs() <= expected * 0.10,
        "{all} samples, {expected:.0} expected\n{profile:#}"
    );
    assert!((a + b) as f64 >= program as f64 * 0.9, "{profile:#}");
    let split = a as f64 / (a + b).max(1) as f64;
    assert!((split - 0.70).abs() <= 0.05, "hot_a {:.1}%", split * 100.0);
}
