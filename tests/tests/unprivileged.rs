//! `cleanroom run` as an unprivileged user, through the agent's socket: real users and a group
//! made by the test (removed after), an agent of the test's own serving a socket of its own.
//! The figures are checked against the kernel's (`cpu.stat` of the parent the agent makes runs
//! under, the loop device's own O_DIRECT bytes), the exit codes against a root run's, and the
//! agent against hostile clients while an honest one is served.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use cleanroom_tests::{
    LoopDevice, TestCgroup, block_device, cleanroom_bin, free_loopback_port, privileged, rel_diff,
    sh, u64_at, workload_bin,
};

/// A user (and, for the first, the group) made for the test; removed on drop.
struct TestUser {
    name: String,
    uid: u32,
    home: tempfile::TempDir,
}

impl TestUser {
    /// Makes user `name`, a member of `group` when given.
    fn new(name: &str, group: Option<&str>) -> Self {
        let _ = Command::new("userdel").arg(name).output();
        let mut args = vec!["-M", "-s", "/bin/sh"];
        if let Some(group) = group {
            args.extend(["-G", group]);
        }
        sh(&[&["useradd"], &args[..], &[name]].concat());
        let uid: u32 = sh(&["id", "-u", name]).trim().parse().unwrap();
        let home = tempfile::tempdir().unwrap();
        sh(&["chown", name, home.path().to_str().unwrap()]);
        Self {
            name: name.to_owned(),
            uid,
            home,
        }
    }

    /// `cleanroom ARGS` as this user, with `bin` first in PATH and the agent at `socket`.
    fn cleanroom(&self, bin: &Path, socket: &Path, args: &[&str]) -> Output {
        self.command(
            bin,
            socket,
            &[&[bin.join("cleanroom").to_str().unwrap()], args].concat(),
        )
        .output()
        .unwrap()
    }

    /// `setpriv` words that make the rest of a command line run as this user, with its groups
    /// as /etc/group says.
    fn as_me(&self) -> Vec<String> {
        vec![
            "setpriv".into(),
            format!("--reuid={}", self.name),
            format!("--regid={}", self.name),
            "--init-groups".into(),
            "--".into(),
        ]
    }

    /// `ARGS` as this user, with the environment of a job.
    fn command(&self, bin: &Path, socket: &Path, args: &[&str]) -> Command {
        let words = self.as_me();
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..])
            .args(args)
            .env_clear()
            .env("HOME", self.home.path())
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("CLEANROOM_AGENT_SOCKET", socket);
        cmd
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.name])
            .output();
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// A group made for the test; removed on drop (after its users).
struct TestGroup(String);

impl TestGroup {
    fn new(name: &str) -> Self {
        let _ = Command::new("groupdel").arg(name).output();
        sh(&["groupadd", name]);
        Self(name.to_owned())
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.0).output();
    }
}

/// The agent of the test, serving `socket` for `group`, making runs under `runs`.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(dir: &Path, socket: &Path, group: &str, runs: &Path) -> Self {
        let log = dir.join("agent.log");
        let listen = format!("127.0.0.1:{}", free_loopback_port());
        let child = Command::new(cleanroom_bin())
            .args(["agent", "--no-store", "--listen", &listen])
            .args([
                "--socket",
                socket.to_str().unwrap(),
                "--socket-group",
                group,
            ])
            .args(["--runs-cgroup", runs.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut agent = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while UnixStream::connect(socket).is_err() {
            assert!(
                agent.child.try_wait().unwrap().is_none(),
                "the agent exited: {}",
                agent.log()
            );
            assert!(Instant::now() < deadline, "no socket: {}", agent.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        agent
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Everything a test needs: a group, a member, an outsider, the binaries where they can run
/// them, and the agent.
struct Setup {
    agent: Agent,
    member: TestUser,
    other_member: TestUser,
    outsider: TestUser,
    bin: tempfile::TempDir,
    socket: PathBuf,
    runs: TestCgroup,
    _group: TestGroup,
}

impl Setup {
    fn new(tag: &str) -> Self {
        let id = std::process::id() % 100_000;
        let group = TestGroup::new(&format!("crt-{tag}{id}"));
        let member = TestUser::new(&format!("crt-{tag}a{id}"), Some(&group.0));
        let other_member = TestUser::new(&format!("crt-{tag}b{id}"), Some(&group.0));
        let outsider = TestUser::new(&format!("crt-{tag}c{id}"), None);
        // Copies the users can execute, wherever the build tree lives.
        let bin = tempfile::tempdir().unwrap();
        fs::set_permissions(bin.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::copy(cleanroom_bin(), bin.path().join("cleanroom")).unwrap();
        fs::copy(workload_bin!(), bin.path().join("workload")).unwrap();
        let socket = bin.path().join("agent.sock");
        let runs = TestCgroup::new(&format!("agent-{tag}"));
        let agent = Agent::start(bin.path(), &socket, &group.0, runs.path());
        Self {
            agent,
            member,
            other_member,
            outsider,
            bin,
            socket,
            runs,
            _group: group,
        }
    }

    fn run(&self, user: &TestUser, args: &[&str]) -> Output {
        user.cleanroom(self.bin.path(), &self.socket, args)
    }

    /// `cleanroom run -q --no-store FLAGS -- sh -c SCRIPT` as `user`.
    fn measure(&self, user: &TestUser, flags: &[&str], script: &str) -> Output {
        let args = [
            &["run", "-q", "--no-store"],
            flags,
            &["--", "sh", "-c", script],
        ]
        .concat();
        self.run(user, &args)
    }

    /// `cleanroom run -q --no-store -- sleep SECS` as `user`, in the background.
    fn start_sleeping(&self, user: &TestUser, secs: &str) -> Child {
        user.command(
            self.bin.path(),
            &self.socket,
            &["cleanroom", "run", "-q", "--no-store", "--", "sleep", secs],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
    }

    fn workload(&self) -> String {
        self.bin.path().join("workload").display().to_string()
    }
}

/// The report a run wrote into its user's home.
fn report_of(user: &TestUser, name: &str) -> serde_json::Value {
    let text = fs::read_to_string(user.home.path().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_member_measures_its_own_run_through_the_agent() {
    if !privileged("a_member_measures_its_own_run_through_the_agent") {
        return;
    }
    let s = Setup::new("m");
    let user = &s.member;
    let dev = LoopDevice::new(64 << 20);
    sh(&["chown", &user.name, &dev.path]);
    let (bytes, chunk) = (8u64 << 20, 64u64 << 10);
    // Warm the page cache with the workload binary, so that no read of it lands in the run.
    sh(&[&s.workload(), "sleepy", "0", "0"]);
    let report_path = user.home.path().join("r.json");
    let script = format!(
        "cleanroom mark spin; {w} spin-ms 400; {w} subcgroup-spin 200; \
         cleanroom mark io; {w} direct-io {dev} {bytes} {chunk}",
        w = s.workload(),
        dev = dev.path
    );
    let out = s.measure(user, &["--report", report_path.to_str().unwrap()], &script);
    assert_eq!(out.status.code(), Some(0), "{out:?}\n{}", s.agent.log());
    let report = report_of(user, "r.json");
    cleanroom_tests::assert_matches_schema(&report);

    // CPU: the probes' figure against the kernel's, read here from the parent the agent made
    // the run under (it keeps what its removed child used), the delegated sub-cgroup included.
    let measured = u64_at(&report, "/totals/cpu_time_ns");
    let kernel = s.runs.cpu_usage_ns();
    eprintln!("through the agent: {measured} ns of CPU measured, cpu.stat {kernel} ns");
    assert!(
        rel_diff(measured, kernel) < 0.01,
        "probes measured {measured} ns of CPU, cpu.stat says {kernel} ns"
    );
    assert!(
        measured > 550_000_000,
        "{measured} ns for 600 ms of spinning"
    );
    // Block I/O: exactly the O_DIRECT bytes, both ways, on the user's loop device.
    let loop_dev = block_device(&report, &dev.major_minor());
    assert_eq!(u64_at(loop_dev, "/write_bytes"), bytes, "{loop_dev:#}");
    assert_eq!(u64_at(loop_dev, "/read_bytes"), bytes, "{loop_dev:#}");
    // Phases, marked from inside through the run's own socket and the agent.
    let phases: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["spin", "io"], "{:#}", report["phases"]);
    let spin_cpu = u64_at(&report["phases"][0], "/totals/cpu_time_ns");
    assert!(
        spin_cpu > 550_000_000,
        "the spin phase had {spin_cpu} ns of CPU"
    );
    // The cgroup was delegated: owned by the user while it lived (the sub-cgroup the workload
    // made proves it), and removed after.
    assert!(
        report["cgroup"]["path"]
            .as_str()
            .unwrap()
            .contains(&format!(".u{}.", user.uid)),
        "{:#}",
        report["cgroup"]
    );
    assert!(s.runs.children().is_empty(), "{:?}", s.runs.children());
}

#[test]
fn exit_codes_are_a_root_runs() {
    if !privileged("exit_codes_are_a_root_runs") {
        return;
    }
    let s = Setup::new("e");
    let user = &s.member;
    // The command's own code.
    let out = s.measure(user, &[], "exit 7");
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    // A missed SLO: 3.
    let slo = user.home.path().join("slo.toml");
    fs::write(
        &slo,
        "[[slos]]\nname = \"cheap\"\nobjective = \"cpu_time <= 1ms\"\n",
    )
    .unwrap();
    let spin = format!("{} spin-ms 100", s.workload());
    let out = s.measure(user, &["--slo", slo.to_str().unwrap()], &spin);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    // A limit the agent applies: a memory limit the command cannot write itself.
    let config = user.home.path().join("limits.toml");
    fs::write(
        &config,
        "[resource_limits]\nmax_memory_usage_bytes = \"64MiB\"\n",
    )
    .unwrap();
    let out = s.measure(
        user,
        &[
            "--config",
            config.to_str().unwrap(),
            "--report",
            user.home.path().join("l.json").to_str().unwrap(),
        ],
        "cat /proc/self/cgroup > $HOME/cgroup; p=$(sed -n 's/^0:://p' $HOME/cgroup); \
             cat /sys/fs/cgroup/unified$p/memory.max /sys/fs/cgroup$p/memory.max 2>/dev/null; \
             echo 1 > /sys/fs/cgroup/unified$p/memory.max 2>/dev/null && exit 9; \
             echo 1 > /sys/fs/cgroup$p/memory.max 2>/dev/null && exit 9; exit 0",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let notes = report_of(user, "l.json")["notes"].to_string();
    assert!(notes.contains("max_memory_usage_bytes"), "{notes}");

    // A user outside the socket's group: exit 2, one line naming both ways.
    let out = s.run(&s.outsider, &["run", "--no-store", "--", "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("run it as root") && stderr.contains("cleanroom agent"),
        "{stderr}"
    );
    assert!(stderr.contains("may not use"), "{stderr}");
    // `cleanroom doctor` says whether the agent answers, to each.
    let doctor = |user: &TestUser| {
        let out = s.run(user, &["doctor"]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let member = doctor(user);
    assert!(
        member.contains(&format!("answers (you are uid {})", user.uid)),
        "{member}"
    );
    let outsider = doctor(&s.outsider);
    assert!(outsider.contains("not reachable"), "{outsider}");
    // No agent at all: the same one line.
    let out = s
        .outsider
        .command(
            s.bin.path(),
            Path::new("/nonexistent/agent.sock"),
            &["cleanroom", "run", "--no-store", "--", "true"],
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no agent socket"), "{stderr}");
}

/// A run through the agent is judged once its command has ended: a threshold it crossed and
/// fell back from is alerted then, its breach and its resolve, with the values of the report's
/// events. (A `command` channel the user's run starts writes each alert it is given.)
#[test]
fn a_run_through_the_agent_alerts_its_thresholds_at_its_end() {
    if !privileged("a_run_through_the_agent_alerts_its_thresholds_at_its_end") {
        return;
    }
    let s = Setup::new("a");
    let user = &s.member;
    let alerts = user.home.path().join("alerts.json");
    let config = user.home.path().join("alerting.toml");
    fs::write(
        &config,
        format!(
            "[performance_monitoring]\nmetrics_interval = \"200ms\"\n\
             [performance_monitoring.thresholds]\nmax_cpu_usage_percent = 50\n\
             [[alerts.channels]]\nname = \"log\"\nkind = \"command\"\n\
             command = [\"sh\", \"-c\", \"cat >> {}\"]\n",
            alerts.display()
        ),
    )
    .unwrap();
    let out = s.measure(
        user,
        &[
            "--config",
            config.to_str().unwrap(),
            "--name",
            "remote-alerts",
            "--report",
            user.home.path().join("a.json").to_str().unwrap(),
        ],
        &format!("{} spin-ms 1500; sleep 1", s.workload()),
    );
    // The breach fails the verdict: 3.
    assert_eq!(out.status.code(), Some(3), "{out:?}\n{}", s.agent.log());
    let report = report_of(user, "a.json");
    let text = fs::read_to_string(&alerts).unwrap_or_default();
    let sent: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&text)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    let states: Vec<&str> = sent.iter().map(|a| a["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["firing", "resolved"], "{text}");
    assert_eq!(sent[0]["id"], sent[1]["id"]);
    assert_eq!(sent[0]["target"], "remote-alerts");
    let events = report["events"].as_array().unwrap();
    let value_of = |kind: &str| {
        events
            .iter()
            .find(|e| e["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} event: {events:#?}"))["value"]
            .clone()
    };
    assert_eq!(sent[0]["value"], value_of("threshold_breached"));
    assert_eq!(sent[1]["value"], value_of("threshold_cleared"));
    assert_eq!(report["alerts"]["undelivered"], 0, "{:#}", report["alerts"]);
}

/// One JSON request on a fresh connection, as `user`, and the reply line.
fn ask_as(s: &Setup, user: &TestUser, request: &str) -> serde_json::Value {
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.settimeout(20)\n\
         s.connect({socket:?})\ns.sendall(sys.argv[1].encode()+b'\\n')\n\
         print(s.makefile().readline(),end='')\n",
        socket = s.socket.to_str().unwrap()
    );
    let out = user
        .command(
            s.bin.path(),
            &s.socket,
            &["python3", "-c", &script, request],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn one_user_cannot_touch_anothers_run() {
    if !privileged("one_user_cannot_touch_anothers_run") {
        return;
    }
    let s = Setup::new("o");
    let owner = &s.member;
    let mut running = s.start_sleeping(owner, "4");
    // The owner's run, as the agent made it under the test's cgroup.
    let deadline = Instant::now() + Duration::from_secs(30);
    let run_dir = loop {
        let found = s
            .runs
            .children()
            .into_iter()
            .find(|p| p.to_string_lossy().contains(&format!(".u{}.", owner.uid)));
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "no run made: {}", s.agent.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    let id = {
        use std::os::unix::fs::MetadataExt as _;
        fs::metadata(&run_dir).unwrap().ino()
    };
    let intruder = &s.other_member;
    let mine = ask_as(&s, owner, r#"{"op":"runs"}"#);
    assert_eq!(mine["runs"].as_array().unwrap().len(), 1, "{mine}");
    let theirs = ask_as(&s, intruder, r#"{"op":"runs"}"#);
    assert_eq!(theirs["runs"], serde_json::json!([]), "{theirs}");
    for request in [
        format!(r#"{{"op":"mark","run":{id},"name":"x"}}"#),
        format!(r#"{{"op":"join","run":{id}}}"#),
        format!(r#"{{"op":"end","run":{id},"wait_status":0}}"#),
    ] {
        let reply = ask_as(&s, intruder, &request);
        assert_eq!(reply["ok"], false, "{request}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains("no run"),
            "{request}: {reply}"
        );
    }
    let status = running.wait().unwrap();
    assert!(
        status.success(),
        "the owner's run failed: {}",
        s.agent.log()
    );
}

#[test]
fn hostile_clients_do_not_stall_an_honest_one() {
    if !privileged("hostile_clients_do_not_stall_an_honest_one") {
        return;
    }
    let mut s = Setup::new("h");
    // Another member: garbage, a 10 MB line, a half-open request, then 1,000 connections held.
    let script = format!(
        r#"
import socket, sys, time
path = {socket:?}
def conn():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    s.connect(path)
    return s
g = conn()
g.sendall(b'{{"op": nonsense\n')
garbage = g.makefile().readline()
g.sendall(b'{{"op":"hello"}}\n')
after = g.makefile().readline()
big = conn()
try:
    big.sendall(b'x' * 10_000_000 + b'\n')
except OSError:
    pass
half = conn()
half.sendall(b'{{"op":"hel')
held = []
for _ in range(1000):
    try:
        held.append(conn())
    except OSError as e:
        print("connect failed:", e, file=sys.stderr)
        break
print(len(held), flush=True)
print(garbage.strip(), flush=True)
print(after.strip(), flush=True)
time.sleep(float(sys.argv[1]))
"#,
        socket = s.socket.to_str().unwrap()
    );
    let mut hostile = Command::new("prlimit")
        .arg("--nofile=4096:4096")
        .arg("--")
        .args(s.other_member.as_me())
        .args(["python3", "-c", &script, "20"])
        .env_clear()
        .env("HOME", s.other_member.home.path())
        .env("PATH", "/usr/bin:/bin")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(hostile.stdout.take().unwrap()).lines();
    let held: usize = lines.next().unwrap().unwrap().trim().parse().unwrap();
    assert_eq!(held, 1000, "the hostile client could not even connect");
    let garbage = lines.next().unwrap().unwrap();
    assert!(garbage.contains("\"ok\":false"), "{garbage}");
    let after = lines.next().unwrap().unwrap();
    assert!(
        after.contains("\"ok\":true"),
        "garbage ended the connection: {after}"
    );

    // Meanwhile, an honest member's run is served and measured.
    let spin = format!("{} spin-ms 200", s.workload());
    let out = s.measure(
        &s.member,
        &[
            "--report",
            s.member.home.path().join("h.json").to_str().unwrap(),
        ],
        &spin,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}\n{}", s.agent.log());
    let cpu = u64_at(&report_of(&s.member, "h.json"), "/totals/cpu_time_ns");
    assert!(cpu >= 190_000_000, "{cpu} ns of CPU for 200 ms of spinning");
    let hello = ask_as(&s, &s.member, r#"{"op":"hello"}"#);
    assert_eq!(hello["peer"]["uid"], s.member.uid, "{hello}");
    assert!(s.agent.alive(), "the agent died: {}", s.agent.log());
    let _ = hostile.kill();
    let _ = hostile.wait();
    let log = s.agent.log();
    assert!(!log.contains("panicked"), "{log}");
    // The hostile user's connections were refused beyond its share, and counted back.
    assert!(s.agent.alive(), "the agent died: {log}");
}

#[test]
fn a_run_whose_client_is_killed_leaves_nothing_behind() {
    if !privileged("a_run_whose_client_is_killed_leaves_nothing_behind") {
        return;
    }
    let s = Setup::new("k");
    let user = &s.member;
    let mut client = s.start_sleeping(user, "60");
    let deadline = Instant::now() + Duration::from_secs(30);
    let sleeping = || {
        Command::new("pgrep")
            .args(["-u", &user.name, "-x", "sleep"])
            .output()
            .unwrap()
            .status
            .success()
    };
    while s.runs.children().is_empty() || !sleeping() {
        assert!(
            Instant::now() < deadline,
            "no run started: {}",
            s.agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // kill -9 of the client (setpriv has exec'd it): the agent sees its connection close.
    client.kill().unwrap();
    client.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.runs.children().is_empty() || sleeping() {
        assert!(
            Instant::now() < deadline,
            "the run outlived its client: {:?}\n{}",
            s.runs.children(),
            s.agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(s.agent.log().contains("abandoned"), "{}", s.agent.log());
}

#[test]
fn a_member_gets_a_profile_through_the_agent() {
    if !privileged("a_member_gets_a_profile_through_the_agent") {
        return;
    }
    let s = Setup::new("p");
    let user = &s.member;
    let spin = format!("{} spin-ms 600", s.workload());
    let out = s.measure(
        user,
        &[
            "--profile",
            "--report",
            user.home.path().join("p.json").to_str().unwrap(),
        ],
        &spin,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}\n{}", s.agent.log());
    let report = report_of(user, "p.json");
    let profile = &report["profile"];
    assert_eq!(profile["frequency_hz"], 99, "{:#}", report["notes"]);
    // 600 ms of CPU at 99 Hz is about 59 samples; a loaded machine delays some.
    let samples = u64_at(profile, "/samples");
    assert!(
        (40..=80).contains(&samples),
        "{samples} samples\n{profile:#}"
    );
    let top = profile["top_functions"].to_string();
    assert!(top.contains("spin"), "{top}");
}
