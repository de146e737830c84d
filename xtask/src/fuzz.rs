//! Fuzzing: a libFuzzer target for each parser of untrusted text (the `fuzz/` crate).
//!
//! | target | what it feeds |
//! | --- | --- |
//! | `config_toml` | `CleanroomConfig::from_toml`: the `--config`/`--slo` TOML, `[[slos]]` included |
//! | `slo_objective` | `Objective::parse`: `METRIC OP VALUE` |
//! | `units` | `parse_duration`, `parse_bytes`, `parse_percent` |
//! | `report_json` | a JSON report read back, rendered in every format, alone, compared and trended |
//!
//! The targets are built by the toolchain that runs xtask with the instrumentation flags
//! cargo-fuzz passes (without a sanitizer), so neither a nightly toolchain nor cargo-fuzz is
//! needed; libFuzzer itself is C++ that `libfuzzer-sys` compiles (g++ is installed if missing).
//! `cargo +nightly fuzz run TARGET` works on the same crate too (with AddressSanitizer).
//!
//! Each run starts from the checked-in seeds (`fuzz/corpus/TARGET`, never written to), keeps
//! what it finds in `fuzz/target/corpus/TARGET`, and stops at the first panic, timeout or
//! out-of-memory, leaving the input under `fuzz/artifacts/TARGET/`. Memory is bounded: one
//! allocation above [`MALLOC_LIMIT_MB`] or a resident size above [`RSS_LIMIT_MB`] is a failure.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
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
pub const TEST_SECONDS: u64 = 4;

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

/// `cargo xtask fuzz`: fuzzes `target` (or every target) for `seconds` each, one after the
/// other, with libFuzzer's output on the terminal.
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
        let run = Run::new(root, &bins, name, max_len, seconds)?;
        let status = run
            .cmd()
            .status()
            .with_context(|| format!("starting {}", run.bin.display()))?;
        run.check(status, None)?;
    }
    Ok(())
}

/// The bounded run inside `cargo xtask test`: every target for [`TEST_SECONDS`] with a fixed
/// seed, all at once, each into its log file; a summary line each, or the end of the log of one
/// that failed.
pub fn smoke(root: &Path) -> Result<()> {
    let started = Instant::now();
    let bins = build(root)?;
    step(&format!(
        "fuzzing every target for {TEST_SECONDS} s, at once (at most {MALLOC_LIMIT_MB} MiB an \
         allocation, {RSS_LIMIT_MB} MiB resident)"
    ));
    let logs = fuzz_dir(root).join("target/logs");
    fs::create_dir_all(&logs).context("creating fuzz/target/logs")?;
    let mut running = Vec::new();
    for &(name, max_len) in TARGETS {
        let run = Run::new(root, &bins, name, max_len, TEST_SECONDS)?;
        let log = logs.join(format!("{name}.log"));
        let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = run
            .cmd()
            // The same mutations in the same order on every machine.
            .arg("-seed=1")
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| format!("starting {}", run.bin.display()))?;
        running.push((run, log, child));
    }
    let mut failed = None;
    for (run, log, mut child) in running {
        let status = child.wait().context("waiting for a fuzz target")?;
        let text = fs::read_to_string(&log).unwrap_or_default();
        match run.check(status, Some((&log, &text))) {
            Ok(()) => step(&format!("  {}: {}; no crash", run.name, summary(&text))),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    step(&format!(
        "fuzzing: no crash in {} targets ({:.0} s with the build)",
        TARGETS.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The figures of a finished run, from libFuzzer's `-print_final_stats` and last status line.
fn summary(text: &str) -> String {
    let stat = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map_or("?", str::trim)
            .to_owned()
    };
    let coverage = text
        .lines()
        .rev()
        .find_map(|l| l.split(" cov: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("?");
    format!(
        "{} inputs run, {coverage} coverage points, peak {} MiB",
        stat("stat::number_of_executed_units:"),
        stat("stat::peak_rss_mb:"),
    )
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

/// One target's run: where its seeds, findings and crashes go.
struct Run {
    name: &'static str,
    bin: PathBuf,
    seeds: PathBuf,
    corpus: PathBuf,
    artifacts: PathBuf,
    max_len: usize,
    seconds: u64,
}

impl Run {
    fn new(
        root: &Path,
        bins: &Path,
        name: &'static str,
        max_len: usize,
        seconds: u64,
    ) -> Result<Self> {
        let dir = fuzz_dir(root);
        let run = Self {
            name,
            bin: bins.join(name),
            seeds: dir.join("corpus").join(name),
            corpus: dir.join("target/corpus").join(name),
            artifacts: dir.join("artifacts").join(name),
            max_len,
            seconds,
        };
        for d in [&run.corpus, &run.artifacts] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(run)
    }

    /// The libFuzzer command line.
    fn cmd(&self) -> Command {
        let (name, seconds, max_len) = (self.name, self.seconds, self.max_len);
        step(&format!(
            "fuzzing {name} for {seconds} s (seeds: fuzz/corpus/{name}; at most {max_len} bytes \
             an input)"
        ));
        let mut cmd = Command::new(&self.bin);
        // New inputs go to the first directory; the seeds are only read.
        cmd.arg(&self.corpus)
            .arg(&self.seeds)
            .arg(format!("-artifact_prefix={}/", self.artifacts.display()))
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-max_len={max_len}"))
            .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg(format!("-timeout={TIMEOUT_SECS}"))
            .arg("-print_final_stats=1");
        cmd
    }

    /// Fails with the saved input and how to replay it when the run failed; `log` is where
    /// its output went, if not to the terminal (its end is printed then).
    fn check(&self, status: ExitStatus, log: Option<(&Path, &str)>) -> Result<()> {
        if status.success() {
            return Ok(());
        }
        if let Some((path, text)) = log {
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("{}", lines[lines.len().saturating_sub(60)..].join("\n"));
            eprintln!(
                "xtask: (the whole output of {}: {})",
                self.name,
                path.display()
            );
        }
        let input = newest_file(&self.artifacts)
            .map_or_else(|| "the input".to_owned(), |p| p.display().to_string());
        bail!(
            "fuzz target {} failed ({status}): {input}\n  reproduce with: {} {input}",
            self.name,
            self.bin.display()
        )
    }
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
