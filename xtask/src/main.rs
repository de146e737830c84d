//! `cargo xtask`: sets up the toolchain, builds the BPF object and the agent, runs and tests.
//!
//! The BPF object is built by Debian's rustc (it ships a precompiled `core` for
//! `bpfel-unknown-none`) and linked by bpf-linker built against the same LLVM major. Everything
//! missing is installed when running as root, each step printed; otherwise the exact commands
//! are printed instead.

mod bench;
mod docker;
mod fuzz;
mod matrix;
mod toolchain;
mod vm;

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Cleanroom's build tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Check (and install) the toolchain, build the BPF object, then the agent with the object
    /// inside it (`target/release/cleanroom`).
    Build,
    /// Build, then run `cleanroom ARGS` as root (default: `cleanroom demo`).
    Run {
        /// Arguments for `cleanroom`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build, then measure what Cleanroom costs beside the empty-program floor and a bpftrace
    /// peer (as root; installs perf, fio, iperf3, bpftrace). Writes target/bench/results.json.
    Bench {
        /// Alternated repetitions of each workload per mode.
        #[arg(long, default_value_t = 10)]
        reps: usize,
        /// Run one section alone (its results go to target/bench/results-SECTION.json).
        #[arg(long, hide = true)]
        only: Option<bench::Section>,
        /// Only the per-event cost of every hook beside its floor and the bpftrace peer, with
        /// its goals (about a minute): the quick check while working on a hot path.
        #[arg(long, conflicts_with = "only")]
        quick: bool,
    },
    /// Fuzz the parsers of untrusted text with libFuzzer (see fuzz/): every target, or one.
    Fuzz {
        /// config_toml, slo_objective, units or report_json (default: every target).
        target: Option<String>,
        /// How long to fuzz each target, in seconds.
        #[arg(long, default_value_t = 60)]
        time: u64,
    },
    /// Build, then run every test: unit tests, the privileged integration tests, and a few
    /// seconds of each fuzz target.
    Test {
        /// Do not run the integration tests inside other kernels too (see `vm-test`).
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for the test harness (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Boot other kernels (Debian's packages, pure cgroup v2) in qemu and run the privileged
    /// integration tests inside each; print kernel × test.
    VmTest {
        /// A kernel of the matrix (repeatable; default: debian12).
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Only this integration test program (the file name in tests/tests, without `.rs`;
        /// repeatable; default: every one).
        #[arg(long = "program")]
        programs: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    let root = workspace_root();
    match task {
        Task::Build => build(&root).map(drop),
        Task::Run { args } => {
            let bin = build(&root)?;
            let args = if args.is_empty() {
                vec![OsString::from("demo")]
            } else {
                args
            };
            let mut cmd = as_root(&bin);
            cmd.args(&args);
            let status = cmd.status().context("starting cleanroom")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Bench { reps, only, quick } => {
            let only = if quick {
                Some(bench::Section::PerEvent)
            } else {
                only
            };
            anyhow::ensure!(
                toolchain::is_root(),
                "the benchmark loads BPF programs: run it as root"
            );
            let bin = build(&root)?;
            match only {
                None | Some(bench::Section::PerEvent | bench::Section::Resolved) => {
                    toolchain::ensure_tools(toolchain::BENCH_TOOLS)?
                }
                Some(bench::Section::Profiling) => {
                    toolchain::ensure_tools(&[("bpftool", "bpftool"), ("gzip", "gzip")])?
                }
                Some(_) => {}
            }
            step("building the benchmark's workload program");
            let mut cmd = cargo();
            cmd.current_dir(&root).args([
                "build",
                "--release",
                "--package",
                "cleanroom-tests",
                "--bins",
            ]);
            check(cmd, "building the workload failed")?;
            bench::Bench::run(
                &root,
                bin,
                root.join("target/release/cleanroom-test-workload"),
                reps,
                only,
            )
        }
        Task::VmTest { kernels, programs } => {
            anyhow::ensure!(
                toolchain::is_root(),
                "the guests are run as root (qemu, loop devices): run it as root"
            );
            let bin = build(&root)?;
            let kernels = if kernels.is_empty() {
                vm::DEFAULT.iter().map(|k| (*k).to_owned()).collect()
            } else {
                kernels
            };
            let mut executables = test_executables(&root)?;
            if !programs.is_empty() {
                executables.retain(|e| programs.contains(&vm::log_name(e)));
                anyhow::ensure!(
                    !executables.is_empty(),
                    "no test program named {programs:?}"
                );
            }
            vm::run(&root, &bin, &kernels, &executables)
        }
        Task::Test { no_vm, args } => {
            let bin = build(&root)?;
            toolchain::ensure_test_tools()?;
            // Stopped (when started here) once the host's tests are done.
            let engine = if toolchain::is_root() {
                Some(docker::Engine::ensure(&root.join("target/docker"))?)
            } else {
                None
            };
            step("running every test (unit, integration, accuracy)");
            let mut cmd = cargo();
            cmd.current_dir(&root)
                .args([
                    "test",
                    "--release",
                    "--workspace",
                    "--exclude",
                    "cleanroom-ebpf",
                ])
                .env("CLEANROOM_BPF_OBJECT", bpf_object(&root))
                .env(
                    "CLEANROOM_FLOOR_OBJECT",
                    bpf_dir(&root).join("cleanroom-floor"),
                )
                .env("CLEANROOM_BIN", &bin)
                // The privileged tests measure CPU time on a two-core machine: one at a time.
                .args(["--", "--test-threads=1"])
                .args(&args);
            let tested = check(cmd, "tests failed");
            drop(engine);
            tested?;
            fuzz::smoke(&root)?;
            if no_vm || !args.is_empty() {
                return Ok(());
            }
            if !toolchain::is_root() {
                step("not root: the tests inside other kernels (vm-test) are skipped");
                return Ok(());
            }
            step("running the integration tests inside other kernels (vm-test)");
            let kernels: Vec<String> = vm::DEFAULT.iter().map(|k| (*k).to_owned()).collect();
            vm::run(&root, &bin, &kernels, &test_executables(&root)?)
        }
        Task::Fuzz { target, time } => fuzz::fuzz(&root, target.as_deref(), time),
    }
}

/// The integration test programs of `cleanroom-tests`, built (as `cargo xtask test` builds
/// them), by their paths.
fn test_executables(root: &Path) -> Result<Vec<PathBuf>> {
    let out = cargo()
        .current_dir(root)
        .args([
            "test",
            "--release",
            "--package",
            "cleanroom-tests",
            "--tests",
            "--no-run",
            "--message-format=json",
        ])
        .env("CLEANROOM_BPF_OBJECT", bpf_object(root))
        .env(
            "CLEANROOM_FLOOR_OBJECT",
            bpf_dir(root).join("cleanroom-floor"),
        )
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("building the test programs")?;
    anyhow::ensure!(out.status.success(), "building the test programs failed");
    let mut exes: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact"
                && m["target"]["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "test"))
                && m["target"]["src_path"]
                    .as_str()
                    .is_some_and(|p| p.contains("/tests/tests/"))
        })
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .collect();
    exes.sort();
    anyhow::ensure!(!exes.is_empty(), "no integration test programs were built");
    Ok(exes)
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_owned()
}

fn bpf_dir(root: &Path) -> PathBuf {
    root.join("target/bpf/bpfel-unknown-none/release")
}

fn bpf_object(root: &Path) -> PathBuf {
    bpf_dir(root).join("cleanroom-ebpf")
}

/// Prints a step the way every step of xtask is printed.
pub fn step(what: &str) {
    eprintln!("xtask: {what}");
}

/// `cargo`, as the one that runs xtask.
fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `cmd`, failing with `what` if it fails.
pub fn check(mut cmd: Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} ({status})");
    }
    Ok(())
}

/// A command for `program` that runs as root: directly when we are root, through sudo otherwise.
fn as_root(program: &Path) -> Command {
    if toolchain::is_root() {
        Command::new(program)
    } else {
        step("not root: running through sudo");
        let mut cmd = Command::new("sudo");
        cmd.arg("--preserve-env=RUST_LOG").arg(program);
        cmd
    }
}

/// Builds the BPF object, then the agent carrying it. Returns the agent binary.
fn build(root: &Path) -> Result<PathBuf> {
    let tools = toolchain::ensure()?;
    step("building the BPF objects (cleanroom-ebpf: the probes and the benchmark's floor)");
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args(["build", "--release", "--package", "cleanroom-ebpf"])
        .args([
            "--target",
            "bpfel-unknown-none",
            "--target-dir",
            "target/bpf",
        ])
        .env("RUSTC", &tools.bpf_rustc)
        // aya-ebpf uses unstable features; Debian's rustc is a stable one.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("PATH", tools.path_with_linker())
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS");
    check(cmd, "building the BPF object failed")?;

    step("building the agent (target/release/cleanroom) with the object inside");
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args(["build", "--release", "--package", "cleanroom-agent"])
        .env("CLEANROOM_BPF_OBJECT", bpf_object(root))
        .env(
            "CLEANROOM_FLOOR_OBJECT",
            bpf_dir(root).join("cleanroom-floor"),
        );
    check(cmd, "building the agent failed")?;
    Ok(root.join("target/release/cleanroom"))
}
