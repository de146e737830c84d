//! The profiles (`cleanroom run --profile`). On CPU: programs built without frame pointers —
//! a C program and a Rust release build, each main → outer → {hot_a 70% of its CPU, hot_b 30%}
//! — get whole stacks from their `.eh_frame`, the split the programs make themselves, and as
//! many samples as their CPU time (getrusage) at the frequency asked for. Off CPU, at page
//! faults and at block I/O: a C program that sleeps, waits on a pipe, touches pages and reads a
//! loop device with O_DIRECT gets each in the function that did it, with the time, faults and
//! bytes it did. A process that execs is named by the program it runs from its exec on; the
//! user stack a sample copies is as large as configured.

use std::{fs, process::Command};

use cleanroom_tests::{
    LoopDevice, TestCgroup, block_device, privileged, run_measured_with, u64_at, workload_bin,
};

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

/// The C program that waits, touches pages and reads: nap() sleeps 300 ms; wait_pipe() blocks
/// on a pipe its child (in feed_pipe()) writes after 200 ms; touch_pages() writes one byte in
/// each 4 KiB page of 256 MiB (no huge pages); read_direct() reads 64 MiB of the device in its
/// first argument with O_DIRECT, 1 MiB at a time.
const WAITS_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0) {}
}

__attribute__((noinline)) void nap(void) { sleep_ms(300); }

__attribute__((noinline)) void feed_pipe(int fd) {
    sleep_ms(200);
    if (write(fd, "x", 1) != 1) _exit(1);
    _exit(0);
}

__attribute__((noinline)) void wait_pipe(void) {
    int p[2];
    if (pipe(p) != 0) exit(1);
    pid_t child = fork();
    if (child == 0) feed_pipe(p[1]);
    char b;
    if (read(p[0], &b, 1) != 1) exit(1);
    waitpid(child, 0, 0);
}

__attribute__((noinline)) void touch_pages(size_t bytes) {
    char *m = mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) exit(1);
    madvise(m, bytes, MADV_NOHUGEPAGE);
    for (size_t i = 0; i < bytes; i += 4096) m[i] = 1;
    munmap(m, bytes);
}

__attribute__((noinline)) void read_direct(const char *path, size_t bytes) {
    int fd = open(path, O_RDONLY | O_DIRECT);
    if (fd < 0) exit(2);
    void *buf;
    if (posix_memalign(&buf, 4096, 1 << 20) != 0) exit(1);
    for (size_t at = 0; at < bytes; at += 1 << 20)
        if (pread(fd, buf, 1 << 20, at) != 1 << 20) exit(3);
    close(fd);
}

int main(int argc, char **argv) {
    nap();
    wait_pipe();
    touch_pages((size_t)256 << 20);
    read_direct(argv[1], (size_t)64 << 20);
    return 0;
}
"#;

/// The C program built into `dir`, without frame pointers.
fn build_hot_c(dir: &std::path::Path) -> std::path::PathBuf {
    build_c(dir, "hotc", HOT_C)
}

/// `source` built into `dir` as `name`, with `-O2 -fomit-frame-pointer`.
fn build_c(dir: &std::path::Path, name: &str, source_text: &str) -> std::path::PathBuf {
    let source = dir.join(format!("{name}.c"));
    let hot = dir.join(name);
    fs::write(&source, source_text).unwrap();
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

    // The C program is listed with the build id its linker gave it, as readelf reads it.
    let readelf = Command::new("readelf")
        .arg("-n")
        .arg(&hot)
        .output()
        .unwrap();
    let notes = String::from_utf8_lossy(&readelf.stdout);
    let build_id = notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("gcc links a build id");
    let listed = profile["modules"]
        .as_array()
        .expect("profile modules")
        .iter()
        .find(|m| m["path"] == hot.to_str().unwrap())
        .unwrap_or_else(|| panic!("{} not in {:#}", hot.display(), profile["modules"]));
    assert_eq!(listed["build_id"], build_id, "{listed:#}");

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

/// A program that spins in one function, then execs another that spins in a function of its
/// own (`SPIN_C`, built twice). Built without PIE, both load their code at the same addresses.
const SPIN_C: &str = r#"
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t sink;

static double cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

__attribute__((noinline)) void SPIN(double secs) {
    double end = cpu() + secs;
    uint64_t x = 0;
    while (cpu() < end)
        for (int i = 0; i < 200000; i++) { x = x * 6364136223846793005ULL + 1; sink = x; }
}

int main(int argc, char **argv) {
    SPIN(0.4);
    if (argc > 1) execv(argv[1], argv + 1);
    return argc > 1;
}
"#;

/// Short-lived processes are unwound whole even when every one of them has ended before its
/// samples are read: `cleanroom` is stopped (SIGSTOP) while 40 runs of the C program, 8 ms of
/// CPU each, start and end, then let go. Their mappings come from the kernel's reports of each
/// `exec` and `mmap`, not from `/proc` (gone by then), and include the C library mapped after
/// the loader started: the stacks reach `_start`, not `[unknown]` under `main`.
#[test]
fn processes_that_ended_before_their_samples_were_read_are_unwound_whole() {
    if !privileged("processes_that_ended_before_their_samples_were_read_are_unwound_whole") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hot = build_hot_c(dir.path());
    let (ready, go, done) = (
        dir.path().join("ready"),
        dir.path().join("go"),
        dir.path().join("done"),
    );
    let script = format!(
        "touch {ready}; while [ ! -e {go} ]; do sleep 0.02; done; \
         for i in $(seq 40); do {hot} 8; done; touch {done}",
        ready = ready.display(),
        go = go.display(),
        hot = hot.display(),
        done = done.display(),
    );
    let cg = TestCgroup::new("profile-gone");
    let report_path = dir.path().join("report.json");
    let hz = 299;
    let mut cleanroom = Command::new(cleanroom_tests::cleanroom_bin())
        .args(["run", "-q", "--cgroup-parent"])
        .arg(cg.path())
        .arg("--report")
        .arg(&report_path)
        .args(["--profile-frequency", &hz.to_string(), "--", "sh", "-c"])
        .arg(&script)
        .spawn()
        .expect("starting cleanroom");
    let wait_for = |path: &std::path::Path| {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !path.exists() {
            assert!(
                std::time::Instant::now() < until,
                "{} never came",
                path.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    wait_for(&ready);
    let pid = cleanroom.id() as i32;
    // SAFETY: signalling our own child, which is still running (not yet waited for).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    fs::write(&go, "").unwrap();
    wait_for(&done);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let status = cleanroom.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&report_path).unwrap()).unwrap();
    let profile = &report["profile"];

    // Samples in hot_a or hot_b, and of those the ones whole from `_start` (a guest's slow
    // loader takes many more samples of its own, whole or not: not counted here).
    let (mut hot, mut whole) = (0, 0);
    for s in profile["stacks"].as_array().expect("profile stacks") {
        let frames: Vec<&str> = s["stack"].as_str().unwrap().split(';').collect();
        if frames[0] != "hotc" || !frames.iter().any(|f| *f == "hot_a" || *f == "hot_b") {
            continue;
        }
        let n = u64_at(s, "/samples");
        hot += n;
        let chain = frames.windows(4).any(|w| {
            w[0] == "__libc_start_call_main"
                && w[1] == "main"
                && w[2] == "outer"
                && (w[3] == "hot_a" || w[3] == "hot_b")
        });
        if frames.get(1) == Some(&"_start") && chain {
            whole += n;
        }
    }
    let gone = u64_at(profile, "/unwinding/process_gone");
    eprintln!(
        "{whole} of {hot} samples of the ended processes in hot_a/hot_b whole from _start; \
         {gone} of {} samples without mappings",
        u64_at(profile, "/samples")
    );
    // 40 × 8 ms at 299 Hz: about 96 samples in hot_a and hot_b, fewer where the buffer
    // overflowed while cleanroom was stopped (a slow guest's loaders take many samples): the
    // share kept of them is expected. Unwound from `/proc`, those of ended processes have no
    // user frames at all, or `[unknown]` for the C library.
    let kept = u64_at(profile, "/samples") as f64;
    let expected = 96.0 * kept / (kept + u64_at(profile, "/lost") as f64);
    assert!(
        whole as f64 >= 0.5 * expected,
        "{whole} whole of ~{expected:.0} expected\n{profile:#}"
    );
    assert!(
        whole as f64 >= 0.90 * hot as f64,
        "{whole} of {hot} whole\n{profile:#}"
    );
    assert!(gone * 50 <= u64_at(profile, "/samples"), "{profile:#}");
}

/// A process that execs another program is unwound and named with the new program's files
/// from its exec on, even where the new program's code lies at the addresses the old one's did.
#[test]
fn a_process_is_named_by_the_program_it_runs_after_exec() {
    if !privileged("a_process_is_named_by_the_program_it_runs_after_exec") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let build = |name: &str, function: &str| {
        let source = dir.path().join(format!("{name}.c"));
        let bin = dir.path().join(name);
        fs::write(&source, SPIN_C.replace("SPIN", function)).unwrap();
        let built = Command::new("gcc")
            .args(["-O2", "-fomit-frame-pointer", "-no-pie", "-o"])
            .arg(&bin)
            .arg(&source)
            .output()
            .expect("gcc (cargo xtask test installs it)");
        assert!(built.status.success(), "{built:?}");
        bin
    };
    let before = build("spinbefore", "before_exec");
    let after = build("spinafter", "after_exec");
    let cg = TestCgroup::new("profile-exec");
    let (output, report) = run_measured_with(
        &cg,
        &["--profile-frequency", &HZ.to_string()],
        &[before.to_str().unwrap(), after.to_str().unwrap()],
    );
    assert!(output.status.success(), "{output:?}");
    let stacks = report["profile"]["stacks"]
        .as_array()
        .expect("profile stacks");
    // Each spins 0.4 s of CPU in its function: that many samples at HZ (less 20%: a guest's
    // clock is coarser) there, and none of either in the other's function.
    let expected = 0.4 * HZ as f64;
    for (comm, function, other) in [
        ("spinbefore", "before_exec", "after_exec"),
        ("spinafter", "after_exec", "before_exec"),
    ] {
        let (mut all, mut named, mut wrong) = (0, 0, 0);
        for s in stacks {
            let stack = s["stack"].as_str().unwrap();
            if !stack.starts_with(comm) {
                continue;
            }
            let n = u64_at(s, "/samples");
            all += n;
            if stack.contains(&format!(";main;{function}")) {
                named += n;
            }
            if stack.contains(other) {
                wrong += n;
            }
        }
        eprintln!(
            "{comm}: {named} of {all} samples in main → {function} ({expected:.0} expected), \
             {wrong} in {other}"
        );
        assert!(
            named as f64 >= expected * 0.8 && wrong == 0,
            "{comm}: {named} of {all} samples in main → {function}, {wrong} in {other}\n{:#}",
            report["profile"]
        );
    }
}

/// A program whose hot function runs about 10 KiB below `main` on its stack (`deep` calls
/// itself 20 times, each frame holding 512 bytes).
const DEEP_C: &str = r#"
#include <stdint.h>
#include <time.h>

static volatile uint64_t sink;

static double cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

__attribute__((noinline)) void bottom(double secs) {
    double end = cpu() + secs;
    uint64_t x = 0;
    while (cpu() < end)
        for (int i = 0; i < 200000; i++) { x = x * 6364136223846793005ULL + 1; sink = x; }
}

__attribute__((noinline)) void deep(int n, double secs) {
    volatile char frame[512];
    frame[0] = (char)n;
    if (n == 0) bottom(secs); else deep(n - 1, secs);
    sink += frame[0];
}

int main(void) {
    deep(20, 0.5);
    return 0;
}
"#;

/// `profiling_stack_bytes` is what the kernel copies: a stack 10 KiB deep is unwound to `main`
/// with the default 16 KiB, and not with 4 KiB.
#[test]
fn the_user_stack_copied_is_as_large_as_configured() {
    if !privileged("the_user_stack_copied_is_as_large_as_configured") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let deep = build_c(dir.path(), "deepc", DEEP_C);
    for (bytes, whole) in [(16_384u64, true), (4_096, false)] {
        let config = dir.path().join(format!("stack{bytes}.toml"));
        fs::write(
            &config,
            format!(
                "[performance_monitoring]\nenable_profiling = true\n\
                 profiling_frequency_hz = {HZ}\nprofiling_stack_bytes = {bytes}\n"
            ),
        )
        .unwrap();
        let cg = TestCgroup::new("profile-stack");
        let (output, report) = run_measured_with(
            &cg,
            &["--config", config.to_str().unwrap()],
            &[deep.to_str().unwrap()],
        );
        assert!(output.status.success(), "{output:?}");
        let profile = &report["profile"];
        assert_eq!(u64_at(profile, "/user_stack_bytes"), bytes, "{profile:#}");
        let (mut all, mut to_main) = (0, 0);
        for s in profile["stacks"].as_array().expect("profile stacks") {
            let stack = s["stack"].as_str().unwrap();
            if !stack.starts_with("deepc") || !stack.contains(";bottom") {
                continue;
            }
            let n = u64_at(s, "/samples");
            all += n;
            if stack.contains(";main;deep;") {
                to_main += n;
            }
        }
        eprintln!("{bytes} B of stack: {to_main} of {all} samples in bottom unwound to main");
        assert!(all > 20, "{profile:#}");
        if whole {
            assert!(to_main as f64 >= all as f64 * 0.9, "{profile:#}");
        } else {
            assert_eq!(to_main, 0, "{profile:#}");
        }
    }
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

    // The differential flame graph: each stack's samples in both runs, the base's scaled to
    // the new run's total; drawn with `-o FILE.svg`, the C program's frames red (grown).
    let changes = c["stack_changes"].as_array().expect("stack changes");
    let new_sum: u64 = changes.iter().map(|s| u64_at(s, "/new")).sum();
    let base_sum: u64 = changes.iter().map(|s| u64_at(s, "/base")).sum();
    let samples = u64_at(&new, "/profile/samples");
    assert_eq!(new_sum, samples, "{c:#}");
    assert!(
        base_sum.abs_diff(samples) <= changes.len() as u64,
        "the base scaled to {samples}: {base_sum}"
    );
    let svg = dir.path().join("diff.svg");
    let out = Command::new(cleanroom_tests::cleanroom_bin())
        .args(["compare", "-o"])
        .arg(&svg)
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    // 3: a figure regressed (the two programs differ in more than their functions).
    assert!(matches!(out.status.code(), Some(0 | 3)), "{out:?}");
    let svg = fs::read_to_string(&svg).unwrap();
    let at = svg.find("<title>hot_a ").expect("hot_a in the graph");
    let fill = &svg[at..][svg[at..].find("fill=\"rgb(").unwrap() + 10..];
    let rgb: Vec<u32> = fill[..fill.find(')').unwrap()]
        .split(',')
        .map(|x| x.trim().parse().unwrap())
        .collect();
    assert!(rgb[0] > rgb[2], "hot_a grew, so red: {rgb:?}");
}

/// The weight of the stacks of `profile` (a weighted one) whose frames include each of `all`
/// and none of `none`.
fn weight_through(profile: &serde_json::Value, all: &[&str], none: &[&str]) -> u64 {
    profile["stacks"]
        .as_array()
        .expect("stacks")
        .iter()
        .filter(|s| {
            let frames: Vec<&str> = s["stack"].as_str().unwrap().split(';').collect();
            all.iter().all(|f| frames.contains(f)) && !none.iter().any(|f| frames.contains(f))
        })
        .map(|s| u64_at(s, "/samples"))
        .sum()
}

/// Off CPU, nap()'s 300 ms sleep and wait_pipe()'s 200 ms on the pipe are in their stacks,
/// each of its kind; at page faults, touch_pages() has its 65,536 faults; at block I/O,
/// read_direct() its 64 MiB, as the device's own counters in the report have them.
#[test]
fn waits_faults_and_block_io_are_in_the_functions_that_did_them() {
    if !privileged("waits_faults_and_block_io_are_in_the_functions_that_did_them") {
        return;
    }
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let waits = build_c(dir.path(), "waits", WAITS_C);
    let dev = LoopDevice::new(80 * MIB);
    let cg = TestCgroup::new("profile-waits");
    let (folded, svg) = (
        dir.path().join("offcpu.folded"),
        dir.path().join("block.svg"),
    );
    let (output, report) = run_measured_with(
        &cg,
        &[
            "--profile",
            "--report",
            folded.to_str().unwrap(),
            "--report",
            svg.to_str().unwrap(),
        ],
        &[waits.to_str().unwrap(), &dev.path],
    );
    assert!(output.status.success(), "{output:?}");
    cleanroom_tests::assert_matches_schema(&report);
    let profile = &report["profile"];
    assert!(
        profile.get("unavailable").is_none(),
        "{:#}",
        profile["unavailable"]
    );
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;

    let off = &profile["off_cpu"];
    assert_eq!(off["unit"], "ns", "{off:#}");
    let nap = weight_through(off, &["[sleep]", "nap"], &[]);
    let pipe = weight_through(off, &["[pipe/socket]", "wait_pipe"], &["feed_pipe"]);
    let feed = weight_through(off, &["[sleep]", "feed_pipe"], &[]);
    eprintln!(
        "off CPU: nap {:.1} ms, wait_pipe {:.1} ms, feed_pipe {:.1} ms",
        nap as f64 / 1e6,
        pipe as f64 / 1e6,
        feed as f64 / 1e6
    );
    for (what, got, want) in [
        ("nap", nap, 300e6),
        ("wait_pipe", pipe, 200e6),
        ("feed_pipe", feed, 200e6),
    ] {
        assert!(
            (got as f64 - want).abs() <= want * 0.10,
            "{what}: {got} ns off CPU, {want} expected\n{off:#}"
        );
    }
    let ranked = |p: &serde_json::Value, f: &str| {
        p["top_functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["function"] == f)
            .map_or(0, |x| u64_at(x, "/total_samples"))
    };
    assert!(
        ranked(off, "nap") >= nap,
        "nap in the top functions\n{off:#}"
    );

    let faults = &profile["faults"];
    let touched = (256 * MIB / 4096) as f64;
    let in_touch = weight_through(faults, &["touch_pages"], &[]);
    let all_faults = u64_at(&report, "/totals/page_faults_user");
    let period = u64_at(faults, "/sample_every");
    eprintln!(
        "faults: touch_pages {in_touch} of {touched} it made; the profile {} of the run's {all_faults}",
        u64_at(faults, "/total")
    );
    assert!(
        (in_touch as f64 - touched).abs() <= touched * 0.10,
        "touch_pages: {in_touch} faults in the profile, {touched} made\n{faults:#}"
    );
    // Each CPU holds back less than a period, the run's faults since its last sample.
    let total = u64_at(faults, "/total");
    assert!(
        total <= all_faults && all_faults - total < period * cpus,
        "the fault profile's {total} against the run's {all_faults} user faults"
    );

    let block = &profile["block"];
    let read = weight_through(block, &["[read]", "read_direct"], &[]);
    let device = u64_at(block_device(&report, &dev.major_minor()), "/read_bytes");
    eprintln!("block: read_direct {read} B; the device {device} B read");
    assert_eq!(device, 64 * MIB, "O_DIRECT bytes the device saw");
    assert!(
        read <= device && device - read < u64_at(block, "/sample_every") * cpus,
        "read_direct: {read} B in the block profile, the device read {device} B\n{block:#}"
    );

    // `offcpu.folded` holds the off-CPU stacks, `block.svg` the block I/O flame graph.
    let folded_sum: u64 = fs::read_to_string(&folded)
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert_eq!(folded_sum, u64_at(off, "/total"));
    let svg = fs::read_to_string(&svg).unwrap();
    assert!(
        svg.contains("Block I/O by stack") && svg.contains("read_direct"),
        "{svg}"
    );

    // The Markdown names each with its function.
    let md = cleanroom_tests::markdown_of(&report);
    for line in [
        "**Off-CPU profile**",
        "**Page faults by stack**",
        "**Block I/O by stack**",
        "| `nap` |",
        "| `touch_pages` |",
        "| `read_direct` |",
    ] {
        assert!(md.contains(line), "{line} not in\n{md}");
    }
}
