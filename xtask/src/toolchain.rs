//! Checks the BPF toolchain and installs what is missing.
//!
//! | piece | from |
//! | --- | --- |
//! | rustc for BPF, with a precompiled `core` | Debian `rustc-web`, `libstd-rust-web-dev-bpf` |
//! | LLVM of the same major, to build the linker | Debian `llvm-N-dev`, `libpolly-N-dev` |
//! | bpf-linker, built against that LLVM | `cargo install bpf-linker --features llvm-N` |
//!
//! The LLVM major is read from `rustc -vV` of Debian's rustc, never assumed, so that a Debian
//! update that moves LLVM cannot break the build silently.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{check, step};

/// Debian's rustc, which carries a BPF `core` in its sysroot.
const BPF_RUSTC: &str = "/usr/bin/rustc";
/// Where Debian puts the precompiled BPF `core`.
const BPF_CORE_DIR: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
/// The bpf-linker release line this project is built with.
const BPF_LINKER_VERSION: &str = "~0.13";

/// The tools the BPF build uses.
pub struct Tools {
    /// Debian's rustc.
    pub bpf_rustc: PathBuf,
    /// Directory holding `bpf-linker`.
    pub linker_dir: PathBuf,
}

impl Tools {
    /// `PATH` with bpf-linker's directory first.
    pub fn path_with_linker(&self) -> OsString {
        let mut dirs = vec![self.linker_dir.clone()];
        if let Some(path) = env::var_os("PATH") {
            dirs.extend(env::split_paths(&path));
        }
        env::join_paths(dirs).expect("PATH entries are valid")
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Makes sure every piece is there, installing what is missing (as root) or printing how.
pub fn ensure() -> Result<Tools> {
    let mut installer = Installer::default();

    let base = ["rustc-web", "libstd-rust-web-dev-bpf"];
    let missing: Vec<&str> = base
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !missing.is_empty() || !Path::new(BPF_RUSTC).exists() || !has_bpf_core() {
        installer.apt(&missing)?;
    }
    let major = match llvm_major_of_rustc(Path::new(BPF_RUSTC)) {
        Ok(m) => m,
        Err(e) if installer.dry_run() => {
            installer.note(&format!(
                "then read the LLVM major N from `{BPF_RUSTC} -vV` and run the commands below with it ({e})"
            ));
            "N".to_owned()
        }
        Err(e) => return Err(e),
    };
    if !has_bpf_core() && !installer.dry_run() {
        bail!("{BPF_CORE_DIR} has no libcore after installing libstd-rust-web-dev-bpf");
    }

    let linker = find_bpf_linker();
    let linker_ok = linker
        .as_deref()
        .and_then(linked_llvm_major)
        .is_some_and(|m| m == major);
    if !linker_ok {
        if let Some(l) = &linker {
            step(&format!(
                "{} is not built against LLVM {major} (the LLVM of {BPF_RUSTC}); rebuilding it",
                l.display()
            ));
        }
        let dev = [format!("llvm-{major}-dev"), format!("libpolly-{major}-dev")];
        let missing: Vec<&str> = dev
            .iter()
            .map(String::as_str)
            .filter(|p| !dpkg_installed(p))
            .collect();
        installer.apt(&missing)?;
        installer.bpf_linker(&major)?;
    }
    if installer.dry_run() {
        bail!(
            "the BPF toolchain is incomplete and installing it needs root; run the commands above \
             as root, or run this as root"
        );
    }
    let linker = find_bpf_linker().context("bpf-linker is not on PATH after installing it")?;
    Ok(Tools {
        bpf_rustc: PathBuf::from(BPF_RUSTC),
        linker_dir: linker
            .parent()
            .expect("a file has a parent directory")
            .to_owned(),
    })
}

/// Installs packages and the linker, or (not root) prints the commands that would.
#[derive(Default)]
struct Installer {
    updated: bool,
    printed: bool,
}

impl Installer {
    fn dry_run(&self) -> bool {
        !is_root()
    }

    fn note(&mut self, text: &str) {
        eprintln!("  # {text}");
    }

    fn show(&mut self, line: &str) {
        if !self.printed {
            eprintln!("xtask: the BPF toolchain is incomplete; as root, run:");
            self.printed = true;
        }
        eprintln!("  {line}");
    }

    fn apt(&mut self, packages: &[&str]) -> Result<()> {
        if packages.is_empty() {
            return Ok(());
        }
        let line = format!("apt-get install -y {}", packages.join(" "));
        if self.dry_run() {
            if !self.updated {
                self.show("apt-get update");
                self.updated = true;
            }
            self.show(&line);
            return Ok(());
        }
        if !self.updated {
            step("apt-get update");
            let mut cmd = Command::new("apt-get");
            cmd.args(["update", "-q"]);
            check(cmd, "apt-get update failed")?;
            self.updated = true;
        }
        step(&line);
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive");
        check(cmd, "apt-get install failed")
    }

    fn bpf_linker(&mut self, major: &str) -> Result<()> {
        let prefix = format!("/usr/lib/llvm-{major}");
        let line = format!(
            "LLVM_PREFIX={prefix} cargo install bpf-linker --version '{BPF_LINKER_VERSION}' \
             --force --no-default-features --features llvm-{major}"
        );
        if self.dry_run() {
            self.show(&line);
            return Ok(());
        }
        step(&format!("{line}   (about a minute)"));
        let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .env(format!("LLVM_SYS_{major}1_PREFIX"), &prefix)
        // Build it on the machine's own toolchain, not on an override of the caller.
        .env_remove("RUSTC")
        .env_remove("RUSTC_BOOTSTRAP")
        .current_dir(env::temp_dir());
        check(cmd, "installing bpf-linker failed")
    }
}

/// Debian packages the tests drive (command → package): a browser for the HTML report, poppler
/// for the PDF, the tools that build the tests' own loop devices and network namespaces, a
/// Prometheus that scrapes the agent's `/metrics`, and `openssl` to check webhook signatures.
const TEST_TOOLS: &[(&str, &str)] = &[
    ("chromium", "chromium"),
    ("pdftoppm", "poppler-utils"),
    ("ip", "iproute2"),
    ("losetup", "util-linux"),
    ("mkfs.ext4", "e2fsprogs"),
    ("sysctl", "procps"),
    ("prometheus", "prometheus"),
    ("dockerd", "docker.io"),
    ("busybox", "busybox-static"),
    // The profile tests build a C program without frame pointers.
    ("gcc", "gcc"),
    // The unprivileged tests add users and act as them; a hostile client is a script.
    ("useradd", "passwd"),
    ("setpriv", "util-linux"),
    ("prlimit", "util-linux"),
    ("python3", "python3"),
    // The alert tests check a webhook's HMAC signature with an implementation of their own.
    ("openssl", "openssl"),
    // The email alert tests send to a real SMTP server.
    ("aiosmtpd", "python3-aiosmtpd"),
    // A process test reads the programs' own maps from the kernel.
    ("bpftool", "bpftool"),
    // The fleet tests keep the history in a real PostgreSQL (its programs are not on PATH:
    // the package itself is checked).
    ("", "postgresql"),
];

/// Debian packages the benchmark drives: workloads and the bpftrace peer.
pub const BENCH_TOOLS: &[(&str, &str)] = &[
    ("perf", "linux-perf"),
    ("fio", "fio"),
    ("iperf3", "iperf3"),
    ("bpftrace", "bpftrace"),
    ("bpftool", "bpftool"),
    ("losetup", "util-linux"),
];

/// Installs what the tests need (as root), or prints how.
pub fn ensure_test_tools() -> Result<()> {
    ensure_tools(TEST_TOOLS)
}

/// Installs the packages of `tools` whose command is missing (as root), or prints how.
pub fn ensure_tools(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(cmd, pkg)| {
            if cmd.is_empty() {
                !dpkg_installed(pkg)
            } else {
                !on_path(cmd)
            }
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    let mut installer = Installer::default();
    installer.apt(&missing)?;
    if installer.dry_run() && !missing.is_empty() {
        eprintln!("xtask: tests that need these will skip (or fail under CI=true)");
    }
    Ok(())
}

fn on_path(cmd: &str) -> bool {
    which(cmd).is_some()
}

/// Where `cmd` is: on PATH, or in the sbin directories a non-login root shell may lack.
pub fn which(cmd: &str) -> Option<PathBuf> {
    env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn has_bpf_core() -> bool {
    std::fs::read_dir(BPF_CORE_DIR).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libcore-") && name.ends_with(".rlib")
        })
    })
}

/// The LLVM major version `rustc -vV` reports.
fn llvm_major_of_rustc(rustc: &Path) -> Result<String> {
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .with_context(|| format!("running {} -vV", rustc.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .map(str::to_owned)
        .with_context(|| format!("{} -vV printed no LLVM version", rustc.display()))
}

/// bpf-linker on PATH or in cargo's bin directory.
fn find_bpf_linker() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    dirs.extend(cargo_home.map(|h| h.join("bin")));
    dirs.into_iter()
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}

/// The LLVM major a dynamically linked bpf-linker loads (`libLLVM.so.N`), from `ldd`.
fn linked_llvm_major(linker: &Path) -> Option<String> {
    let out = Command::new("ldd").arg(linker).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // `libLLVM.so.22.1` (Debian 12 backports) or `libLLVM-22.so.1` (older naming).
    let rest = text
        .split("libLLVM.so.")
        .nth(1)
        .or_else(|| text.split("libLLVM-").nth(1))?;
    let major: String = rest.chars().take_while(char::is_ascii_digit).collect();
    (!major.is_empty()).then_some(major)
}
