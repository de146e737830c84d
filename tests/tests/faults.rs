//! Hostile and clumsy input, and faults: planted links, permissive umasks, bad cgroup parents,
//! endless inputs, impossible limits, failed outputs, a damaged store, SIGKILL and signals at
//! random times, leftovers, long runs. Each test drives the real binary as root.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use cleanroom_tests::{TestCgroup, cleanroom_bin, privileged, v2_mount};

/// Waits for `child` at most `limit`; kills it and fails the test when it takes longer.
fn wait_at_most(mut child: Child, limit: Duration, what: &str) -> Output {
    let started = Instant::now();
    loop {
        if child.try_wait().expect("waiting").is_some() {
            return child.wait_with_output().expect("collecting output");
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collecting output");
            panic!("{what}: still running after {limit:?}: {out:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `cleanroom ARGS` with a store of the test's own, at most `limit`.
fn cleanroom_within(store: &Path, args: &[&str], limit: Duration) -> Output {
    let child = Command::new(cleanroom_bin())
        .env("CLEANROOM_STORE", store)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting cleanroom");
    wait_at_most(child, limit, &format!("cleanroom {args:?}"))
}

/// `cleanroom run -q --no-store --cgroup-parent CG EXTRA --report R.json -- COMMAND`, at most
/// two minutes; the output and the parsed report.
fn measured(cg: &TestCgroup, extra: &[&str], command: &[&str]) -> (Output, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let mut args = vec![
        "run",
        "-q",
        "--no-store",
        "--cgroup-parent",
        cg.path().to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ];
    args.extend(extra);
    args.push("--");
    args.extend(command);
    let out = cleanroom_within(&dir.path().join("h.db"), &args, Duration::from_secs(120));
    let json = fs::read_to_string(&report)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| panic!("no report: {out:?}"));
    (out, json)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Places where a run of cleanroom pid `pid` makes directories: its v2 cgroup under `parent`,
/// and v1 twins beside where this process sits in each v1 hierarchy. Returns those that exist.
fn run_dirs_of(parent: &Path, pid: u32) -> Vec<PathBuf> {
    let suffix = format!("-{pid}");
    let mut places = vec![parent.to_owned()];
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split_whitespace();
        if r.next() != Some("cgroup") {
            continue;
        }
        let options = r.nth(1).unwrap_or_default();
        let mount_point = left.split_whitespace().nth(4).unwrap_or_default();
        for controller in ["memory", "cpu", "pids"] {
            if options.split(',').any(|o| o == controller) {
                let path = own.lines().find_map(|l| {
                    let mut p = l.splitn(3, ':');
                    let _ = p.next();
                    let cs = p.next()?;
                    cs.split(',').any(|c| c == controller).then(|| p.next())?
                });
                let place =
                    Path::new(mount_point).join(path.unwrap_or("/").trim_start_matches('/'));
                if !places.contains(&place) {
                    places.push(place);
                }
            }
        }
    }
    places
        .iter()
        .filter_map(|p| fs::read_dir(p).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name.starts_with("run-") || name.starts_with("cleanroom-run-"))
                && name.ends_with(&suffix)
        })
        .map(|e| e.path())
        .collect()
}

/// Waits until `cond` holds, at most `limit`.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Pids in a cgroup's `cgroup.procs` (empty when it is gone).
fn procs_in(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for our purpose.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}

/// Children of `pid` (from /proc/*/stat).
fn children_of(pid: u32) -> Vec<(i32, String)> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| {
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(") ")?;
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            let cmdline = fs::read(format!("/proc/{p}/cmdline")).ok()?;
            (ppid == pid).then(|| (p, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
        .collect()
}

/// A user made for the test, removed on drop.
struct TestUser(String);

impl TestUser {
    fn new() -> Self {
        let name = format!("crtest{}", std::process::id());
        let _ = Command::new("userdel").arg(&name).output();
        let out = Command::new("useradd")
            .args(["-M", "-N", "-r", "-s", "/usr/sbin/nologin", &name])
            .output()
            .expect("useradd");
        assert!(out.status.success(), "useradd {name}: {out:?}");
        Self(name)
    }

    /// Runs `cmd` as this user.
    fn run(&self, cmd: &[&str]) -> Output {
        Command::new("runuser")
            .args(["-u", &self.0, "--"])
            .args(cmd)
            .output()
            .expect("runuser")
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).output();
    }
}

/// A sysctl set for the test and put back on drop.
struct Sysctl(&'static str, String);

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Self {
        let old = fs::read_to_string(path).expect("reading sysctl");
        fs::write(path, value).expect("writing sysctl");
        Self(path, old)
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = fs::write(self.0, self.1.trim());
    }
}

#[test]
fn another_user_can_neither_redirect_nor_read_the_outputs() {
    if !privileged("another_user_can_neither_redirect_nor_read_the_outputs") {
        return;
    }
    let user = TestUser::new();
    // Without the kernel's own protection, as on hosts that turn it off.
    let _links = Sysctl::set("/proc/sys/fs/protected_symlinks", "0");
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, "precious").unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let report = shared.join("ci.json");
    for name in ["ci.json.partial", "ci.json", "ci.md.partial"] {
        let planted = user.run(&[
            "ln",
            "-s",
            victim.to_str().unwrap(),
            shared.join(name).to_str().unwrap(),
        ]);
        assert!(planted.status.success(), "planting {name}: {planted:?}");
    }

    let store = dir.path().join("state/cleanroom/history.db");
    let cg = TestCgroup::new("links");
    let out = Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$@\"")
        .arg("sh")
        .arg(cleanroom_bin())
        .args(["run", "-q", "--cgroup-parent"])
        .arg(cg.path())
        .arg("--store")
        .arg(&store)
        .arg("--report")
        .arg(&report)
        .arg("--report")
        .arg(shared.join("ci.md"))
        .args(["--", "sh", "-c", "echo secret-argument >/dev/null"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "precious",
        "the report was written through a planted link"
    );
    let meta = fs::symlink_metadata(&report).unwrap();
    assert!(meta.is_file(), "the report is not a regular file");
    assert_eq!(meta.uid(), 0);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&report), 0o644, "report mode under umask 000");
    assert_eq!(mode(&shared.join("ci.md")), 0o644);
    assert_eq!(mode(store.parent().unwrap()), 0o700, "store directory");
    assert_eq!(mode(&store), 0o600, "store file");
    for side in ["-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{side}", store.display()));
        if p.exists() {
            assert_eq!(mode(&p) & 0o077, 0, "{} is {:o}", p.display(), mode(&p));
        }
    }
    let leftovers: Vec<_> = fs::read_dir(&shared)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    // The other user cannot read the history, which holds whole command lines.
    fs::set_permissions(dir.path().join("state"), fs::Permissions::from_mode(0o755)).unwrap();
    let read = user.run(&["cat", store.to_str().unwrap()]);
    assert!(
        !read.status.success(),
        "another user read the store: {read:?}"
    );
}

#[test]
fn cgroup_parents_outside_the_v2_hierarchy_are_refused_before_anything_is_made() {
    if !privileged("cgroup_parents_outside_the_v2_hierarchy_are_refused_before_anything_is_made") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("h.db");
    let marker = dir.path().join("ran");
    let mut parents = vec![
        "/etc".to_owned(),
        "../../".to_owned(),
        "relative/parent".to_owned(),
        format!("{}/../..", v2_mount().display()),
        dir.path().display().to_string(),
    ];
    if Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists()
        && v2_mount() != Path::new("/sys/fs/cgroup")
    {
        parents.push("/sys/fs/cgroup/memory".into());
    }
    for parent in parents {
        let before: Vec<_> = fs::read_dir("/etc")
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        let out = cleanroom_within(
            &store,
            &[
                "run",
                "--no-store",
                "--cgroup-parent",
                &parent,
                "--",
                "touch",
                marker.to_str().unwrap(),
            ],
            Duration::from_secs(30),
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{parent}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{parent}: one line expected: {err}"
        );
        assert!(
            err.contains("give a directory of the cgroup v2 hierarchy"),
            "{parent}: {err}"
        );
        assert!(!marker.exists(), "{parent}: the command ran");
        let after: Vec<_> = fs::read_dir("/etc")
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(before, after, "{parent}: something was made in /etc");
        assert!(
            fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().starts_with("run-")),
            "{parent}: a run directory was made"
        );
    }
}

#[test]
fn endless_devices_fifos_and_huge_files_are_refused_at_once() {
    if !privileged("endless_devices_fifos_and_huge_files_are_refused_at_once") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("h.db");
    let fifo = dir.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success(),
        "mkfifo"
    );
    let huge = dir.path().join("huge.json");
    fs::write(&huge, vec![b' '; 17 << 20]).unwrap();
    let huge_toml = dir.path().join("huge.toml");
    fs::write(&huge_toml, vec![b'#'; 2 << 20]).unwrap();
    let fifo = fifo.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", "--config", "/dev/zero", "--", "true"],
            "not a regular file",
        ),
        (
            vec!["run", "--slo", "/dev/zero", "--", "true"],
            "not a regular file",
        ),
        (
            vec!["run", "--config", "/dev/urandom", "--", "true"],
            "not a regular file",
        ),
        (vec!["run", "--config", fifo, "--", "true"], "FIFO"),
        (
            vec!["run", "--config", huge_toml.to_str().unwrap(), "--", "true"],
            "larger than",
        ),
        (vec!["report", "/dev/zero"], "not a regular file"),
        (vec!["report", fifo], "FIFO"),
        (vec!["report", huge.to_str().unwrap()], "larger than"),
        (
            vec!["compare", "/dev/zero", "/dev/zero"],
            "not a regular file",
        ),
    ];
    for (args, expect) in cases {
        let out = cleanroom_within(&store, &args, Duration::from_secs(10));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(err.len() < 1000, "{args:?}: {} bytes of error", err.len());
    }
}

#[test]
fn sizes_and_limits_that_cannot_work_name_file_line_and_key() {
    if !privileged("sizes_and_limits_that_cannot_work_name_file_line_and_key") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("h.db");
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let too_many = format!("max_cpu_usage_percent = {}", cpus * 100 + 100);
    let cases = [
        (
            "[performance_monitoring.thresholds]\nmax_memory_usage_bytes = \"99999999999999999999GiB\"\n",
            2,
            "max_memory_usage_bytes",
            "too large",
        ),
        (
            "[resource_limits]\nmax_memory_usage_bytes = 0\n",
            2,
            "max_memory_usage_bytes",
            "too small",
        ),
        (
            "[resource_limits]\nmax_cpu_usage_percent = 0\n",
            2,
            "max_cpu_usage_percent",
            "below the smallest",
        ),
        (
            &*format!("[resource_limits]\n{too_many}\n"),
            2,
            "max_cpu_usage_percent",
            "limit nothing",
        ),
    ];
    for (i, (text, line, key, expect)) in cases.into_iter().enumerate() {
        let file = dir.path().join(format!("c{i}.toml"));
        fs::write(&file, text).unwrap();
        let marker = dir.path().join(format!("ran{i}"));
        let out = cleanroom_within(
            &store,
            &[
                "run",
                "--config",
                file.to_str().unwrap(),
                "--",
                "touch",
                marker.to_str().unwrap(),
            ],
            Duration::from_secs(10),
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        let place = format!("{}:{line}: key `{key}`", file.display());
        assert!(err.contains(&place), "{text}: expected {place} in {err}");
        assert!(err.contains(expect), "{text}: {err}");
        assert!(!marker.exists(), "{text}: the command ran");
    }
}

#[test]
fn a_report_of_a_newer_schema_renders_with_a_warning() {
    if !privileged("a_report_of_a_newer_schema_renders_with_a_warning") {
        return;
    }
    let cg = TestCgroup::new("newer");
    let (out, mut json) = measured(&cg, &[], &["true"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("h.db");
    let report = dir.path().join("r.json");
    json["schema_version"] = 2.into();
    json["a_field_from_the_future"] = "x".into();
    fs::write(&report, json.to_string()).unwrap();
    let out = cleanroom_within(
        &store,
        &["report", report.to_str().unwrap(), "-f", "md"],
        Duration::from_secs(10),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("schema version 2 is newer"), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("## Cleanroom"),
        "nothing rendered"
    );
}

#[test]
fn bad_report_paths_and_baselines_are_refused_before_the_command_runs() {
    if !privileged("bad_report_paths_and_baselines_are_refused_before_the_command_runs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("h.db");
    let marker = dir.path().join("ran");
    let garbage = dir.path().join("garbage.json");
    fs::write(&garbage, "{ not json").unwrap();
    let cg = TestCgroup::new("badout");
    let a_dir = dir.path().display().to_string();
    let missing = dir.path().join("missing/r.json").display().to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec!["--report", "/proc/x.json"],
        vec!["--report", &a_dir],
        vec!["--report", &missing],
        vec!["--report", "r.unknown"],
        vec!["--baseline", "999"],
        vec!["--baseline", garbage.to_str().unwrap()],
    ];
    for extra in cases {
        let mut args = vec!["run", "-q", "--cgroup-parent", cg.path().to_str().unwrap()];
        args.extend(&extra);
        args.extend(["--", "touch", marker.to_str().unwrap()]);
        let out = cleanroom_within(&store, &args, Duration::from_secs(30));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(
            !marker.exists(),
            "{extra:?}: the command ran before the error"
        );
        assert_eq!(err.trim().lines().count(), 1, "{extra:?}: {err}");
    }
}

/// A small tmpfs of the test's own, unmounted on drop.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn new(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs");
        Self(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_filesystem_loses_neither_the_run_nor_the_commands_exit_code() {
    if !privileged("a_full_filesystem_loses_neither_the_run_nor_the_commands_exit_code") {
        return;
    }
    let full = SmallFs::new("64k");
    // Fill it: every data block taken, a new empty file still possible.
    let _ = fs::write(full.path().join("filler"), vec![0u8; 128 << 10]);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("h.db");
    let md = dir.path().join("r.md");
    let cg = TestCgroup::new("fullfs");
    for (command, expected) in [("exit 0", 2), ("exit 5", 5)] {
        let _ = fs::remove_file(&md);
        let out = cleanroom_within(
            &store,
            &[
                "run",
                "-q",
                "--cgroup-parent",
                cg.path().to_str().unwrap(),
                "--report",
                full.path().join("r.json").to_str().unwrap(),
                "--report",
                md.to_str().unwrap(),
                "--",
                "sh",
                "-c",
                command,
            ],
            Duration::from_secs(60),
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(expected), "`{command}`: {err}");
        assert!(err.contains("report not written"), "`{command}`: {err}");
        assert!(md.exists(), "`{command}`: the other report was not written");
        let names: Vec<String> = fs::read_dir(full.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["filler"], "`{command}`: left on the full fs");
    }
    let history = cleanroom_within(&store, &["history"], Duration::from_secs(10));
    let listed = String::from_utf8_lossy(&history.stdout);
    assert_eq!(
        listed.lines().count(),
        3,
        "both runs stored (header + 2 lines): {listed}"
    );
}

#[test]
fn a_damaged_store_is_refused_and_the_report_stays_on_disk() {
    if !privileged("a_damaged_store_is_refused_and_the_report_stays_on_disk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("h.db");
    let cg = TestCgroup::new("damaged");
    let run = |report: &Path| {
        cleanroom_within(
            &store,
            &[
                "run",
                "-q",
                "--interval",
                "10ms",
                "--cgroup-parent",
                cg.path().to_str().unwrap(),
                "--report",
                report.to_str().unwrap(),
                "--",
                "sleep",
                "0.3",
            ],
            Duration::from_secs(60),
        )
    };
    for i in 0..4 {
        let out = run(&dir.path().join(format!("r{i}.json")));
        assert_eq!(out.status.code(), Some(0), "{out:?}");
    }
    // Fold the journal in, then spoil 4 KiB in the middle.
    let checkpoint = Command::new(cleanroom_bin())
        .env("CLEANROOM_STORE", &store)
        .arg("history")
        .output()
        .unwrap();
    assert!(checkpoint.status.success());
    let len = fs::metadata(&store).unwrap().len();
    assert!(len >= 3 * 4096, "store of {len} bytes");
    let mut bytes = fs::read(&store).unwrap();
    let at = (len as usize / 2) / 4096 * 4096;
    bytes[at..at + 4096].fill(0xA5);
    fs::write(&store, bytes).unwrap();
    let report = dir.path().join("after.json");
    let out = run(&report);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is damaged"), "{err}");
    assert!(!err.contains("stored as run"), "{err}");
    assert!(report.exists(), "the report was not written");
}

/// Starts `cleanroom run -- CMD` under `cg`; returns it once the command is running in its
/// run cgroup, with that cgroup's path.
fn start_run(cg: &TestCgroup, extra: &[&str], command: &[&str]) -> (Child, PathBuf) {
    let child = Command::new(cleanroom_bin())
        .args(["run", "-q", "--no-store", "--cgroup-parent"])
        .arg(cg.path())
        .args(extra)
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut run_dir = None;
    let found = eventually(Duration::from_secs(30), || {
        run_dir = cg.children().into_iter().find(|d| !procs_in(d).is_empty());
        run_dir.is_some()
    });
    assert!(found, "the command never appeared in a run cgroup");
    (child, run_dir.unwrap())
}

#[test]
fn sigkill_of_cleanroom_takes_the_command_and_its_cgroups_along() {
    if !privileged("sigkill_of_cleanroom_takes_the_command_and_its_cgroups_along") {
        return;
    }
    let cg = TestCgroup::new("sigkill");
    let (mut child, run_dir) = start_run(&cg, &[], &["sh", "-c", "sleep 30 & sleep 30"]);
    thread::sleep(Duration::from_millis(200));
    let pids = procs_in(&run_dir);
    assert!(!pids.is_empty());
    child.kill().unwrap();
    let _ = child.wait();
    let cleaned = eventually(Duration::from_secs(2), || {
        pids.iter().all(|p| !alive(*p)) && run_dirs_of(cg.path(), child.id()).is_empty()
    });
    assert!(
        cleaned,
        "2 s after SIGKILL: alive {:?}, left {:?}",
        pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>(),
        run_dirs_of(cg.path(), child.id())
    );
}

#[test]
fn stale_runs_of_a_dead_cleanroom_are_shown_by_doctor_and_removed_by_the_next_run() {
    if !privileged("stale_runs_of_a_dead_cleanroom_are_shown_by_doctor_and_removed_by_the_next_run")
    {
        return;
    }
    let cg = TestCgroup::new("stale");
    let (mut child, _) = start_run(&cg, &[], &["sleep", "30"]);
    // Its watchdog dies with it, as when a whole job's processes are killed at once.
    let watchdogs: Vec<i32> = children_of(child.id())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("watchdog"))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(watchdogs.len(), 1, "{:?}", children_of(child.id()));
    for p in &watchdogs {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    child.kill().unwrap();
    let _ = child.wait();
    thread::sleep(Duration::from_millis(300));
    let stale = run_dirs_of(cg.path(), child.id());
    assert!(
        !stale.is_empty(),
        "nothing stale to clean: the test proves nothing"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = cleanroom_within(
        &dir.path().join("h.db"),
        &[
            "run",
            "--no-store",
            "-q",
            "--cgroup-parent",
            cg.path().to_str().unwrap(),
            "--",
            "true",
        ],
        Duration::from_secs(60),
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("left by cleanroom processes that are gone"),
        "{err}"
    );
    assert!(
        run_dirs_of(cg.path(), child.id()).is_empty(),
        "still there: {:?}",
        run_dirs_of(cg.path(), child.id())
    );
}

#[test]
fn doctor_shows_stale_runs() {
    if !privileged("doctor_shows_stale_runs") {
        return;
    }
    // A run cgroup whose owner is long gone, in the default place doctor looks.
    let parent = v2_mount().join("cleanroom");
    fs::create_dir_all(&parent).unwrap();
    let stale = parent.join(format!("run-1-{}", i32::MAX - 7));
    // Another test's run in the default place may clean it up first: try again then.
    let mut text = String::new();
    for _ in 0..5 {
        let _ = fs::create_dir(&stale);
        let out = Command::new(cleanroom_bin())
            .arg("doctor")
            .output()
            .unwrap();
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains(&stale.display().to_string()) || stale.exists() {
            break;
        }
    }
    let _ = fs::remove_dir(&stale);
    assert!(
        text.contains(&stale.display().to_string()),
        "doctor does not show {}: {text}",
        stale.display()
    );
}

#[test]
fn signals_at_random_times_in_the_first_second_leave_nothing_behind() {
    if !privileged("signals_at_random_times_in_the_first_second_leave_nothing_behind") {
        return;
    }
    let cg = TestCgroup::new("signals");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    for attempt in 0..20 {
        // xorshift: a delay in [0, 1 s) and a signal.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(seed % 1000);
        let signal = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP][(seed >> 20) as usize % 3];
        let child = Command::new(cleanroom_bin())
            .args(["run", "-q", "--no-store", "--cgroup-parent"])
            .arg(cg.path())
            .args(["--", "sleep", "10"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        thread::sleep(delay);
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid as i32, signal) };
        let out = wait_at_most(child, Duration::from_secs(30), "cleanroom after a signal");
        let left = run_dirs_of(cg.path(), pid);
        assert!(
            left.is_empty(),
            "attempt {attempt}: signal {signal} after {delay:?} left {left:?}; stderr: {}",
            stderr(&out)
        );
    }
    assert!(cg.children().is_empty(), "{:?}", cg.children());
}

#[test]
fn a_daemon_left_behind_is_named_and_counted() {
    if !privileged("a_daemon_left_behind_is_named_and_counted") {
        return;
    }
    let cg = TestCgroup::new("daemon");
    // Double-forked: reparented away from the command, still in its cgroup.
    let (out, json) = measured(&cg, &[], &["sh", "-c", "(sleep 301 &) ; sleep 0.3; exit 0"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let leftovers = json["leftovers"].as_array().cloned().unwrap_or_default();
    assert_eq!(leftovers.len(), 1, "{json:#}");
    assert_eq!(leftovers[0]["command"], "sleep 301", "{json:#}");
    let notes = json["notes"].to_string();
    assert!(notes.contains("sleep 301"), "{notes}");

    // Interrupted: the count of killed leftovers is right too.
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("interrupted.json");
    let (child, run_dir) = start_run(
        &cg,
        &["--report", report.to_str().unwrap()],
        // A daemon has a session (and process group) of its own, so the signal passed on to
        // the command's process group does not reach it; the end of the run does.
        &["sh", "-c", "(setsid sleep 302 &) ; exec sleep 30"],
    );
    let daemon_started = eventually(Duration::from_secs(10), || {
        procs_in(&run_dir).iter().any(|p| {
            fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\x00302"))
        })
    });
    assert!(daemon_started, "the daemon never started");
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = wait_at_most(child, Duration::from_secs(30), "interrupted run");
    assert_eq!(out.status.code(), Some(143), "{out:?}");
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["interrupted"]["killed_leftovers"], 1, "{json:#}");
    assert_eq!(json["leftovers"][0]["command"], "sleep 302", "{json:#}");
}

#[test]
fn a_long_run_keeps_a_bounded_series() {
    if !privileged("a_long_run_keeps_a_bounded_series") {
        return;
    }
    let cg = TestCgroup::new("series");
    let (out, json) = measured(&cg, &["--interval", "10ms"], &["sleep", "23"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let points = json["series"].as_array().map_or(0, Vec::len);
    let resolution = &json["series_resolution"];
    let intervals = resolution["intervals"].as_u64().unwrap_or(0);
    let max = resolution["max_points"].as_u64().unwrap_or(0);
    assert!(intervals > 2048, "only {intervals} intervals: {resolution}");
    assert!(points as u64 <= max, "{points} points, at most {max}");
    let covered: u64 = json["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["interval_ns"].as_u64().unwrap())
        .sum();
    let wall = json["wall_time_ns"].as_u64().unwrap();
    assert!(
        covered <= wall && covered * 10 >= wall * 9,
        "the series covers {covered} ns of {wall}"
    );
}

#[test]
fn a_signal_reaches_the_commands_whole_process_group() {
    if !privileged("a_signal_reaches_the_commands_whole_process_group") {
        return;
    }
    let cg = TestCgroup::new("pgroup");
    // The shell catches SIGINT and waits for its child, as GNU time or a test runner would;
    // the child must get the signal too, as it would from a terminal.
    let (child, run_dir) = start_run(&cg, &[], &["sh", "-c", "trap : INT; sleep 30; exit 7"]);
    // The sleep itself, not the shell's child before its exec: a signal in between would
    // reach a copy of the shell, which traps it and goes on to sleep.
    let sleeping = || {
        procs_in(&run_dir).iter().any(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
    };
    assert!(
        eventually(Duration::from_secs(10), sleeping),
        "the sleep never started"
    );
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = wait_at_most(child, Duration::from_secs(10), "a run after SIGINT");
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
}
