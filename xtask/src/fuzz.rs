//! Fuzzing: a libFuzzer target for each parser of untrusted text (the `fuzz/` crate).
//!
//! | target | what it feeds |
//! | --- | --- |
//! | `config_toml` | `CleanroomConfig::from_toml`: the `--config`/`--slo` TOML, `[[slos]]` included |
//! | `slo_objective` | `Objective::parse`: `METRIC OP VALUE` |
//! | `units` | `parse_duration`, `parse_bytes`, `parse_percent` |
//! | `report_json` | a JSON report read back, then rendered as JSON, CSV, Markdown, JUnit, HTML, PDF |
//!
//! The targets are built by the toolchain that runs xtask with the instrumentation flags
//! cargo-fuzz passes (without a sanitizer), so neither a nightly toolchain nor cargo-fuzz is
//! needed; libFuzzer itself is C++ that `libfuzzer-sys` compiles (g++ is installed if missing).
//! `cargo fuzz run TARGET` works on the same crate for whoever has cargo-fuzz.
//!
//! Each run starts from the checked-in seeds (`fuzz/corpus/TARGET`, never written to), keeps
//! what it finds in `fuzz/target/corpus/TARGET`, and stops at the first panic, timeout or
//! out-of-memory, leaving the input under `fuzz/artifacts/TARGET/`. Memory is bounded: one
//! allocation above [`MALLOC_LIMIT_MB`] or a resident size above [`RSS_LIMIT_MB`] is a failure.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, check, step, toolchain};

/// The targets, each with the longest input it is given (bytes).
pub const TARGETS: &[(&str, usize)] = &[
    ("config_toml", 16 * 1024),
    ("slo_objective", 1024),
    ("units", 1024),
    ("report_json", 64 * 1024),
];

/// The largest single allocation a target may make.
pub const MALLOC_LIMIT_MB: u32 = 512;
/// The largest resident size a target may reach.
pub const RSS_LIMIT_MB: u32 = 2048;
/// The longest one input may take.
const TIMEOUT_SECS: u32 = 10;
/// How long `cargo xtask test` fuzzes each target.
pub const TEST_SECONDS: u64 = 5;

/// The flags cargo-fuzz passes for a build without a sanitizer, and one of ours.
const RUSTFLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "-Cllvm-args=-sanitizer-coverage-stack-depth",
    "-Cllvm-args=-simplifycfg-branch-fold-threshold=0",
    "--cfg",
    "fuzzing",
    "-Cdebug-assertions",
    // libFuzzer's malloc hooks, offered by fuzz/src/lib.rs in place of a sanitizer's.
    "--cfg",
    "cleanroom_fuzz_hooks",
];

/// `cargo xtask fuzz`: fuzzes `target` (or every target) for `seconds` each.
pub fn fuzz(root: &Path, target: Option<&str>, seconds: u64) -> Result<()> {
    let targets: Vec<(&str, usize)> = match target {
        None => TARGETS.to_vec(),
        Some(name) => vec![
            *TARGETS
                .iter()
                .find(|(t, _)| *t == name)
                .with_context(|| format!("no fuzz target `{name}`; they are: {}", names()))?,
        ],
    };
    let bins = build(root)?;
    for (name, max_len) in targets {
        run(root, &bins, name, max_len, seconds, false)?;
    }
    Ok(())
}

/// The bounded run inside `cargo xtask test`: every target for [`TEST_SECONDS`], quietly.
pub fn smoke(root: &Path) -> Result<()> {
    let started = Instant::now();
    let bins = build(root)?;
    for &(name, max_len) in TARGETS {
        run(root, &bins, name, max_len, TEST_SECONDS, true)?;
    }
    step(&format!(
        "fuzzing: no crash in {} targets ({:.0} s with the build)",
        TARGETS.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn names() -> String {
    TARGETS
        .iter()
        .map(|(t, _)| *t)
        .collect::<Vec<_>>()
        .join(", ")
}

fn fuzz_dir(root: &Path) -> PathBuf {
    root.join("fuzz")
}

/// Builds every target; returns the directory holding them.
fn build(root: &Path) -> Result<PathBuf> {
    // libFuzzer is C++.
    toolchain::ensure_tools(&[("c++", "g++")])?;
    let dir = fuzz_dir(root);
    let target_dir = dir.join("target");
    let host = host_triple()?;
    // The targets parse and render; they never load a BPF program, so they embed an empty
    // object instead of the built one (and need no rebuild when it changes).
    fs::create_dir_all(&target_dir).context("creating fuzz/target")?;
    let no_object = target_dir.join("no-bpf-object");
    if !no_object.exists() {
        fs::write(&no_object, []).context("writing fuzz/target/no-bpf-object")?;
    }
    let mut rustflags = RUSTFLAGS.join(" ");
    if let Some(extra) = std::env::var_os("RUSTFLAGS") {
        rustflags.push(' ');
        rustflags.push_str(&extra.to_string_lossy());
    }
    step("building the fuzz targets (fuzz/, libFuzzer with coverage instrumentation)");
    let mut cmd = cargo();
    cmd.current_dir(&dir)
        .args(["build", "--release", "--bins", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // With an explicit target, build scripts and proc macros are built without the
        // instrumentation.
        .args(["--target", &host])
        .env("RUSTFLAGS", rustflags)
        .env("CLEANROOM_BPF_OBJECT", &no_object)
        .env("CLEANROOM_FLOOR_OBJECT", &no_object);
    check(cmd, "building the fuzz targets failed")?;
    Ok(target_dir.join(host).join("release"))
}

/// The host's target triple, from `rustc -vV`.
fn host_triple() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(&rustc)
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV printed no host triple")
}

/// Fuzzes one target for `seconds`. `quiet` sends libFuzzer's output to a log file and prints
/// a summary (or the log's end, on failure).
fn run(
    root: &Path,
    bins: &Path,
    name: &str,
    max_len: usize,
    seconds: u64,
    quiet: bool,
) -> Result<()> {
    let dir = fuzz_dir(root);
    let seeds = dir.join("corpus").join(name);
    let corpus = dir.join("target/corpus").join(name);
    let artifacts = dir.join("artifacts").join(name);
    for d in [&corpus, &artifacts] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let bin = bins.join(name);
    step(&format!(
        "fuzzing {name} for {seconds} s (seeds: fuzz/corpus/{name}; at most {max_len} bytes an \
         input, {MALLOC_LIMIT_MB} MiB an allocation, {RSS_LIMIT_MB} MiB resident)"
    ));
    let mut cmd = Command::new(&bin);
    // New inputs go to the first directory; the seeds are only read.
    cmd.arg(&corpus)
        .arg(&seeds)
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={max_len}"))
        .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-timeout={TIMEOUT_SECS}"))
        .arg("-print_final_stats=1");
    let log = dir.join("target/logs").join(format!("{name}.log"));
    if quiet {
        // A fixed seed: the same mutations in the same order on every machine.
        cmd.arg("-seed=1");
        fs::create_dir_all(log.parent().expect("a file has a parent"))
            .context("creating fuzz/target/logs")?;
        let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file));
    }
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", bin.display()))?;
    let text = if quiet {
        fs::read_to_string(&log).unwrap_or_default()
    } else {
        String::new()
    };
    if !status.success() {
        if quiet {
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("{}", lines[lines.len().saturating_sub(60)..].join("\n"));
            eprintln!("xtask: (the whole output: {})", log.display());
        }
        let found = newest_file(&artifacts);
        let input = found
            .as_deref()
            .map_or_else(|| "the input".to_owned(), |p| p.display().to_string());
        bail!(
            "fuzz target {name} failed ({status}): {input}\n  reproduce with: {} {input}",
            bin.display()
        );
    }
    if quiet {
        let stat = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map_or("?", str::trim)
                .to_owned()
        };
        step(&format!(
            "  {name}: {} inputs run, {} coverage points, peak {} MiB; no crash",
            stat("stat::number_of_executed_units:"),
            text.lines()
                .rev()
                .find_map(|l| l.split(" cov: ").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or("?"),
            stat("stat::peak_rss_mb:"),
        ));
    }
    Ok(())
}

/// The most recently written file in `dir`.
fn newest_file(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}
