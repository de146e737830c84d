//! Section 6: what the profiles cost. Two `gzip -9` of the same 24 MiB (two busy CPUs, a
//! fixed amount of work) timed bare, inside `cleanroom run`, and inside `cleanroom run
//! --profile` at 99 Hz, alternated, BPF stats off; the slowdown of profiling over the plain
//! run is the median of the paired ratios with its 95% bootstrap interval. Then in three more
//! profiled runs, watched every 100 ms (untimed: the watching costs the workload), with BPF
//! stats on: the sampling program's ns per sample (`run_time_ns / run_cnt` from bpftool) and
//! the CPU of `cleanroom` itself (its threads' schedstat) while it samples the command, as a
//! share of one core; and the off-CPU program's ns per context switch (every switch of the
//! machine runs it while profiling, most only to find the task switching in is not waited on).

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{in_run::median_ci, output, spread};

/// Bytes each `gzip` compresses.
const INPUT_BYTES: usize = 24 << 20;

/// The input: shared libraries of this host, concatenated (compressible like real files).
fn input(work: &Path) -> Result<PathBuf> {
    let path = work.join("profile-input.bin");
    if fs::metadata(&path).is_ok_and(|m| m.len() as usize == INPUT_BYTES) {
        return Ok(path);
    }
    let mut data = Vec::with_capacity(INPUT_BYTES);
    let mut libs: Vec<PathBuf> = fs::read_dir("/usr/lib/x86_64-linux-gnu")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "so" || e == "a"))
        .collect();
    libs.sort();
    for lib in libs {
        if data.len() >= INPUT_BYTES {
            break;
        }
        if let Ok(bytes) = fs::read(&lib) {
            data.extend_from_slice(&bytes);
        }
    }
    if data.len() < INPUT_BYTES {
        bail!("not enough library bytes for the profile workload");
    }
    data.truncate(INPUT_BYTES);
    fs::File::create(&path)?.write_all(&data)?;
    Ok(path)
}

/// How a repetition runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Bare,
    Run,
    Profiled,
}

/// What a profiled run showed just before it ended: ns per CPU sample, cleanroom's share of one
/// core, ns per context switch of the off-CPU program.
type Seen = (f64, f64, f64);

/// The command of one repetition in `mode`.
fn command(cleanroom: &Path, mode: Mode, script: &str) -> Command {
    if mode == Mode::Bare {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        return c;
    }
    let mut c = Command::new(cleanroom);
    c.args(["run", "--no-store", "-q", "--no-follow-containers"]);
    if mode == Mode::Profiled {
        c.args(["--profile-frequency", "99"]);
    }
    c.args(["--", "sh", "-c", script]);
    c
}

/// The workload's own elapsed ns, nothing else running: the timed repetitions are not watched
/// (`bpftool` every 100 ms cost the workload more than the profile itself).
fn timed(cleanroom: &Path, mode: Mode, script: &str) -> Result<f64> {
    last_number(&output(&mut command(cleanroom, mode, script))?)
}

/// A profiled repetition watched every 100 ms, untimed: what it showed ([`Seen`]).
fn observed(cleanroom: &Path, script: &str) -> Result<Seen> {
    let mut child = command(cleanroom, Mode::Profiled, script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    // Cleanroom's CPU over the window from the first look at which the loaded program had
    // sampled (the command runs: cleanroom's start-up is over) to the look before the last at
    // which it was still sampling: its steady state while profiling, neither its start-up
    // (loading the probes is most of a short run's CPU, and may go on after the program is
    // loaded) nor its end
    // (naming the frames, kallsyms and each file's DWARF, once), which may already have begun
    // at the last look (up to 100 ms after the last sample).
    let (mut first, mut last, mut before_last) = (None, None, None);
    let mut samples_seen = 0.0;
    while child.try_wait()?.is_none() {
        let stats = programs_stats()?;
        if let Some(cpu) = stats.get("profile_cpu")
            && cpu.1 > samples_seen
        {
            samples_seen = cpu.1;
            let switch = stats
                .get("profile_switch")
                .or_else(|| stats.get("profile_switch_v1"))
                .copied()
                .unwrap_or((f64::NAN, 1.0));
            let now = (super::cpu_ns(pid) as f64, Instant::now());
            first.get_or_insert(now);
            before_last = last.replace(((*cpu, switch), now));
        }
        thread::sleep(Duration::from_millis(100));
    }
    let (((ns, cnt), (switch_ns, switches)), cpu_pct) = match (first, before_last.or(last)) {
        (Some((cpu0, t0)), Some((stats, (cpu1, t1)))) if t1 > t0 => {
            (stats, (cpu1 - cpu0) / (t1 - t0).as_nanos() as f64 * 100.0)
        }
        _ => bail!("the profiling program was never seen"),
    };
    Ok((ns / cnt.max(1.0), cpu_pct, switch_ns / switches.max(1.0)))
}

fn last_number(out: &str) -> Result<f64> {
    out.lines()
        .last()
        .and_then(|l| l.trim().parse::<f64>().ok())
        .with_context(|| format!("the workload printed no elapsed time: {out:?}"))
}

/// `(run_time_ns, run_cnt)` of each loaded program, by name (one `bpftool` call).
fn programs_stats() -> Result<std::collections::HashMap<String, (f64, f64)>> {
    let progs: Value = serde_json::from_str(&output(
        Command::new("bpftool").args(["prog", "show", "-j"]),
    )?)?;
    Ok(progs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_owned(),
                (
                    p["run_time_ns"].as_f64().unwrap_or(0.0),
                    p["run_cnt"].as_f64().unwrap_or(0.0),
                ),
            ))
        })
        .collect())
}

/// Watched profiled runs after the timed ones.
const OBSERVED_RUNS: usize = 3;

/// Section 6's results.
pub fn measure(cleanroom: &Path, work: &Path, reps: usize) -> Result<Value> {
    if reps < 3 {
        bail!("the profiling section needs at least 3 repetitions");
    }
    let input = input(work)?;
    let script = format!(
        "s=$(date +%s%N); gzip -9 -c {i} > /dev/null & gzip -9 -c {i} > /dev/null; wait; \
         e=$(date +%s%N); echo $((e - s))",
        i = input.display()
    );
    // BPF stats (two clock reads around every program run) only for the watched runs: the
    // timed ones measure what profiling costs as users run it.
    let stats_before =
        fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_else(|_| "0".into());
    fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")?;
    let result = (|| -> Result<Value> {
        timed(cleanroom, Mode::Bare, &script)?;
        let modes = [Mode::Bare, Mode::Run, Mode::Profiled];
        let (mut bare, mut run, mut profiled) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..reps {
            eprint!("\rxtask: profiling {}/{reps}", rep + 1);
            for i in 0..modes.len() {
                let mode = modes[(i + rep) % modes.len()];
                let ns = timed(cleanroom, mode, &script)?;
                match mode {
                    Mode::Bare => bare.push(ns),
                    Mode::Run => run.push(ns),
                    Mode::Profiled => profiled.push(ns),
                }
            }
        }
        let (mut per_sample, mut agent_cpu, mut per_switch) = (Vec::new(), Vec::new(), Vec::new());
        fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
        for run in 0..OBSERVED_RUNS {
            eprint!("\rxtask: profiling, watched {}/{OBSERVED_RUNS}", run + 1);
            let (sample_ns, cpu, switch_ns) = observed(cleanroom, &script)?;
            per_sample.push(sample_ns);
            agent_cpu.push(cpu);
            if switch_ns.is_finite() {
                per_switch.push(switch_ns);
            }
        }
        eprintln!();
        let slowdown = |over: &[f64]| {
            let ratios: Vec<f64> = profiled.iter().zip(over).map(|(p, b)| p / b).collect();
            let mut sorted = ratios.clone();
            sorted.sort_by(f64::total_cmp);
            let (lo, hi) = median_ci(&ratios);
            json!({
                "slowdown_pct": (sorted[sorted.len() / 2] - 1.0) * 100.0,
                "ci95_pct": [(lo - 1.0) * 100.0, (hi - 1.0) * 100.0],
            })
        };
        Ok(json!({
            "workload": "two gzip -9 of 24 MiB at once (two busy CPUs), ns",
            "bare": spread(&bare),
            "in_run": spread(&run),
            "profiled": spread(&profiled),
            "profiling_over_run": slowdown(&run),
            "profiled_over_bare": slowdown(&bare),
            "ns_per_sample": spread(&per_sample),
            "cleanroom_cpu_pct_of_one_core": spread(&agent_cpu),
            "off_cpu_ns_per_switch": spread(&per_switch),
        }))
    })();
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_before);
    result
}

/// The profile's goals: cleanroom under 2% of a core while profiling at 99 Hz with two busy
/// CPUs, and the workload under 1% slower than in a plain run (the median of the paired
/// ratios; its 95% interval is printed beside it in the section).
pub fn goals(r: &Value) -> Vec<Value> {
    let cpu = r["cleanroom_cpu_pct_of_one_core"]["median"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let slowdown = r["profiling_over_run"]["slowdown_pct"]
        .as_f64()
        .unwrap_or(f64::NAN);
    vec![
        json!({"goal": "cleanroom under 2% of one core while profiling at 99 Hz", "met": cpu < 2.0, "value": cpu}),
        json!({"goal": "profiling at 99 Hz slows the workload under 1% (median)", "met": slowdown < 1.0, "value": slowdown}),
    ]
}

/// Prints section 6.
pub fn print(r: &Value) {
    let pct = |v: &Value| {
        format!(
            "{:+.2}% [{:+.2}%, {:+.2}%]",
            v["slowdown_pct"].as_f64().unwrap_or(f64::NAN),
            v["ci95_pct"][0].as_f64().unwrap_or(f64::NAN),
            v["ci95_pct"][1].as_f64().unwrap_or(f64::NAN)
        )
    };
    println!("\n6. The CPU profile at 99 Hz (two busy CPUs)");
    println!(
        "  workload median: bare {:.0} ms, in run {:.0} ms, profiled {:.0} ms",
        r["bare"]["median"].as_f64().unwrap_or(f64::NAN) / 1e6,
        r["in_run"]["median"].as_f64().unwrap_or(f64::NAN) / 1e6,
        r["profiled"]["median"].as_f64().unwrap_or(f64::NAN) / 1e6
    );
    println!(
        "  profiling over the plain run: {}",
        pct(&r["profiling_over_run"])
    );
    println!(
        "  profiled over bare:           {}",
        pct(&r["profiled_over_bare"])
    );
    println!(
        "  BPF ns per sample: {:.0} (median); cleanroom's CPU while profiling: {:.3}% of one core",
        r["ns_per_sample"]["median"].as_f64().unwrap_or(f64::NAN),
        r["cleanroom_cpu_pct_of_one_core"]["median"]
            .as_f64()
            .unwrap_or(f64::NAN)
    );
    println!(
        "  the off-CPU program: {:.0} ns per context switch of the machine (median)",
        r["off_cpu_ns_per_switch"]["median"]
            .as_f64()
            .unwrap_or(f64::NAN)
    );
}
