//! `cargo xtask vm-test`: the privileged integration tests inside other kernels, on pure cgroup
//! v2, in qemu.
//!
//! Each kernel of the matrix is a Debian kernel package, fetched with apt and unpacked under
//! `target/vm/<name>/`. It boots under software emulation (TCG: KVM is not assumed) with a
//! busybox initramfs that loads the 9p and virtio modules, mounts this machine's root read-only
//! (so the project's binaries and test programs run unchanged, chrooted), a writable results
//! share, and an ext4 scratch disk on a virtio disk at `/var/tmp` (real block I/O and writeback
//! for the tests' loop devices and files). cgroup v2 is mounted alone, every controller enabled
//! in the root's `cgroup.subtree_control`, as systemd does on a real host. The test executables
//! run one after the other with `CI=true`; their output comes back through the results share
//! and prints as one table, kernel × test.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    check,
    matrix::{self, Column},
    step, toolchain,
};

/// A kernel of the matrix: a Debian kernel package.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// Name on the command line and in the table.
    pub name: &'static str,
    /// Its package names: this prefix, a version or ABI number, this suffix.
    pub package: (&'static str, &'static str),
    /// Where apt finds it.
    pub source: Source,
    /// What it stands for.
    pub about: &'static str,
}

/// Which apt sources hold a kernel's package.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// This machine's own (a Debian 12 machine).
    Machine,
    /// Another Debian suite, at the archive this machine's own sources name (`debian` or
    /// `debian-security`), through a private apt list that leaves the machine's alone.
    Suite {
        /// The last part of the archive's URI.
        archive: &'static str,
        /// The suite.
        suite: &'static str,
    },
}

/// Every kernel `--kernel` can name.
pub const MATRIX: &[Kernel] = &[
    Kernel {
        name: "debian12",
        package: ("linux-image-6.1.0-", "-amd64"),
        source: Source::Machine,
        about: "Debian 12's 6.1 (also Amazon Linux 2023's series)",
    },
    Kernel {
        name: "debian13",
        package: ("linux-image-6.12.", "+deb13-amd64"),
        source: Source::Suite {
            archive: "debian",
            suite: "trixie",
        },
        about: "Debian 13's 6.12",
    },
    Kernel {
        name: "debian11",
        package: ("linux-image-5.10.0-", "-amd64"),
        source: Source::Suite {
            archive: "debian-security",
            suite: "bullseye-security",
        },
        about: "Debian 11's 5.10",
    },
];

/// The kernels `cargo xtask test` runs (the others: `cargo xtask vm-test --kernel NAME`): the
/// most common CI kernel series, and the oldest one supported (its verifier and tracepoints
/// differ most).
pub const DEFAULT: &[&str] = &["debian12", "debian11"];

/// Debian packages the VM needs (command → package).
const VM_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("cpio", "cpio"),
    ("depmod", "kmod"),
    ("mkfs.ext4", "e2fsprogs"),
    ("dpkg-deb", "dpkg"),
    ("xz", "xz-utils"),
];

/// Modules the initramfs loads, in dependency order, to reach the 9p shares (those the kernel
/// has as modules).
const INITRAMFS_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "netfs",
    "fscache",
    "9pnet",
    "9pnet_virtio",
    "9p",
];

/// How long one kernel's tests may take before the guest is stopped.
const GUEST_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// How long one test program may take in a guest before it is stopped (the slowest takes about
/// two minutes under TCG).
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(12 * 60);

/// The guest's /init: mounts, modules, then the test script chrooted into the host's root.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for pass in 1 2 3 4 5; do for m in /modules/*.ko; do insmod $m 2>/dev/null; done; done
opts=trans=virtio,version=9p2000.L,msize=512000
# The host's root is read-only here: caching it is safe, and keeps a second exec of a program
# from reading it over 9p again (which would show as major faults and blocking in the tests).
mount -t 9p -o $opts,cache=loose host /host || echo "cannot mount the host's root"
mount -t 9p -o $opts results /results || echo "cannot mount the results share"
mount --bind "/host$(cat /results/modules_dir)" /lib/modules
for m in crc32c_generic crc32c-intel virtio_blk ext4 loop veth; do
  modprobe $m 2>/dev/null || echo "modprobe $m failed" >> /results/guest.log
done
# The project may live under a directory the guest gives a tmpfs of its own (/tmp, /root):
# keep a way to it, and put it back there afterwards.
project=$(cat /results/project_dir)
mkdir -p /project && mount --bind "/host$project" /project
mount -t proc proc /host/proc; mount -t sysfs sys /host/sys; mount -t devtmpfs dev /host/dev
mount -t cgroup2 none /host/sys/fs/cgroup
mount -t tmpfs tmp /host/tmp; mount -t tmpfs run /host/run; mount -t tmpfs root /host/root
if [ ! -d "/host$project" ]; then mkdir -p "/host$project" && mount --bind /project "/host$project"; fi
mount /dev/vda /host/var/tmp || echo "cannot mount the scratch disk" >> /results/guest.log
mount --bind /results /host/mnt
# A writable copy of /etc (tests add users), and the shared memory browsers need.
mkdir -p /etcw && mount -t tmpfs etc /etcw && cp -a /host/etc/. /etcw/ && mount --bind /etcw /host/etc
mount -t tmpfs shm /host/dev/shm 2>/dev/null || { mkdir -p /host/dev/shm && mount -t tmpfs shm /host/dev/shm; }
mkdir -p /host/dev/pts && mount -t devpts devpts /host/dev/pts
mount -t bpf bpf /host/sys/fs/bpf 2>/dev/null
ip link set lo up 2>/dev/null
for c in $(cat /host/sys/fs/cgroup/cgroup.controllers); do
  echo "+$c" > /host/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
done
chroot /host /bin/sh /mnt/run.sh > /results/run.log 2>&1
echo "$?" > /results/done
poweroff -f
"#;

/// Test programs the guests do not run, and why: what they need lives on the host alone.
const HOST_ONLY: &[(&str, &str)] = &[
    (
        "containers",
        "needs a Docker engine, which the host's tests start; the guests test kernels",
    ),
    (
        "alerts",
        "delivery is user space alone, the same on every kernel, and its timing checks (backoff, \
         the samples' pace) need the host's CPU, not an emulated one",
    ),
    (
        "unprivileged",
        "adds users and a group, and the guests mount the host's root (its /etc) read-only",
    ),
    (
        "fleet",
        "starts a PostgreSQL cluster as the host's `postgres` user; the store is user space \
         alone, the same on every kernel",
    ),
];

/// Runs the tests in `executables` inside each kernel named in `kernels`, prints the table,
/// and fails if any test failed or any guest did not finish.
pub fn run(root: &Path, bin: &Path, kernels: &[String], executables: &[PathBuf]) -> Result<()> {
    toolchain::ensure_tools(VM_TOOLS)?;
    let executables: Vec<PathBuf> = executables
        .iter()
        .filter(|e| {
            let name = log_name(e);
            match HOST_ONLY.iter().find(|(host_only, _)| *host_only == name) {
                Some((_, why)) => {
                    step(&format!("not run in the guests: {name} ({why})"));
                    false
                }
                None => true,
            }
        })
        .cloned()
        .collect();
    let executables = &executables[..];
    let programs: Vec<String> = executables.iter().map(|e| log_name(e)).collect();
    let mut columns = Vec::new();
    for name in kernels {
        let kernel = MATRIX.iter().find(|k| k.name == name).with_context(|| {
            let names: Vec<&str> = MATRIX.iter().map(|k| k.name).collect();
            format!(
                "no kernel {name} in the matrix; known: {}",
                names.join(", ")
            )
        })?;
        let dir = root.join("target/vm").join(kernel.name);
        let unpacked = fetch(kernel, &dir)?;
        // A guest that stops early still has a column: what it finished, and why not the rest.
        let stopped = guest_test(root, bin, &unpacked, &dir, executables).err();
        let mut column = Column::read(
            format!("{} ({})", kernel.name, unpacked.release),
            &dir.join("results"),
            &programs,
        );
        if let Some(e) = stopped {
            column.notes.push(format!("{e:#}"));
        }
        columns.push(column);
    }
    let text = matrix::render(&columns);
    print!("{text}");
    fs::write(root.join("target/vm/matrix.txt"), &text).ok();
    fs::write(
        root.join("target/vm/doctor.md"),
        matrix::doctor_markdown(&columns),
    )
    .ok();
    let failed: usize = columns.iter().map(Column::not_passed).sum();
    if failed > 0 {
        bail!(
            "{failed} test(s) failed or did not finish in a guest; logs in target/vm/<kernel>/results"
        );
    }
    Ok(())
}

/// A kernel package unpacked, with the files a boot needs.
struct Unpacked {
    vmlinuz: PathBuf,
    /// `lib/modules` (or `usr/lib/modules`) of the package, `depmod` run over it.
    modules: PathBuf,
    release: String,
}

/// Fetches and unpacks the newest package of `kernel` into `dir` (once).
fn fetch(kernel: &Kernel, dir: &Path) -> Result<Unpacked> {
    let unpacked_root = dir.join("root");
    if !unpacked_root.join("boot").is_dir() {
        fs::create_dir_all(dir)?;
        let apt = Apt::new(kernel.source, dir)?;
        let package = apt.newest(kernel.package)?;
        step(&format!("fetching {package} ({})", kernel.about));
        let mut cmd = apt.command("apt-get");
        cmd.args(["download", &package]).current_dir(dir);
        check(cmd, "downloading the kernel package failed")?;
        let deb = fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.extension().is_some_and(|e| e == "deb")
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&package))
            })
            .context("apt-get download left no .deb")?;
        let staging = dir.join("root.partial");
        let _ = fs::remove_dir_all(&staging);
        let mut cmd = Command::new("dpkg-deb");
        cmd.arg("-x").arg(&deb).arg(&staging);
        check(cmd, "unpacking the kernel package failed")?;
        decompress_modules(&staging)?;
        fs::rename(&staging, &unpacked_root)?;
        fs::remove_file(&deb).ok();
    }
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|m| unpacked_root.join(m))
        .find(|p| p.is_dir())
        .context("the kernel package has no modules")?;
    let release = fs::read_dir(&modules)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("no module directory in the kernel package")?;
    let vmlinuz = unpacked_root
        .join("boot")
        .join(format!("vmlinuz-{release}"));
    anyhow::ensure!(vmlinuz.is_file(), "no {}", vmlinuz.display());
    if !modules.join(&release).join("modules.dep").is_file() {
        let base = modules
            .parent()
            .and_then(Path::parent)
            .context("modules directory")?;
        let mut cmd = Command::new("depmod");
        cmd.arg("-b").arg(base).arg(&release);
        check(cmd, "depmod over the kernel package failed")?;
    }
    Ok(Unpacked {
        vmlinuz,
        modules,
        release,
    })
}

/// apt, on this machine's sources or on a private list for another suite.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    fn new(source: Source, dir: &Path) -> Result<Self> {
        let Source::Suite { archive, suite } = source else {
            return Ok(Self {
                options: Vec::new(),
            });
        };
        let uri = machine_archive_uri(archive)?;
        let state = dir.join("apt");
        fs::create_dir_all(state.join("lists/partial"))?;
        fs::create_dir_all(state.join("cache/archives/partial"))?;
        let list = state.join("sources.list");
        fs::write(
            &list,
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {uri} {suite} main\n"
            ),
        )?;
        let apt = Self {
            options: vec![
                format!("Dir::Etc::sourcelist={}", list.display()),
                "Dir::Etc::sourceparts=-".to_owned(),
                format!("Dir::State::Lists={}", state.join("lists").display()),
                format!("Dir::Cache={}", state.join("cache").display()),
            ],
        };
        step(&format!("apt-get update for {suite} (a private list)"));
        let mut cmd = apt.command("apt-get");
        cmd.arg("update");
        check(cmd, "apt-get update of the private list failed")?;
        Ok(apt)
    }

    /// `program` (apt-get, apt-cache) with this list's options.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for o in &self.options {
            cmd.arg("-o").arg(o);
        }
        cmd
    }

    /// The newest package `prefix VERSION suffix` apt knows (updating the machine's lists once
    /// if it knows none).
    fn newest(&self, (prefix, suffix): (&str, &str)) -> Result<String> {
        let search = || -> Result<Vec<String>> {
            let out = self
                .command("apt-cache")
                .args(["pkgnames", prefix])
                .output()
                .context("running apt-cache")?;
            Ok(String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|n| n.ends_with(suffix) && !n.contains("-dbg") && !n.contains("unsigned"))
                .filter(|n| {
                    let middle = &n[prefix.len()..n.len() - suffix.len()];
                    !middle.is_empty() && middle.chars().all(|c| c.is_ascii_digit() || c == '.')
                })
                .map(str::to_owned)
                .collect())
        };
        let mut names = search()?;
        if names.is_empty() && self.options.is_empty() {
            step("apt-get update (no kernel package known yet)");
            let mut cmd = Command::new("apt-get");
            cmd.arg("update");
            check(cmd, "apt-get update failed")?;
            names = search()?;
        }
        let version = |n: &String| -> Vec<u64> {
            n[prefix.len()..n.len() - suffix.len()]
                .split('.')
                .map(|p| p.parse().unwrap_or(0))
                .collect()
        };
        names
            .into_iter()
            .max_by_key(version)
            .with_context(|| format!("apt knows no package {prefix}…{suffix}"))
    }
}

/// The URI of `archive` (`debian`, `debian-security`) in this machine's apt sources.
fn machine_archive_uri(archive: &str) -> Result<String> {
    let mut texts = vec![fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    for entry in fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path();
        if path
            .extension()
            .is_some_and(|e| e == "sources" || e == "list")
        {
            texts.push(fs::read_to_string(path).unwrap_or_default());
        }
    }
    texts
        .iter()
        .flat_map(|t| t.split_whitespace())
        .map(|w| w.trim_end_matches('/'))
        .find(|w| w.starts_with("http") && w.rsplit('/').next() == Some(archive))
        .map(str::to_owned)
        .with_context(|| format!("no `{archive}` archive in this machine's apt sources"))
}

/// Decompresses a package's `.ko.xz` modules (newer Debian kernels) in place: busybox in the
/// guest loads plain ones.
fn decompress_modules(tree: &Path) -> Result<()> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("find \"$0\" -name '*.ko.xz' -print0 | xargs -0 -r -P 2 xz -d")
        .arg(tree);
    check(cmd, "decompressing the kernel's modules failed")
}

/// Boots `kernel` with the tests and waits for it to power off. Returns its release.
fn guest_test(
    root: &Path,
    bin: &Path,
    kernel: &Unpacked,
    dir: &Path,
    executables: &[PathBuf],
) -> Result<()> {
    let initrd = build_initramfs(kernel, dir)?;
    let results = dir.join("results");
    let _ = fs::remove_dir_all(&results);
    fs::create_dir_all(&results)?;
    fs::write(
        results.join("modules_dir"),
        kernel.modules.to_string_lossy().as_bytes(),
    )?;
    fs::write(results.join("run.sh"), run_script(root, bin, executables))?;
    fs::write(
        results.join("project_dir"),
        root.to_string_lossy().as_bytes(),
    )?;
    let scratch = dir.join("scratch.img");
    let _ = fs::remove_file(&scratch);
    fs::File::create(&scratch)?.set_len(2 << 30)?;
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F"]).arg(&scratch);
    check(cmd, "making the scratch disk failed")?;

    step(&format!(
        "booting {} under qemu (TCG) and running {} test programs in it",
        kernel.release,
        executables.len()
    ));
    let console = fs::File::create(dir.join("console.log"))?;
    let mut child = Command::new("qemu-system-x86_64")
        // One host thread for both vCPUs: with a thread each (MTTCG), a 5.10 guest's CPU was
        // seen spinning forever at an instruction the other CPU had just patched (a tracepoint's
        // static key flipping as a probe attached), with RCU stalls and a dead guest.
        .args([
            "-accel",
            "tcg,thread=single",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "2048",
        ])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        // Not quiet: a stall's or oops's stack trace lands in console.log.
        .args(["-append", "console=ttyS0 panic=-1"])
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=results,security_model=none",
            results.display()
        ))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", scratch.display()))
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if !results.join("done").is_file() {
                bail!(
                    "the {} guest stopped ({status}) before its tests finished; see {}",
                    kernel.release,
                    dir.join("console.log").display()
                );
            }
            break;
        }
        if started.elapsed() > GUEST_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the {} guest did not finish in {} min; see {}",
                kernel.release,
                GUEST_TIMEOUT.as_secs() / 60,
                results.join("run.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    step(&format!(
        "{} guest done in {:.0} s",
        kernel.release,
        started.elapsed().as_secs_f64()
    ));
    let _ = fs::remove_file(&scratch);
    Ok(())
}

/// The initramfs: busybox, the modules to reach the shares, and [`INIT`].
fn build_initramfs(kernel: &Unpacked, dir: &Path) -> Result<PathBuf> {
    let tree = dir.join("initramfs");
    let _ = fs::remove_dir_all(&tree);
    for sub in [
        "bin",
        "sbin",
        "proc",
        "sys",
        "dev",
        "host",
        "results",
        "modules",
        "lib/modules",
        "tmp",
    ] {
        fs::create_dir_all(tree.join(sub))?;
    }
    let busybox =
        toolchain::which("busybox").context("busybox (busybox-static) is not installed")?;
    fs::copy(&busybox, tree.join("bin/busybox"))?;
    let module_tree = kernel.modules.join(&kernel.release);
    // A module a kernel builds in (virtio on 6.12) is simply not there to copy.
    for name in INITRAMFS_MODULES {
        if let Some(found) = find_module(&module_tree, name) {
            fs::copy(&found, tree.join("modules").join(format!("{name}.ko")))?;
        }
    }
    let init = tree.join("init");
    fs::write(&init, INIT)?;
    set_executable(&init)?;
    let out = dir.join("initramfs.cpio.gz");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1 > \"$0\"")
        .arg(&out)
        .current_dir(&tree);
    check(cmd, "packing the initramfs failed")?;
    Ok(out)
}

fn find_module(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_module(&path, name) {
                return Some(found);
            }
        } else if path
            .file_name()
            .is_some_and(|f| f == format!("{name}.ko").as_str())
        {
            return Some(path);
        }
    }
    None
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The script the guest runs in the host's root: `doctor`, then each test program.
fn run_script(root: &Path, bin: &Path, executables: &[PathBuf]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "export HOME=/root TMPDIR=/tmp CI=true RUST_BACKTRACE=0");
    let _ = writeln!(s, "export CLEANROOM_BIN={}", bin.display());
    // Under emulation a process start costs ~20x the host's: the agent's churn test makes 2,000
    // cgroups there instead of 20,000 (still far past any map's working set).
    let _ = writeln!(s, "export CLEANROOM_CHURN_CGROUPS=2000");
    let _ = writeln!(s, "uname -r > /mnt/kernel");
    let _ = writeln!(s, "{} doctor > /mnt/doctor.txt 2>&1", bin.display());
    let _ = writeln!(s, "cd {}", root.join("tests").display());
    for exe in executables {
        // A program that hangs loses its own remaining tests, not every other program's.
        let _ = writeln!(
            s,
            "timeout -k 10 {} {} --test-threads=1 > /mnt/{name}.log 2>&1; echo $? > /mnt/{name}.rc",
            PROGRAM_TIMEOUT.as_secs(),
            exe.display(),
            name = log_name(exe)
        );
    }
    s
}

/// A test program's log name: its file name without cargo's hash.
pub fn log_name(exe: &Path) -> String {
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.rsplit_once('-') {
        Some((base, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => base.to_owned(),
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_names_drop_cargos_hash() {
        assert_eq!(
            log_name(Path::new("/t/deps/metrics-a2ef58481c94bb5c")),
            "metrics"
        );
        assert_eq!(log_name(Path::new("/t/deps/io_memory")), "io_memory");
    }
}
