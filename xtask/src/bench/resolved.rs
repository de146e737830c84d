//! Two figures the plain slowdown table cannot resolve on a noisy machine:
//!
//! - **The resolved slowdown** of the workloads nearest the hot paths (`fio` O_DIRECT and the
//!   page-fault loop): [`REPS`] repetitions, each running them bare, with the floor (empty
//!   programs on the same hooks) and with Cleanroom attached, in rotating order; a slowdown is
//!   the median of the ratios within repetitions, with its 95% bootstrap confidence interval.
//!   The floor's says what any program on those hooks costs, a bound below which Cleanroom
//!   cannot go.
//! - **BPF time per context switch** during `perf bench sched pipe`: every program's run time
//!   (BPF stats on) over the machine's context switches (`/proc/stat` `ctxt`), for Cleanroom and
//!   for a bpftrace script that does nothing but per-cgroup CPU accounting at each switch.

use std::{fs, process::Command};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::{Agent, Bench, Running, in_run::median_ci, median, output, program_stats, spread};

/// Repetitions of each pair.
pub const REPS: usize = 30;

/// The workloads resolved, by name in [`super::WORKLOADS`].
const RESOLVED: &[&str] = &["fio_direct", "page_faults"];

/// Per-cgroup CPU accounting at each switch, as a bpftrace user would write it.
const SWITCH_PEER: &str = r#"
tracepoint:sched:sched_switch {
  $t = @on[args->prev_pid];
  if ($t) { @cpu[cgroup] = sum(nsecs - $t); }
  @on[args->next_pid] = nsecs;
}
"#;

/// Rounds of the per-switch comparison, each mode once per round.
const SWITCH_ROUNDS: usize = 5;

impl Bench {
    /// The resolved slowdown of [`RESOLVED`], with Cleanroom and with the floor (empty
    /// programs on the same hooks: what any program there costs).
    pub(super) fn resolved_slowdown(&self) -> Result<Value> {
        const MODES: [Agent; 3] = [Agent::None, Agent::Floor, Agent::Cleanroom];
        // Per workload and mode: the figures, and the ratios of cost with the mode over cost
        // without in the same repetition (cost: ns per fault, or 1/IOPS).
        let mut raw = vec![[const { Vec::new() }; 3]; RESOLVED.len()];
        let mut ratios = vec![[const { Vec::new() }; 3]; RESOLVED.len()];
        for rep in 0..REPS {
            eprint!("\rxtask: repetition {}/{REPS}", rep + 1);
            let mut costs = vec![[0.0; 3]; RESOLVED.len()];
            for i in 0..MODES.len() {
                let mode = (i + rep) % MODES.len();
                let running = self.start(MODES[mode])?;
                for (w, name) in RESOLVED.iter().enumerate() {
                    let figure = self.workload(name)?;
                    raw[w][mode].push(figure);
                    costs[w][mode] = cost_of(name, figure);
                }
                if let Some(r) = running {
                    r.stop()?;
                }
            }
            for (w, c) in costs.iter().enumerate() {
                for mode in 1..MODES.len() {
                    ratios[w][mode].push(c[mode] / c[0]);
                }
            }
        }
        eprintln!();
        let slowdown = |r: &[f64]| {
            let (lo, hi) = median_ci(r);
            json!({
                "pct": (median(r) - 1.0) * 100.0,
                "ci95_pct": [(lo - 1.0) * 100.0, (hi - 1.0) * 100.0],
            })
        };
        Ok(Value::Array(
            RESOLVED
                .iter()
                .enumerate()
                .map(|(w, name)| {
                    json!({
                        "workload": name,
                        "repetitions": REPS,
                        "none": spread(&raw[w][0]),
                        "floor": spread(&raw[w][1]),
                        "cleanroom": spread(&raw[w][2]),
                        "floor_slowdown": slowdown(&ratios[w][1]),
                        "cleanroom_slowdown": slowdown(&ratios[w][2]),
                    })
                })
                .collect(),
        ))
    }

    /// BPF ns per context switch of the machine during `perf bench sched pipe`, Cleanroom vs
    /// [`SWITCH_PEER`], with BPF stats on (the caller switches them on).
    pub(super) fn per_switch(&self) -> Result<Value> {
        // The floor too (empty programs on Cleanroom's hooks): the least any program there
        // costs a switch, so the best ratio to the peer this machine allows.
        let (mut ours, mut peer, mut floor) = (Vec::new(), Vec::new(), Vec::new());
        let modes = [Agent::Cleanroom, Agent::Bpftrace, Agent::Floor];
        for round in 0..SWITCH_ROUNDS {
            eprint!("\rxtask: round {}/{SWITCH_ROUNDS}", round + 1);
            for i in 0..modes.len() {
                let mode = modes[(i + round) % modes.len()];
                let running = match mode {
                    Agent::Bpftrace => self.start_bpftrace("switch-peer", SWITCH_PEER, 1)?,
                    _ => self.start(mode)?.context("cleanroom attach")?,
                };
                let (t0, c0) = (run_time_ns(&running)?, context_switches()?);
                output(Command::new("perf").args(["bench", "sched", "pipe", "-l", "100000"]))?;
                let (t1, c1) = (run_time_ns(&running)?, context_switches()?);
                running.stop()?;
                let per = t1.saturating_sub(t0) as f64 / c1.saturating_sub(c0).max(1) as f64;
                match mode {
                    Agent::Cleanroom => ours.push(per),
                    Agent::Floor => floor.push(per),
                    _ => peer.push(per),
                }
            }
        }
        eprintln!();
        let (c, b, f) = (median(&ours), median(&peer), median(&floor));
        Ok(json!({
            "cleanroom_ns": spread(&ours),
            "bpftrace_cpu_accounting_ns": spread(&peer),
            "floor_ns": spread(&floor),
            "ratio": c / b,
            "floor_ratio": f / b,
        }))
    }
}

/// What a figure costs, the lower the better: ns per fault as it is, IOPS inverted.
fn cost_of(workload: &str, figure: f64) -> f64 {
    if workload == "fio_direct" {
        1.0 / figure
    } else {
        figure
    }
}

/// Run time so far of every program of `running`, ns (BPF stats on).
fn run_time_ns(running: &Running) -> Result<u64> {
    let mut total = 0;
    for (_, id) in &running.programs {
        total += program_stats(*id)?.0;
    }
    Ok(total)
}

/// Context switches of the machine since boot (`ctxt` of `/proc/stat`).
fn context_switches() -> Result<u64> {
    fs::read_to_string("/proc/stat")?
        .lines()
        .find_map(|l| l.strip_prefix("ctxt ")?.trim().parse().ok())
        .context("no ctxt line in /proc/stat")
}

/// The goals: each resolved slowdown's interval below 3%, and BPF time per switch at most 0.3×
/// the bpftrace script's.
pub(super) fn goals(resolved: &Value, per_switch: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for w in resolved.as_array().into_iter().flatten() {
        let hi = w["cleanroom_slowdown"]["ci95_pct"][1]
            .as_f64()
            .unwrap_or(f64::NAN);
        out.push(json!({
            "goal": format!(
                "{}: slowdown under 3%, resolved (upper end of the 95% interval)",
                w["workload"].as_str().unwrap_or("?")
            ),
            "met": hi < 3.0,
            "value": hi,
        }));
    }
    if let Some(r) = per_switch["ratio"].as_f64() {
        out.push(json!({
            "goal": "BPF time per context switch at most 0.3x the bpftrace CPU-accounting script",
            "met": r <= 0.3,
            "value": r,
            "floor": per_switch["floor_ratio"],
        }));
    }
    out
}

/// Prints both tables.
pub(super) fn print(resolved: &Value, per_switch: &Value) {
    println!(
        "\nResolved slowdown ({REPS} rotated repetitions; median of ratios within a repetition, 95% bootstrap interval)"
    );
    println!(
        "{:<12} {:>12} {:>12} {:>12} {:>28} {:>28}",
        "workload", "none", "floor", "cleanroom", "floor slowdown", "cleanroom slowdown"
    );
    let cell = |s: &Value| {
        format!(
            "{:+.2}% ({:+.2}..{:+.2})",
            s["pct"].as_f64().unwrap_or(f64::NAN),
            s["ci95_pct"][0].as_f64().unwrap_or(f64::NAN),
            s["ci95_pct"][1].as_f64().unwrap_or(f64::NAN)
        )
    };
    for w in resolved.as_array().into_iter().flatten() {
        let m = |k: &str| w[k]["median"].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<12} {:>12.1} {:>12.1} {:>12.1} {:>28} {:>28}",
            w["workload"].as_str().unwrap_or("?"),
            m("none"),
            m("floor"),
            m("cleanroom"),
            cell(&w["floor_slowdown"]),
            cell(&w["cleanroom_slowdown"])
        );
    }
    println!(
        "\nBPF time per context switch (perf bench sched pipe, BPF stats on; median of {SWITCH_ROUNDS})"
    );
    println!(
        "  cleanroom {:.1} ns, bpftrace per-cgroup CPU accounting {:.1} ns: {:.2}x",
        per_switch["cleanroom_ns"]["median"]
            .as_f64()
            .unwrap_or(f64::NAN),
        per_switch["bpftrace_cpu_accounting_ns"]["median"]
            .as_f64()
            .unwrap_or(f64::NAN),
        per_switch["ratio"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "  the floor (empty programs on the same hooks) {:.1} ns: {:.2}x the peer, the best reachable here",
        per_switch["floor_ns"]["median"]
            .as_f64()
            .unwrap_or(f64::NAN),
        per_switch["floor_ratio"].as_f64().unwrap_or(f64::NAN)
    );
}
