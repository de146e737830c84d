//! Section 5: what measuring costs the command measured — each workload run bare and inside
//! `cleanroom run` (probes loaded, the command's processes followed one by one: each fork,
//! exec and exit recorded, command lines taken), the two alternated, each timing itself (so
//! Cleanroom's own start-up and end are not counted). The slowdown is the median of the paired
//! ratios, with a 95% bootstrap confidence interval.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{output, spread};

/// A workload: name, what one figure is, and the shell script that prints its own elapsed ns.
struct Workload {
    name: &'static str,
    what: &'static str,
    script: String,
    /// How many units one run does (ns are divided by it).
    units: f64,
}

/// Processes the fork/exec workload starts.
const PROCESSES: u32 = 300;

/// The workloads: many short processes, and a build of a small crate.
fn workloads(work: &Path) -> Result<Vec<Workload>> {
    let krate = small_crate(work)?;
    let target = work.join("small-crate-target");
    let time = |body: &str| format!("s=$(date +%s%N); {body}; e=$(date +%s%N); echo $((e - s))");
    Ok(vec![
        Workload {
            name: "fork_exec_exit",
            what: "ns per process (/bin/true from a shell loop)",
            script: time(&format!(
                "i=0; while [ $i -lt {PROCESSES} ]; do /bin/true; i=$((i + 1)); done"
            )),
            units: f64::from(PROCESSES),
        },
        Workload {
            name: "cargo_build",
            what: "ns per build (a 300-function crate, fresh target directory)",
            script: time(&format!(
                "rm -rf {t} && cargo build -q --offline --manifest-path {m} --target-dir {t}",
                t = target.display(),
                m = krate.join("Cargo.toml").display()
            )),
            units: 1.0,
        },
    ])
}

/// A crate of its own, no dependencies, that takes rustc a few seconds: what a CI job builds.
fn small_crate(work: &Path) -> Result<std::path::PathBuf> {
    let dir = work.join("small-crate");
    fs::create_dir_all(dir.join("src"))?;
    fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"small-crate\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )?;
    let mut lib = String::new();
    for i in 0..300 {
        lib.push_str(&format!(
            "pub fn f{i}(x: &[u64]) -> u64 {{ x.iter().map(|v| v.wrapping_mul({i} + 1) ^ (v >> 3)).fold(0, u64::wrapping_add) }}\n"
        ));
    }
    lib.push_str("pub fn all(x: &[u64]) -> u64 { 0");
    for i in 0..300 {
        lib.push_str(&format!(" ^ f{i}(x)"));
    }
    lib.push_str(" }\n");
    fs::write(dir.join("src/lib.rs"), lib)?;
    fs::write(
        dir.join("src/main.rs"),
        "fn main() { let v: Vec<u64> = (0..1000).collect(); println!(\"{}\", small_crate::all(&v)); }\n",
    )?;
    Ok(dir)
}

/// Runs `script` with `sh -c`, bare or inside `cleanroom run`; returns what it printed last (its
/// own elapsed ns).
fn timed(cleanroom: Option<&Path>, script: &str) -> Result<f64> {
    let mut cmd = match cleanroom {
        Some(bin) => {
            let mut c = Command::new(bin);
            c.args([
                "run",
                "--no-store",
                "-q",
                "--no-follow-containers",
                "--",
                "sh",
                "-c",
                script,
            ]);
            c
        }
        None => {
            let mut c = Command::new("sh");
            c.args(["-c", script]);
            c
        }
    };
    let out = output(&mut cmd)?;
    out.lines()
        .last()
        .and_then(|l| l.trim().parse::<f64>().ok())
        .with_context(|| format!("the workload printed no elapsed time: {out:?}"))
}

/// The 95% bootstrap confidence interval of the median of `xs` (deterministic resampling).
pub(super) fn median_ci(xs: &[f64]) -> (f64, f64) {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut medians: Vec<f64> = (0..2000)
        .map(|_| {
            let mut sample: Vec<f64> = (0..xs.len())
                .map(|_| xs[(next() % xs.len() as u64) as usize])
                .collect();
            sample.sort_by(f64::total_cmp);
            sample[sample.len() / 2]
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    (medians[50], medians[1949])
}

/// Section 5's results.
pub fn measure(cleanroom: &Path, work: &Path, reps: usize) -> Result<Value> {
    if reps < 3 {
        bail!("the in-run section needs at least 3 repetitions");
    }
    let mut rows = Vec::new();
    for w in workloads(work)? {
        // One unmeasured warm-up of each: caches, and rustc's first start.
        timed(None, &w.script)?;
        let (mut bare, mut run) = (Vec::new(), Vec::new());
        for rep in 0..reps {
            eprint!("\rxtask: {} {}/{reps}", w.name, rep + 1);
            // Alternated: bare first on even repetitions, measured first on odd ones.
            let order = if rep % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for measured in order {
                let ns = timed(measured.then_some(cleanroom), &w.script)? / w.units;
                if measured {
                    run.push(ns);
                } else {
                    bare.push(ns);
                }
            }
        }
        eprintln!();
        let ratios: Vec<f64> = run.iter().zip(&bare).map(|(r, b)| r / b).collect();
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let (lo, hi) = median_ci(&ratios);
        rows.push(json!({
            "workload": w.name,
            "unit": w.what,
            "bare": spread(&bare),
            "in_run": spread(&run),
            "slowdown_pct": (median - 1.0) * 100.0,
            "ci95_pct": [(lo - 1.0) * 100.0, (hi - 1.0) * 100.0],
        }));
    }
    Ok(Value::Array(rows))
}

/// Prints section 5's table.
pub fn print(rows: &Value) {
    println!(
        "\n5. The command measured: bare vs inside `cleanroom run` (alternated, each timing itself)"
    );
    println!(
        "{:<16} {:>14} {:>14} {:>10} {:>20}",
        "workload", "bare (median)", "in run", "slowdown", "95% CI"
    );
    for r in rows.as_array().into_iter().flatten() {
        let ci = &r["ci95_pct"];
        println!(
            "{:<16} {:>14.0} {:>14.0} {:>9.2}% {:>20}",
            r["workload"].as_str().unwrap_or("?"),
            r["bare"]["median"].as_f64().unwrap_or(f64::NAN),
            r["in_run"]["median"].as_f64().unwrap_or(f64::NAN),
            r["slowdown_pct"].as_f64().unwrap_or(f64::NAN),
            format!(
                "[{:.2}%, {:.2}%]",
                ci[0].as_f64().unwrap_or(f64::NAN),
                ci[1].as_f64().unwrap_or(f64::NAN)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_holds_the_median_and_narrows_with_agreement() {
        let tight = [1.01, 1.02, 1.015, 1.018, 1.012, 1.016, 1.014];
        let (lo, hi) = median_ci(&tight);
        assert!(lo <= 1.015 && 1.015 <= hi && hi - lo < 0.01, "{lo} {hi}");
        let wide = [0.8, 1.3, 0.9, 1.2, 1.0, 1.25, 0.85];
        let (wlo, whi) = median_ci(&wide);
        assert!(whi - wlo > hi - lo, "{wlo} {whi}");
    }
}
