//! The CPU profile (`cleanroom run --profile`): programs built without frame pointers — a C
//! program and a Rust release build, each main → outer → {hot_a 70% of its CPU, hot_b 30%} —
//! get whole stacks from their `.eh_frame`, the split the programs make themselves, and as many
//! samples as their CPU time (getrusage) at the frequency asked for.

use std::{fs, process::Command};

use cleanroom_tests::{TestCgroup, privileged, run_measured_with, u64_at, workload_bin};

/// The C program: the same shape as the workload's `hot-chain`, built by the test with
/// `-O2 -fomit-frame-pointer`.
const HOT_C: &str = r#"
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

static volatile uint64_t sink;

static double cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

__attribute__((noinline)) void hot_a(double secs) {
    double end = cpu() + secs;
    uint64_t x = 0;
    while (cpu() < end)
        for (int i = 0; i < 200000; i++) { x = x * 6364136223846793005ULL + 1; sink = x; }
}

__attribute__((noinline)) void hot_b(double secs) {
    double end = cpu() + secs;
    uint64_t x = 7;
    while (cpu() < end)
        for (int i = 0; i < 200000; i++) { x = x * 2862933555777941757ULL + 3; sink = x; }
}

__attribute__((noinline)) void outer(double secs) {
    for (int r = 0; r < 10; r++) { hot_a(secs * 0.07); hot_b(secs * 0.03); }
}

int main(int argc, char **argv) {
    outer(atof(argv[1]) / 1000.0);
    return 0;
}
"#;

/// The C program built into `dir`, without frame pointers.
fn build_hot_c(dir: &std::path::Path) -> std::path::PathBuf {
    let source = dir.join("hot.c");
    let hot = dir.join("hotc");
    fs::write(&source, HOT_C).unwrap();
    let built = Command::new("gcc")
        .args(["-O2", "-fomit-frame-pointer", "-o"])
        .arg(&hot)
        .arg(&source)
        .output()
        .expect("gcc (cargo xtask test installs it)");
    assert!(built.status.success(), "{built:?}");
    hot
}

/// Samples a second on each CPU in these tests.
const HZ: u64 = 199;

/// The samples of the stacks whose process name starts with `comm`, and of those the ones
/// through `outer` into `hot_a` and into `hot_b` right below `main` (names as `suffix`es).
fn chain_samples(
    report: &serde_json::Value,
    comm: &str,
    name: impl Fn(&str) -> String,
) -> (u64, u64, u64) {
    let stacks = report["profile"]["stacks"]
        .as_array()
        .expect("profile stacks");
    let (main, outer, a, b) = (name("main"), name("outer"), name("hot_a"), name("hot_b"));
    let (mut all, mut in_a, mut in_b) = (0, 0, 0);
    for s in stacks {
        let frames: Vec<&str> = s["stack"].as_str().unwrap().split(';').collect();
        if !frames[0].starts_with(comm) {
            continue;
        }
        let n = u64_at(s, "/samples");
        all += n;
        let chain = |hot: &str| {
            frames
                .windows(3)
                .any(|w| w[0] == main && w[1] == outer && w[2] == hot)
        };
        if chain(&a) {
            in_a += n;
        } else if chain(&b) {
            in_b += n;
        }
    }
    (all, in_a, in_b)
}

#[test]
fn stacks_without_frame_pointers_are_whole_and_split_as_the_programs_do() {
    if !privileged("stacks_without_frame_pointers_are_whole_and_split_as_the_programs_do") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hot = build_hot_c(dir.path());
    let w = workload_bin!().to_str().unwrap().to_owned();
    let script = format!("{} 1500 && {w} hot-chain 1500", hot.display());
    let cg = TestCgroup::new("profile");
    let (output, report) = run_measured_with(
        &cg,
        &["--profile-frequency", &HZ.to_string()],
        &["sh", "-c", &script],
    );
    assert!(output.status.success(), "{output:?}");
    cleanroom_tests::assert_matches_schema(&report);
    let profile = &report["profile"];
    assert_eq!(profile["frequency_hz"], HZ, "{profile:#}");
    assert_eq!(u64_at(profile, "/lost"), 0, "{profile:#}");

    let processes = report["processes"].as_array().expect("processes");
    let cpu_of = |comm: &str| -> u64 {
        processes
            .iter()
            .filter(|p| p["command"].as_str().is_some_and(|c| c.starts_with(comm)))
            .map(|p| u64_at(p, "/cpu_time_ns"))
            .sum()
    };
    let rust = |f: &str| format!("cleanroom_test_workload::{f}");
    for (comm, name, label) in [
        (
            "hotc",
            &(|f: &str| f.to_owned()) as &dyn Fn(&str) -> String,
            "C",
        ),
        ("cleanroom-test", &rust, "Rust"),
    ] {
        let (all, a, b) = chain_samples(&report, comm, name);
        let cpu_ns = cpu_of(comm);
        let expected = cpu_ns as f64 / 1e9 * HZ as f64;
        let whole = (a + b) as f64 / all as f64;
        let split = a as f64 / (a + b).max(1) as f64;
        eprintln!(
            "{label}: {all} samples for {:.3} s of CPU (expected {expected:.0}); {:.1}% through \
             main → outer → hot_a/hot_b; hot_a {:.1}%",
            cpu_ns as f64 / 1e9,
            whole * 100.0,
            split * 100.0
        );
        assert!(all > 0, "{label}: no samples\n{profile:#}");
        assert!(
            (all as f64 - expected).abs() <= expected * 0.10,
            "{label}: {all} samples, {expected:.0} expected from its CPU time"
        );
        assert!(
            whole >= 0.90,
            "{label}: {:.1}% whole stacks\n{profile:#}",
            whole * 100.0
        );
        assert!(
            (split - 0.70).abs() <= 0.05,
            "{label}: hot_a {:.1}% of hot_a + hot_b",
            split * 100.0
        );
    }

    // The top functions name both.
    let top: Vec<&str> = profile["top_functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function"].as_str().unwrap())
        .collect();
    for f in ["hot_a", "hot_b", &rust("hot_a"), &rust("hot_b")] {
        assert!(top.contains(&f), "{f} not in {top:?}");
    }
}

/// `--report FILE.folded` writes the folded stacks, one `frames count` line each, adding up to
/// the profile's samples; `FILE.svg` the flame graph, which the HTML report holds too, without
/// a script.
#[test]
fn folded_stacks_and_flame_graphs_are_written() {
    if !privileged("folded_stacks_and_flame_graphs_are_written") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (folded, svg, html) = (
        dir.path().join("cpu.folded"),
        dir.path().join("flame.svg"),
        dir.path().join("report.html"),
    );
    let w = workload_bin!().to_str().unwrap().to_owned();
    let cg = TestCgroup::new("folded");
    let mut options = vec!["--profile"];
    for path in [&folded, &svg, &html] {
        options.extend(["--report", path.to_str().unwrap()]);
    }
    let (output, report) = run_measured_with(&cg, &options, &[&w, "hot-chain", "500"]);
    assert!(output.status.success(), "{output:?}");
    let text = fs::read_to_string(&folded).unwrap();
    let mut sum = 0;
    for line in text.lines() {
        let (stack, n) = line.rsplit_once(' ').expect("`frames count`");
        assert!(!stack.is_empty() && !stack.contains('\n'), "{line}");
        sum += n.parse::<u64>().expect("a count");
    }
    assert_eq!(sum, u64_at(&report, "/profile/samples"), "{text}");
    assert_eq!(report["profile"]["frequency_hz"], 99);

    let svg = fs::read_to_string(&svg).unwrap();
    let html = fs::read_to_string(&html).unwrap();
    for text in [&svg, &html] {
        assert!(text.contains("cleanroom_test_workload::hot_a"), "{text}");
    }
    // The file is inferno's interactive one; the page has no script at all.
    assert!(svg.starts_with("<?xml") && svg.contains("<script"), "{svg}");
    assert!(html.contains("CPU profile</h2>"), "{html}");
    assert!(
        !html.contains("<script") && !html.contains("onload"),
        "{html}"
    );
}

/// A `python3` run: the interpreter's own C frames are named (Python-level frames are not
/// unwound: the README says so).
#[test]
fn cpython_frames_are_named() {
    if !privileged("cpython_frames_are_named") {
        return;
    }
    let cg = TestCgroup::new("cpython");
    let (output, report) = run_measured_with(
        &cg,
        &["--profile-frequency", &HZ.to_string()],
        &["python3", "-c", "sum(i * i for i in range(10_000_000))"],
    );
    assert!(output.status.success(), "{output:?}");
    let stacks = report["profile"]["stacks"]
        .as_array()
        .expect("profile stacks");
    let (mut all, mut in_eval) = (0, 0);
    for s in stacks
        .iter()
        .filter(|s| s["stack"].as_str().unwrap().starts_with("python3"))
    {
        let n = u64_at(s, "/samples");
        all += n;
        if s["stack"]
            .as_str()
            .unwrap()
            .contains("_PyEval_EvalFrameDefault")
        {
            in_eval += n;
        }
    }
    eprintln!("python3: {in_eval} of {all} samples under _PyEval_EvalFrameDefault");
    assert!(all > 20, "{:#}", report["profile"]);
    assert!(in_eval * 2 > all, "{:#}", report["profile"]);
}

/// `cleanroom compare` of two profiled runs names the functions whose share moved: the Rust
/// program's hot functions in the base, the C program's in the new run.
#[test]
fn a_comparison_names_the_functions_that_moved() {
    if !privileged("a_comparison_names_the_functions_that_moved") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hot = build_hot_c(dir.path());
    let w = workload_bin!().to_str().unwrap().to_owned();
    let cg = TestCgroup::new("profile-compare");
    let hz = HZ.to_string();
    let options = ["--profile-frequency", hz.as_str()];
    let (base_out, base) = run_measured_with(&cg, &options, &[&w, "hot-chain", "1000"]);
    let (new_out, new) = run_measured_with(&cg, &options, &[hot.to_str().unwrap(), "1000"]);
    assert!(base_out.status.success() && new_out.status.success());
    let (a, b) = (dir.path().join("base.json"), dir.path().join("new.json"));
    fs::write(&a, base.to_string()).unwrap();
    fs::write(&b, new.to_string()).unwrap();
    let out = Command::new(cleanroom_tests::cleanroom_bin())
        .args(["compare", "--format", "json"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    let c: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let moved: Vec<(&str, f64)> = c["functions"]
        .as_array()
        .expect("functions in the comparison")
        .iter()
        .map(|f| {
            (
                f["function"].as_str().unwrap(),
                f["new_share"].as_f64().unwrap() - f["base_share"].as_f64().unwrap(),
            )
        })
        .collect();
    eprintln!("{moved:?}");
    let change = |name: &str| moved.iter().find(|(f, _)| *f == name).map(|(_, d)| *d);
    // hot_a: about 0 → 70% of the samples; the Rust one 70% → 0.
    assert!(change("hot_a").is_some_and(|d| d > 0.5), "{moved:?}");
    assert!(
        change("cleanroom_test_workload::hot_a").is_some_and(|d| d < -0.5),
        "{moved:?}"
    );
    assert!(moved[0].1 > 0.0, "the grown first: {moved:?}");
}
