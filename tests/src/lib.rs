//! Helpers of the privileged integration tests: finding the binary, owning a cgroup, running
//! `cleanroom` and reading ground truth from cgroupfs, and a Prometheus of the test's own that
//! scrapes an HTTP endpoint.
//!
//! Ground truth is read here, independently of the agent's own code.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// Whether the tests run in CI, where a missing privilege or kernel feature is a failure.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Returns `true` when this test can run (root, a built binary). Otherwise panics in CI, or prints
/// why it skips and returns `false`.
#[must_use]
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let why = if !root {
        Some("needs root (it loads BPF programs and makes cgroups)".to_owned())
    } else if !cleanroom_bin().is_file() {
        Some(format!(
            "no cleanroom binary at {}; run `cargo xtask test`",
            cleanroom_bin().display()
        ))
    } else {
        None
    };
    match why {
        None => true,
        Some(why) if in_ci() => panic!("{test}: {why}, and CI=true forbids skipping"),
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// The agent under test: `CLEANROOM_BIN` (set by `cargo xtask test`), else the release build.
pub fn cleanroom_bin() -> PathBuf {
    std::env::var_os("CLEANROOM_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/cleanroom"),
        PathBuf::from,
    )
}

/// The workload program of this crate (cargo tells only integration tests where it is).
#[macro_export]
macro_rules! workload_bin {
    () => {
        ::std::path::PathBuf::from(env!("CARGO_BIN_EXE_cleanroom-test-workload"))
    };
}

/// Where the cgroup v2 hierarchy is mounted, read from /proc/self/mountinfo.
pub fn v2_mount() -> PathBuf {
    let table = fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
    let mounts: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
        })
        .collect();
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|p| mounts.contains(p))
        .or_else(|| mounts.first().cloned())
        .expect("a cgroup2 mount")
}

/// A cgroup the test owns, used as `--cgroup-parent`: after the run its `cpu.stat` still holds
/// what the removed run cgroup used. Removed on drop.
pub struct TestCgroup(PathBuf);

impl TestCgroup {
    /// Makes `<v2 mount>/cleanroom-test-<name>-<pid>`.
    pub fn new(name: &str) -> Self {
        let path = v2_mount().join(format!("cleanroom-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir(&path);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `usage_usec` of its `cpu.stat`, in nanoseconds.
    pub fn cpu_usage_ns(&self) -> u64 {
        let text = fs::read_to_string(self.0.join("cpu.stat")).expect("reading cpu.stat");
        let usec: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .expect("usage_usec in cpu.stat");
        usec * 1_000
    }

    /// Sub-cgroups still present (a run must leave none).
    pub fn children(&self) -> Vec<PathBuf> {
        fs::read_dir(&self.0)
            .expect("listing test cgroup")
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for child in self.children() {
            let _ = fs::remove_dir(child);
        }
        let _ = fs::remove_dir(&self.0);
    }
}

/// `cleanroom run --cgroup-parent <cg> --report <file> -q -- command...`; returns the output
/// and the parsed report.
pub fn run_measured(cg: &TestCgroup, command: &[&str]) -> (Output, serde_json::Value) {
    run_measured_with(cg, &[], command)
}

/// [`run_measured`] with extra options for `cleanroom run` (e.g. `--config FILE`).
pub fn run_measured_with(
    cg: &TestCgroup,
    options: &[&str],
    command: &[&str],
) -> (Output, serde_json::Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = dir.path().join("report.json");
    let output = Command::new(cleanroom_bin())
        .args(["run", "-q", "--cgroup-parent"])
        .arg(cg.path())
        .arg("--report")
        .arg(&report)
        .args(options)
        .arg("--")
        .args(command)
        .output()
        .expect("starting cleanroom");
    let text = fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); cleanroom exited {:?}, stderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, serde_json::from_str(&text).expect("report is JSON"))
}

/// The image `cargo xtask test` builds for the container tests (busybox alone).
pub const TEST_IMAGE: &str = "cleanroom-test-busybox";

/// Returns `true` when a Docker engine answers and has [`TEST_IMAGE`]. Otherwise panics in
/// CI, or prints why the test skips and returns `false`.
#[must_use]
pub fn docker_ready(test: &str) -> bool {
    let has_image = Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Id}}", TEST_IMAGE])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    match has_image {
        true => true,
        false if in_ci() => panic!(
            "{test}: no Docker engine with the image {TEST_IMAGE}, and CI=true forbids skipping"
        ),
        false => {
            eprintln!(
                "SKIPPED {test}: no Docker engine with the image {TEST_IMAGE} (cargo xtask test \
                 starts one and builds it)"
            );
            false
        }
    }
}

/// A `u64` at `pointer` (JSON pointer) of `value`, with a message naming it when absent.
pub fn u64_at(value: &serde_json::Value, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {value:#}"))
}

/// Whether the running kernel is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// Writes `text` to a file in a new temporary directory (kept alive by the returned guard).
pub fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    fs::write(&path, text).expect("writing a temp file");
    let path = path.to_str().expect("utf-8 path").to_owned();
    (dir, path)
}

/// Relative difference of `a` from `b`.
pub fn rel_diff(a: u64, b: u64) -> f64 {
    (a as f64 - b as f64).abs() / (b as f64).max(1.0)
}

/// Runs a setup command, panicking with its output when it fails. Returns stdout.
pub fn sh(args: &[&str]) -> String {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("starting {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A loop device over a sparse file of the test's own; detached on drop.
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub path: String,
    _backing: tempfile::NamedTempFile,
}

impl LoopDevice {
    /// Makes one of `size` bytes.
    pub fn new(size: u64) -> Self {
        let backing = tempfile::NamedTempFile::new_in("/var/tmp").expect("backing file");
        backing
            .as_file()
            .set_len(size)
            .expect("sizing the backing file");
        let path = sh(&[
            "losetup",
            "--find",
            "--show",
            backing.path().to_str().unwrap(),
        ])
        .trim()
        .to_owned();
        Self {
            path,
            _backing: backing,
        }
    }

    /// `major:minor` of the device, as the report names it.
    pub fn major_minor(&self) -> String {
        let name = Path::new(&self.path).file_name().unwrap().to_str().unwrap();
        fs::read_to_string(format!("/sys/class/block/{name}/dev"))
            .expect("sysfs dev")
            .trim()
            .to_owned()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.path]).status();
    }
}

/// An ext4 file system of the test's own on a [`LoopDevice`], mounted in a temporary directory;
/// unmounted on drop. No journal and no lazy initialisation, so that the device carries little
/// beyond the data the test writes.
pub struct ScratchFs {
    /// Where it is mounted.
    pub mount: String,
    /// The device under it.
    pub dev: LoopDevice,
    _dir: tempfile::TempDir,
}

impl ScratchFs {
    /// Makes and mounts one of `size` bytes.
    pub fn new(size: u64) -> Self {
        let dev = LoopDevice::new(size);
        sh(&[
            "mkfs.ext4",
            "-q",
            "-F",
            "-O",
            "^has_journal",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            &dev.path,
        ]);
        let dir = tempfile::tempdir().expect("mount point");
        let mount = dir.path().to_str().expect("utf-8 path").to_owned();
        sh(&["mount", "-o", "noatime", &dev.path, &mount]);
        Self {
            mount,
            dev,
            _dir: dir,
        }
    }

    /// Bytes written to the device so far, by its own counter (`/sys/block/loopN/stat`,
    /// sectors written × 512).
    pub fn device_written_bytes(&self) -> u64 {
        let name = Path::new(&self.dev.path)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let stat = fs::read_to_string(format!("/sys/block/{name}/stat")).expect("device stat");
        let sectors: u64 = stat
            .split_whitespace()
            .nth(6)
            .and_then(|s| s.parse().ok())
            .expect("sectors written");
        sectors * 512
    }
}

impl Drop for ScratchFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

/// A network namespace of the test's own; deleted on drop.
pub struct Netns(pub String);

impl Netns {
    /// `ip netns add <name>-<pid>`, with its loopback up.
    pub fn new(name: &str) -> Self {
        let name = format!("{name}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A network namespace reached from the root one over a veth pair of its own: the host end
/// `host_if` has `host_addr`, the peer end `peer_addr` (a /30 of 169.254.`subnet`.0), with
/// static neighbour entries and no IPv6, so that nothing but the test's own traffic crosses it.
pub struct VethPeer {
    /// The peer's namespace (deleted on drop, which deletes the pair).
    pub netns: Netns,
    /// The host end's name.
    pub host_if: String,
    /// The host end's address.
    pub host_addr: String,
    /// The peer end's address.
    pub peer_addr: String,
}

impl VethPeer {
    /// Makes the namespace `name-PID` and the pair; `subnet` tells pairs of one test apart.
    pub fn new(name: &str, subnet: u8) -> Self {
        let netns = Netns::new(name);
        let id = std::process::id() % 100_000;
        let (a, b) = (format!("cr{subnet}a{id}"), format!("cr{subnet}b{id}"));
        let host_addr = format!("169.254.{subnet}.1");
        let peer_addr = format!("169.254.{subnet}.2");
        sh(&[
            "ip", "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &netns.0,
        ]);
        fs::write(format!("/proc/sys/net/ipv6/conf/{a}/disable_ipv6"), "1").unwrap();
        let ns = netns.0.as_str();
        sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{b}.disable_ipv6=1"),
        ]);
        sh(&["ip", "addr", "add", &format!("{host_addr}/30"), "dev", &a]);
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{peer_addr}/30"),
            "dev",
            &b,
        ]);
        let mac_a = fs::read_to_string(format!("/sys/class/net/{a}/address")).unwrap();
        let mac_b = sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "cat",
            &format!("/sys/class/net/{b}/address"),
        ]);
        sh(&[
            "ip",
            "neigh",
            "replace",
            &peer_addr,
            "lladdr",
            mac_b.trim(),
            "dev",
            &a,
            "nud",
            "permanent",
        ]);
        sh(&[
            "ip",
            "-n",
            ns,
            "neigh",
            "replace",
            &host_addr,
            "lladdr",
            mac_a.trim(),
            "dev",
            &b,
            "nud",
            "permanent",
        ]);
        sh(&["ip", "link", "set", &a, "up"]);
        sh(&["ip", "-n", ns, "link", "set", &b, "up"]);
        Self {
            netns,
            host_if: a,
            host_addr,
            peer_addr,
        }
    }

    /// A one-connection echo server of `workload` (the crate's workload program) in the
    /// peer's namespace on port 5001, listening once this returns.
    pub fn echo_server(&self, workload: &Path) -> std::process::Child {
        use std::io::BufRead as _;
        let mut server = Command::new(workload)
            .args([
                "--netns",
                &self.netns.0,
                "tcp-echo-serve",
                &format!("{}:5001", self.peer_addr),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("starting the echo server");
        let mut line = String::new();
        std::io::BufReader::new(server.stdout.as_mut().expect("its stdout"))
            .read_line(&mut line)
            .expect("reading the echo server's first line");
        assert_eq!(line.trim(), "listening");
        server
    }

    /// The host end's IP-level counters: (rx_bytes, rx_packets, tx_bytes, tx_packets), each
    /// frame's 14-byte Ethernet header taken off the bytes.
    pub fn ip_counters(&self) -> [u64; 4] {
        let [rxb, rxp, txb, txp] = iface_counters(None, &self.host_if);
        [rxb - 14 * rxp, rxp, txb - 14 * txp, txp]
    }
}

/// Interface counters: (rx_bytes, rx_packets, tx_bytes, tx_packets), in `netns` or the root
/// namespace.
pub fn iface_counters(netns: Option<&str>, iface: &str) -> [u64; 4] {
    ["rx_bytes", "rx_packets", "tx_bytes", "tx_packets"].map(|c| {
        let file = format!("/sys/class/net/{iface}/statistics/{c}");
        let text = match netns {
            Some(ns) => sh(&["ip", "netns", "exec", ns, "cat", &file]),
            None => fs::read_to_string(&file).expect("interface counter"),
        };
        text.trim().parse().expect("a number")
    })
}

/// The entry of `block_devices` for `major_minor` in a report.
pub fn block_device<'a>(report: &'a serde_json::Value, major_minor: &str) -> &'a serde_json::Value {
    report["block_devices"]
        .as_array()
        .and_then(|devices| devices.iter().find(|d| d["device"] == major_minor))
        .unwrap_or_else(|| {
            panic!(
                "no block device {major_minor} in {:#}",
                report["block_devices"]
            )
        })
}

/// Returns `true` when `tool` is on PATH. Otherwise panics in CI, or prints why the test skips.
#[must_use]
pub fn tool(test: &str, tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    match found {
        true => true,
        false if in_ci() => {
            panic!("{test}: `{tool}` is not installed, and CI=true forbids skipping")
        }
        false => {
            eprintln!("SKIPPED {test}: `{tool}` is not installed (cargo xtask test installs it)");
            false
        }
    }
}

/// Runs `cleanroom ARGS` with a history store of the test's own (a file, or a `postgres://`
/// URL); returns the output.
pub fn cleanroom(store: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
    Command::new(cleanroom_bin())
        .env("CLEANROOM_STORE", store)
        .args(args)
        .output()
        .expect("starting cleanroom")
}

/// `report` rendered by `cleanroom report --format md`.
pub fn markdown_of(report: &serde_json::Value) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("run.json");
    fs::write(&json, report.to_string()).expect("writing the report");
    let out = cleanroom(
        dir.path().join("history.db"),
        &[
            "report",
            json.to_str().expect("a UTF-8 path"),
            "--format",
            "md",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fraction of pixels that are not near-white in a binary PPM (P6) image.
pub fn ink_fraction(ppm: &[u8]) -> f64 {
    // Header: "P6\n<w> <h>\n<max>\n", possibly with comments.
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 && i < ppm.len() {
        while i < ppm.len() && ppm[i].is_ascii_whitespace() {
            i += 1;
        }
        if ppm.get(i) == Some(&b'#') {
            while i < ppm.len() && ppm[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        while i < ppm.len() && !ppm[i].is_ascii_whitespace() {
            i += 1;
        }
        fields.push(String::from_utf8_lossy(&ppm[start..i]).into_owned());
    }
    assert_eq!(
        fields.first().map(String::as_str),
        Some("P6"),
        "not a binary PPM"
    );
    let pixels = &ppm[i + 1..];
    let total = pixels.len() / 3;
    let inked = pixels
        .chunks_exact(3)
        .filter(|p| p.iter().any(|c| *c < 200))
        .count();
    inked as f64 / total.max(1) as f64
}

/// Asserts that `report` validates against the published schema, docs/report.schema.json.
pub fn assert_matches_schema(report: &serde_json::Value) {
    let schema: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/report.schema.json"),
        )
        .expect("reading the schema"),
    )
    .expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the schema is valid");
    let errors: Vec<String> = validator
        .iter_errors(report)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "report does not match its schema: {errors:#?}"
    );
}

/// One element of a Prometheus instant vector: its labels and its value.
pub type Sample = (BTreeMap<String, String>, f64);

/// A Prometheus server of the test's own, on a free loopback port, with its configuration, data
/// and log in a temporary directory. It scrapes one target every second as job `cleanroom`.
/// Killed on drop.
///
/// It is ready about 0.1 s after it starts, but its first scrape comes some 5 s later
/// (Prometheus hands new targets to its scrapers on a fixed 5 s tick): wait for samples with
/// [`Prometheus::wait_for`] and a timeout of tens of seconds.
pub struct Prometheus {
    child: Child,
    url: String,
    agent: ureq::Agent,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// How long [`Prometheus::start`] waits for `/-/ready`.
    pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

    /// Starts `prometheus` scraping `http://<target>/metrics` (`target` is `host:port`) every
    /// second, sending `Authorization: Bearer <token>` when `bearer_token` is given, and waits
    /// until it is ready. Panics with the tail of its log when it exits or is not ready in
    /// [`Prometheus::READY_TIMEOUT`].
    pub fn start(target: &str, bearer_token: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // JSON strings are YAML double-quoted scalars: any target or token is quoted safely.
        let quote = |s: &str| serde_json::Value::from(s).to_string();
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: cleanroom\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [{}]\n",
            quote(target)
        );
        if let Some(token) = bearer_token {
            config += &format!(
                "    authorization:\n      type: Bearer\n      credentials: {}\n",
                quote(token)
            );
        }
        let config_path = dir.path().join("prometheus.yml");
        fs::write(&config_path, config).expect("writing prometheus.yml");
        let log_path = dir.path().join("prometheus.log");
        let log = fs::File::create(&log_path).expect("creating the Prometheus log");
        let port = free_loopback_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting prometheus: {e}"));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut prometheus = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            agent,
            dir,
        };
        prometheus.wait_ready();
        prometheus
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Self::READY_TIMEOUT;
        let ready = format!("{}/-/ready", self.url);
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for prometheus") {
                panic!(
                    "prometheus exited ({status}) before it was ready; its log ends:\n{}",
                    self.log_tail()
                );
            }
            if self
                .agent
                .get(&ready)
                .call()
                .is_ok_and(|r| r.status() == 200)
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "prometheus was not ready at {ready} after {:?}; its log ends:\n{}",
                    Self::READY_TIMEOUT,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The last 40 lines of its log (stdout and stderr).
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `GET path` of its HTTP API, parsed as JSON; panics with the body unless `status` is
    /// `success`.
    fn api(&self, path: &str, query: &[(&str, &str)]) -> serde_json::Value {
        let url = format!("{}{path}", self.url);
        let mut request = self.agent.get(&url);
        for (key, value) in query {
            request = request.query(key, value);
        }
        let mut response = request
            .call()
            .unwrap_or_else(|e| panic!("GET {url} {query:?}: {e}"));
        let body = response
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|e| panic!("reading the answer of GET {url} {query:?}: {e}"));
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| {
            panic!(
                "GET {url} {query:?} answered {} with no JSON ({e}):\n{body}",
                response.status()
            )
        });
        assert!(
            json["status"] == "success",
            "GET {url} {query:?} answered {}:\n{body}",
            response.status()
        );
        json
    }

    /// Evaluates `promql` now (`/api/v1/query`): the samples of the resulting vector, or the one
    /// of a scalar (with no labels). Panics with Prometheus's answer when the query fails.
    pub fn query(&self, promql: &str) -> Vec<Sample> {
        let json = self.api("/api/v1/query", &[("query", promql)]);
        let data = &json["data"];
        let value = |v: &serde_json::Value| -> f64 {
            let text = v[1]
                .as_str()
                .unwrap_or_else(|| panic!("no value in {v} of query {promql:?}"));
            text.parse()
                .unwrap_or_else(|e| panic!("value {text:?} of query {promql:?}: {e}"))
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .expect("a vector's result is an array")
                .iter()
                .map(|s| {
                    let labels = s["metric"]
                        .as_object()
                        .expect("a sample's metric is an object")
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect();
                    (labels, value(&s["value"]))
                })
                .collect(),
            Some("scalar") => vec![(BTreeMap::new(), value(&data["result"]))],
            other => panic!("query {promql:?} gave a {other:?}, not a vector or scalar: {json}"),
        }
    }

    /// Polls [`Prometheus::query`] until `done` holds for its result, and returns that result.
    /// Panics after `timeout` with the last result and the state of the scrape target.
    pub fn wait_for(
        &self,
        promql: &str,
        timeout: Duration,
        done: impl Fn(&[Sample]) -> bool,
    ) -> Vec<Sample> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.query(promql);
            if done(&result) {
                return result;
            }
            if Instant::now() > deadline {
                panic!(
                    "query {promql:?} did not give what was awaited in {timeout:?}; last result: \
                     {result:?}; scrape targets: {}",
                    self.targets()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether the last scrape of the target succeeded (`up{job="cleanroom"} == 1`).
    pub fn targets_up(&self) -> bool {
        let up = self.query(r#"up{job="cleanroom"}"#);
        !up.is_empty() && up.iter().all(|(_, v)| *v == 1.0)
    }

    /// The active scrape targets (`/api/v1/targets`), for messages: each one's URL, health and
    /// last error.
    pub fn targets(&self) -> String {
        let json = self.api("/api/v1/targets", &[]);
        let targets = json["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let described: Vec<String> = targets
            .iter()
            .map(|t| {
                format!(
                    "{} {} {:?}",
                    t["scrapeUrl"].as_str().unwrap_or("?"),
                    t["health"].as_str().unwrap_or("?"),
                    t["lastError"].as_str().unwrap_or("")
                )
            })
            .collect();
        format!("[{}]", described.join(", "))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill has no memory preconditions; the child is ours and not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child a test started (an agent), killed and reaped on drop unless the test stopped it
/// itself: a test that fails before its end leaves nothing running.
pub struct Started(Option<Child>);

impl Started {
    /// Takes charge of `child`.
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// Sends SIGTERM, then [`Started::wait`]s.
    pub fn terminate(self) -> Output {
        if let Some(pid) = self
            .0
            .as_ref()
            .and_then(|c| libc::pid_t::try_from(c.id()).ok())
        {
            // SAFETY: kill has no memory preconditions; the child is ours and not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        self.wait()
    }

    /// Waits for the child's exit: its status and what it printed to the pipes it was given.
    pub fn wait(mut self) -> Output {
        let child = self.0.take().expect("a child not yet stopped");
        child.wait_with_output().expect("waiting for a child")
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until something listens on loopback `port`; panics after 30 s, naming `what`.
pub fn wait_for_port(port: u16, what: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "{what} never listened on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `sh -c SCRIPT` with the shell moved into `cgroup` first; waits for it, and panics if it
/// failed.
pub fn run_in_cgroup(cgroup: &Path, script: &str) -> Output {
    let output = Command::new("sh")
        .arg("-c")
        // On a line of its own: `a && b &` would background both in a subshell.
        .arg(format!(
            "echo $$ > {}/cgroup.procs || exit 1\n{script}",
            cgroup.display()
        ))
        .output()
        .expect("sh");
    assert!(output.status.success(), "{script}: {output:?}");
    output
}

/// A loopback TCP port that was free a moment ago (bound to port 0, read and released).
pub fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// A throwaway PostgreSQL cluster of the test's own (Debian's `postgresql`): `initdb` and
/// `pg_ctl` run as the `postgres` user in a private directory, the server listening on a free
/// loopback port (and a socket in that directory), trusting local connections. Stopped and
/// removed on drop.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl PgCluster {
    /// Makes and starts a cluster, or, when PostgreSQL is not installed, panics in CI and
    /// returns `None` elsewhere, printing why `test` skips.
    pub fn start(test: &str) -> Option<Self> {
        let bin = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").is_file())
            .max();
        let Some(bin) = bin else {
            assert!(
                !in_ci(),
                "{test}: PostgreSQL is not installed, and CI=true forbids skipping"
            );
            eprintln!("SKIPPED {test}: PostgreSQL is not installed (cargo xtask test installs it)");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        sh(&["chown", "postgres:postgres", dir.path().to_str().unwrap()]);
        let cluster = Self {
            dir,
            bin,
            port: free_loopback_port(),
        };
        let data = cluster.data();
        cluster.as_postgres(&[
            "initdb",
            "-D",
            &data,
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        cluster.resume();
        Some(cluster)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Runs one of PostgreSQL's programs as `postgres`; panics with its output if it fails.
    fn as_postgres(&self, args: &[&str]) -> String {
        let out = Command::new("setpriv")
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(self.bin.join(args[0]))
            .args(&args[1..])
            .current_dir(self.dir.path())
            .output()
            .expect("setpriv");
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts the server (again), waiting until it takes connections.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.as_postgres(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-l",
            &log,
            "-o",
            &options,
            "-w",
            "start",
        ]);
    }

    /// Stops the server (fast: connections are cut), as a database that goes away does.
    pub fn pause(&self) {
        self.as_postgres(&["pg_ctl", "-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// The URL of database `postgres` as user `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `psql -At -c SQL`: the rows, one a line, columns separated by `|`.
    pub fn psql(&self, sql: &str) -> String {
        let port = self.port.to_string();
        self.as_postgres(&[
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-At",
            "-c",
            sql,
        ])
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new("setpriv")
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .current_dir(self.dir.path())
            .output();
    }
}
