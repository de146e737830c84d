//! `cargo xtask bench`: what Cleanroom costs, measured in one run beside the empty-program floor
//! and a bpftrace peer, with modes alternated to cancel machine drift.
//!
//! 1. Per-event cost of every program (`run_time_ns / run_cnt` with BPF stats on).
//! 2. Workload slowdown: none vs Cleanroom vs bpftrace, median of alternated repetitions.
//! 3. The slowdown of fio and the page-fault loop resolved (`resolved`: paired repetitions, a
//!    95% bootstrap interval), and BPF time per context switch beside a bpftrace script doing
//!    per-cgroup CPU accounting.
//! 4. The agent itself: CPU, RSS/PSS, start-up and map sizes, polling 1 s and 100 ms over 10
//!    and 500 live cgroups.
//! 5. The agent as a sidecar (`cleanroom agent`, 1 s): CPU, RSS/PSS over 10 and 500 watched
//!    cgroups, the time a `/metrics` scrape takes, and how long a new cgroup waits for its
//!    first sample.
//! 6. The command measured (`in_run`): many short processes and a small crate's build, bare
//!    and inside `cleanroom run`, with the slowdown's 95% confidence interval.
//! 7. The CPU profile (`profiling`): a CPU-bound job bare, in `cleanroom run` and in `cleanroom
//!    run --profile` at 99 Hz; ns per sample and Cleanroom's own CPU while profiling.
//!
//! Writes `target/bench/results.json` and prints the tables. Goals are reported, never asserted.
//! `--only SECTION` runs one section alone and writes `results-SECTION.json`: `per-event`
//! (section 1, also `--quick`), `resolved` (3), `agent-sidecar` (5), `in-run` (6), `profiling`
//! (7).

mod in_run;
mod profiling;
mod resolved;

use std::{
    collections::{BTreeMap, hash_map::RandomState},
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::step;

/// A section `--only` runs alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// 4: `cleanroom agent` as a sidecar.
    AgentSidecar,
    /// 5: the command measured, bare vs inside `cleanroom run`.
    InRun,
    /// 6: the CPU profile's cost.
    Profiling,
    /// 1: the per-event cost of every program, with its goals (`--quick`).
    PerEvent,
    /// 2b and 1b: the resolved slowdown and BPF time per context switch, with their goals.
    Resolved,
}

/// Who is attached while a workload runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Agent {
    None,
    Cleanroom,
    Floor,
    Bpftrace,
}

/// The bpftrace peer: the same per-cgroup counting, on classic tracepoints (bpftrace has no
/// cgroup_skb programs: the network hooks are the nearest tracepoints).
const PEER_SCRIPT: &str = r#"
tracepoint:sched:sched_stat_runtime { @cpu[cgroup] = sum(args->runtime); }
tracepoint:sched:sched_switch {
  if (args->prev_state == 0) { @ts[args->prev_pid] = nsecs; @invol[cgroup] = count(); }
  else { @vol[cgroup] = count(); }
  $t = @ts[args->next_pid];
  if ($t) { @runq[cgroup] = hist(nsecs - $t); delete(@ts[args->next_pid]); }
}
tracepoint:sched:sched_wakeup { @ts[args->pid] = nsecs; }
tracepoint:sched:sched_wakeup_new { @ts[args->pid] = nsecs; }
tracepoint:sched:sched_process_fork { @fork[cgroup] = count(); }
tracepoint:sched:sched_process_exit { @exit[cgroup] = count(); }
tracepoint:exceptions:page_fault_user { @pfu[cgroup] = count(); }
tracepoint:exceptions:page_fault_kernel { @pfk[cgroup] = count(); }
tracepoint:block:block_bio_queue { @bio[cgroup, args->dev] = sum(args->nr_sector); @ops[cgroup, args->dev] = count(); }
tracepoint:block:block_rq_issue { @rq[args->dev, args->sector] = nsecs; }
tracepoint:block:block_rq_complete {
  $t = @rq[args->dev, args->sector];
  if ($t) { @blat[args->dev] = hist(nsecs - $t); delete(@rq[args->dev, args->sector]); }
}
tracepoint:net:net_dev_queue { @tx[cgroup] = sum(args->len); @txp[cgroup] = count(); }
tracepoint:net:netif_receive_skb { @rx[cgroup] = sum(args->len); @rxp[cgroup] = count(); }
tracepoint:tcp:tcp_retransmit_skb { @retx[cgroup] = count(); }
tracepoint:sock:inet_sock_set_state {
  if (args->newstate == 2) { @conn[args->skaddr] = nsecs; }
  if (args->oldstate == 2) { $t = @conn[args->skaddr]; if ($t) { @connlat[cgroup] = hist(nsecs - $t); delete(@conn[args->skaddr]); } }
}
"#;

/// Our hook a bpftrace tracepoint stands in for.
fn peer_hook(tracepoint: &str) -> String {
    match tracepoint {
        "net_dev_queue" => "cgroup_skb/egress".into(),
        "netif_receive_skb" => "cgroup_skb/ingress".into(),
        other => format!("tp_btf/{other}"),
    }
}

/// An attached agent.
struct Running {
    child: Child,
    /// (hook, program id).
    programs: Vec<(String, u32)>,
}

impl Running {
    fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let mut sink = Vec::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_end(&mut sink);
        }
        self.child.wait()?;
        Ok(())
    }
}

/// Paths and settings the benchmark works with.
pub struct Bench {
    cleanroom: PathBuf,
    workload: PathBuf,
    out: PathBuf,
    loop_dev: String,
    reps: usize,
}

/// Undoes what the benchmark changed on the host.
struct Restore {
    stats: String,
    tracefs_mounted_by_us: bool,
    loop_dev: Option<String>,
    backing: PathBuf,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.stats);
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
        let _ = fs::remove_file(&self.backing);
        if self.tracefs_mounted_by_us {
            let _ = Command::new("umount").arg("/sys/kernel/tracing").status();
        }
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid and writable.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// Run time (ns) and runs of program `id` so far (BPF stats on), from `bpftool`.
fn program_stats(id: u32) -> Result<(u64, u64)> {
    let v: Value = serde_json::from_str(&output(Command::new("bpftool").args([
        "prog",
        "show",
        "id",
        &id.to_string(),
        "-j",
    ]))?)?;
    Ok((
        v["run_time_ns"].as_u64().unwrap_or(0),
        v["run_cnt"].as_u64().unwrap_or(0),
    ))
}

/// Median, min and max.
fn spread(xs: &[f64]) -> Value {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let median = if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    json!({ "median": median, "min": v.first(), "max": v.last(), "n": v.len(), "values": xs })
}

fn median(xs: &[f64]) -> f64 {
    spread(xs)["median"].as_f64().unwrap_or(f64::NAN)
}

impl Bench {
    /// Prepares the host (BPF stats, tracefs, a loop device) and runs every section, or only
    /// `only` (which needs none of that).
    pub fn run(
        root: &Path,
        cleanroom: PathBuf,
        workload: PathBuf,
        reps: usize,
        only: Option<Section>,
    ) -> Result<()> {
        let out = root.join("target/bench");
        fs::create_dir_all(&out)?;
        if only == Some(Section::AgentSidecar) {
            let bench = Bench {
                cleanroom,
                workload,
                out,
                loop_dev: String::new(),
                reps,
            };
            return bench.only_agent_sidecar();
        }
        if only == Some(Section::Profiling) {
            let started = Instant::now();
            step("the CPU profile's cost, alone");
            let r = profiling::measure(&cleanroom, &out, reps)?;
            let results = json!({
                "machine": machine(),
                "duration_s": started.elapsed().as_secs_f64(),
                "repetitions": reps,
                "goals": profiling::goals(&r),
                "profiling": r,
            });
            let path = out.join("results-profiling.json");
            write_results(&path, &results)?;
            profiling::print(&results["profiling"]);
            print_goals(&results);
            step(&format!("results written to {}", path.display()));
            return Ok(());
        }
        if only == Some(Section::InRun) {
            let started = Instant::now();
            step("the command measured: bare vs inside cleanroom run, alone");
            let rows = in_run::measure(&cleanroom, &out, reps)?;
            let results = json!({
                "machine": machine(),
                "duration_s": started.elapsed().as_secs_f64(),
                "repetitions": reps,
                "in_run": rows,
            });
            let path = out.join("results-in-run.json");
            write_results(&path, &results)?;
            in_run::print(&results["in_run"]);
            step(&format!("results written to {}", path.display()));
            return Ok(());
        }
        let stats = fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .unwrap_or_else(|_| "0".into())
            .trim()
            .to_owned();
        let tracefs = Path::new("/sys/kernel/tracing/events").exists();
        if !tracefs {
            step("mounting tracefs for the bpftrace peer (unmounted at the end)");
            output(Command::new("mount").args([
                "-t",
                "tracefs",
                "tracefs",
                "/sys/kernel/tracing",
            ]))?;
        }
        let backing = out.join("loop.img");
        fs::File::create(&backing)?.set_len(512 << 20)?;
        let loop_dev = output(
            Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&backing),
        )?
        .trim()
        .to_owned();
        let _restore = Restore {
            stats,
            tracefs_mounted_by_us: !tracefs,
            loop_dev: Some(loop_dev.clone()),
            backing,
        };
        let bench = Bench {
            cleanroom,
            workload,
            out,
            loop_dev,
            reps,
        };
        let started = Instant::now();
        let machine = machine();
        if only == Some(Section::PerEvent) {
            step("the per-event cost of every program (BPF stats on), alone");
            let per_event = bench.per_event_cost()?;
            let results = json!({
                "machine": machine,
                "duration_s": started.elapsed().as_secs_f64(),
                "per_event": per_event,
                "goals": per_event_goals(&per_event),
            });
            let path = bench.out.join("results-per-event.json");
            write_results(&path, &results)?;
            print_per_event(&results);
            print_goals(&results);
            step(&format!(
                "results written to {} ({:.0} s)",
                path.display(),
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if only == Some(Section::Resolved) {
            step("the resolved slowdown and BPF time per context switch, alone");
            let (resolved, per_switch) = bench.resolved_and_per_switch()?;
            let results = json!({
                "machine": machine,
                "duration_s": started.elapsed().as_secs_f64(),
                "resolved_slowdown": resolved,
                "per_switch": per_switch,
                "goals": resolved::goals(&resolved, &per_switch),
            });
            let path = bench.out.join("results-resolved.json");
            write_results(&path, &results)?;
            resolved::print(&resolved, &per_switch);
            print_goals(&results);
            step(&format!("results written to {}", path.display()));
            return Ok(());
        }
        step("phase 1/7: per-event cost of every program (BPF stats on)");
        let per_event = bench.per_event_cost()?;
        step("phase 2/7: workload slowdown, modes alternated");
        let slowdown = bench.slowdown()?;
        step("phase 3/7: the slowdown resolved, and BPF time per context switch");
        let (resolved, per_switch) = bench.resolved_and_per_switch()?;
        step("phase 4/7: the agent itself");
        let agent = bench.agent_cost()?;
        step("phase 5/7: the agent as a sidecar (cleanroom agent)");
        let agent_sidecar = bench.agent_sidecar()?;
        step("phase 6/7: the command measured, bare vs inside cleanroom run");
        let in_run = in_run::measure(&bench.cleanroom, &bench.out, bench.reps)?;
        step("phase 7/7: the CPU profile's cost");
        let profile = profiling::measure(&bench.cleanroom, &bench.out, bench.reps)?;
        let mut goals = goals(&per_event, &slowdown, &agent, &agent_sidecar);
        if let Some(g) = goals.as_array_mut() {
            g.extend(resolved::goals(&resolved, &per_switch));
            g.extend(profiling::goals(&profile));
        }
        let results = json!({
            "machine": machine,
            "duration_s": started.elapsed().as_secs_f64(),
            "repetitions": bench.reps,
            "per_event": per_event,
            "slowdown": slowdown,
            "resolved_slowdown": resolved,
            "per_switch": per_switch,
            "agent": agent,
            "agent_sidecar": agent_sidecar,
            "in_run": in_run,
            "profiling": profile,
            "goals": goals,
        });
        let path = bench.out.join("results.json");
        write_results(&path, &results)?;
        print_tables(&results);
        resolved::print(&results["resolved_slowdown"], &results["per_switch"]);
        in_run::print(&results["in_run"]);
        profiling::print(&results["profiling"]);
        step(&format!(
            "results written to {} ({:.0} s)",
            path.display(),
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    fn start(&self, agent: Agent) -> Result<Option<Running>> {
        match agent {
            Agent::None => Ok(None),
            Agent::Cleanroom | Agent::Floor => {
                let mut cmd = Command::new(&self.cleanroom);
                cmd.arg("attach").args(["--limit", "30m"]);
                if agent == Agent::Floor {
                    cmd.arg("--floor");
                }
                let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
                let mut line = String::new();
                BufReader::new(child.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
                let v: Value = serde_json::from_str(&line)
                    .with_context(|| format!("cleanroom attach printed {line:?}"))?;
                let programs = v["programs"]
                    .as_array()
                    .context("programs")?
                    .iter()
                    .filter_map(|p| {
                        Some((p["hook"].as_str()?.to_owned(), p["id"].as_u64()? as u32))
                    })
                    .collect();
                Ok(Some(Running { child, programs }))
            }
            Agent::Bpftrace => self.start_bpftrace("peer", PEER_SCRIPT, 15).map(Some),
        }
    }

    /// bpftrace running `script` (kept as `<name>.bt`), once its `probes` probes are attached.
    fn start_bpftrace(&self, name: &str, script: &str, probes: usize) -> Result<Running> {
        let path = self.out.join(format!("{name}.bt"));
        fs::write(&path, script)?;
        let child = Command::new("bpftrace")
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let perf: Value = serde_json::from_str(&output(
                Command::new("bpftool").args(["perf", "show", "-j"]),
            )?)
            .unwrap_or(Value::Null);
            let programs: Vec<(String, u32)> = perf
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["pid"].as_u64() == Some(u64::from(pid)))
                .filter_map(|e| {
                    Some((
                        peer_hook(e["tracepoint"].as_str()?),
                        e["prog_id"].as_u64()? as u32,
                    ))
                })
                .collect();
            if programs.len() >= probes {
                return Ok(Running { child, programs });
            }
            if Instant::now() > deadline {
                bail!("bpftrace did not attach its {probes} probes within 60 s");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs one workload; returns its figure.
    fn workload(&self, name: &str) -> Result<f64> {
        match name {
            "sched_pipe" => perf_usecs_per_op(&["bench", "sched", "pipe", "-l", "40000"]),
            "syscall_basic" => perf_usecs_per_op(&["bench", "syscall", "basic", "-l", "3000000"]),
            "page_faults" => {
                let pages = 100_000;
                let t = Instant::now();
                output(Command::new(&self.workload).args(["touch", &pages.to_string()]))?;
                Ok(t.elapsed().as_nanos() as f64 / pages as f64)
            }
            "fio_direct" => {
                let out = output(Command::new("fio").args([
                    "--name=bench",
                    &format!("--filename={}", self.loop_dev),
                    "--direct=1",
                    "--rw=randrw",
                    "--bs=4k",
                    "--ioengine=psync",
                    "--runtime=1",
                    "--time_based",
                    "--output-format=json",
                ]))?;
                let v: Value = serde_json::from_str(&out)?;
                let job = &v["jobs"][0];
                Ok(job["read"]["iops"].as_f64().unwrap_or(0.0)
                    + job["write"]["iops"].as_f64().unwrap_or(0.0))
            }
            "iperf3_loopback" => {
                let port = "5299";
                let mut server = Command::new("iperf3")
                    .args(["-s", "-1", "-p", port])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?;
                // No probe connection: a one-off server would take it for its client. The
                // client retries until the server listens.
                let t = Instant::now();
                let out = loop {
                    thread::sleep(Duration::from_millis(30));
                    let out = Command::new("iperf3")
                        .args(["-c", "127.0.0.1", "-p", port, "-t", "1", "-J"])
                        .output()?;
                    if out.status.success() || t.elapsed() > Duration::from_secs(5) {
                        break out;
                    }
                };
                let _ = server.kill();
                let _ = server.wait();
                let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
                v["end"]["sum_received"]["bits_per_second"]
                    .as_f64()
                    .context("iperf3 gave no throughput")
            }
            other => bail!("unknown workload {other}"),
        }
    }

    /// The resolved slowdown (BPF stats off), then BPF time per switch (stats on).
    fn resolved_and_per_switch(&self) -> Result<(Value, Value)> {
        let resolved = self.resolved_slowdown()?;
        fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
        let per_switch = self.per_switch();
        fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")?;
        Ok((resolved, per_switch?))
    }

    fn per_event_cost(&self) -> Result<Value> {
        fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
        let agents = [Agent::Cleanroom, Agent::Floor, Agent::Bpftrace];
        // (agent, hook) → (run_time_ns, run_cnt)
        let mut totals: BTreeMap<(Agent, String), (u64, u64)> = BTreeMap::new();
        for round in 0..3 {
            for i in 0..agents.len() {
                let agent = agents[(i + round) % agents.len()];
                let running = self.start(agent)?.context("an agent")?;
                for w in WORKLOADS {
                    self.workload(w.0)?;
                }
                // Forks and exits, TCP connections, and cgroups made and removed fire their
                // hooks too: enough of each for a mean over more than 100 events.
                output(Command::new(&self.workload).args(["fork", "100", "1"]))?;
                output(Command::new(&self.workload).args(["connects", "1000"]))?;
                for (hook, id) in &running.programs {
                    let (run_time, runs) = program_stats(*id)?;
                    let e = totals.entry((agent, hook.clone())).or_default();
                    e.0 += run_time;
                    e.1 += runs;
                }
                running.stop()?;
            }
        }
        fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")?;
        let hooks: std::collections::BTreeSet<String> = totals
            .keys()
            .filter(|(a, _)| *a == Agent::Cleanroom)
            .map(|(_, h)| h.clone())
            .collect();
        let per = |agent: Agent, hook: &str| {
            totals
                .get(&(agent, hook.to_owned()))
                .filter(|(_, n)| *n > 0)
                .map(|(t, n)| (*t as f64 / *n as f64, *n))
        };
        Ok(Value::Array(
            hooks
                .iter()
                .map(|hook| {
                    let c = per(Agent::Cleanroom, hook);
                    let f = per(Agent::Floor, hook);
                    let b = per(Agent::Bpftrace, hook);
                    json!({
                        "hook": hook,
                        "events": c.map(|x| x.1),
                        "cleanroom_ns": c.map(|x| x.0),
                        "floor_ns": f.map(|x| x.0),
                        "bpftrace_ns": b.map(|x| x.0),
                        "vs_floor": c.zip(f).map(|(c, f)| c.0 / f.0),
                        "vs_bpftrace": c.zip(b).map(|(c, b)| c.0 / b.0),
                    })
                })
                .collect(),
        ))
    }

    fn slowdown(&self) -> Result<Value> {
        let agents = [Agent::None, Agent::Cleanroom, Agent::Bpftrace];
        let mut values: BTreeMap<(&str, Agent), Vec<f64>> = BTreeMap::new();
        for rep in 0..self.reps {
            eprint!("\rxtask: repetition {}/{}", rep + 1, self.reps);
            for i in 0..agents.len() {
                let agent = agents[(i + rep) % agents.len()];
                let running = self.start(agent)?;
                for (w, _, _) in WORKLOADS {
                    values
                        .entry((w, agent))
                        .or_default()
                        .push(self.workload(w)?);
                }
                if let Some(r) = running {
                    r.stop()?;
                }
            }
        }
        eprintln!();
        Ok(Value::Array(
            WORKLOADS
                .iter()
                .map(|(w, unit, higher_is_better)| {
                    let m = |a| median(&values[&(*w, a)]);
                    let slow = |a| {
                        let (base, x) = (m(Agent::None), m(a));
                        if *higher_is_better {
                            (1.0 - x / base) * 100.0
                        } else {
                            (x / base - 1.0) * 100.0
                        }
                    };
                    json!({
                        "workload": w,
                        "unit": unit,
                        "higher_is_better": higher_is_better,
                        "none": spread(&values[&(*w, Agent::None)]),
                        "cleanroom": spread(&values[&(*w, Agent::Cleanroom)]),
                        "bpftrace": spread(&values[&(*w, Agent::Bpftrace)]),
                        "cleanroom_slowdown_pct": slow(Agent::Cleanroom),
                        "bpftrace_slowdown_pct": slow(Agent::Bpftrace),
                    })
                })
                .collect(),
        ))
    }

    fn agent_cost(&self) -> Result<Value> {
        let mut rows = Vec::new();
        for interval in ["1s", "100ms"] {
            for cgroups in [10u32, 500] {
                let workload = self.workload.display().to_string();
                let script = format!("{workload} monotonic; exec {workload} cgroups {cgroups} 11");
                let t0 = monotonic_ns();
                let mut child = Command::new(&self.cleanroom)
                    .args([
                        "run",
                        "-q",
                        "--no-store",
                        "--interval",
                        interval,
                        "--",
                        "sh",
                        "-c",
                        &script,
                    ])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()?;
                let pid = child.id();
                let mut line = String::new();
                BufReader::new(child.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
                let started: u128 = line.trim().parse().context("the workload's start time")?;
                let startup_ms = (started.saturating_sub(t0)) as f64 / 1e6;
                // Let the cgroups come up, then measure a quiet window.
                thread::sleep(Duration::from_secs(3));
                let cpu0 = cpu_ns(pid);
                let w0 = Instant::now();
                thread::sleep(Duration::from_secs(5));
                let cpu1 = cpu_ns(pid);
                let window = w0.elapsed().as_nanos() as f64;
                let (rss_kb, pss_kb) = memory_kb(pid);
                let map_bytes = map_bytes();
                let _ = child.wait();
                let cpu_percent = cpu1.saturating_sub(cpu0) as f64 / window * 100.0;
                eprintln!(
                    "xtask: agent at {interval} over {cgroups} cgroups: {cpu_percent:.3}% CPU, RSS {rss_kb} kB"
                );
                rows.push(json!({
                    "interval": interval,
                    "cgroups": cgroups,
                    "cpu_percent_of_one_core": cpu_percent,
                    "rss_kb": rss_kb,
                    "pss_kb": pss_kb,
                    "startup_ms": startup_ms,
                    "first_sample_ms": startup_ms + if interval == "1s" { 1000.0 } else { 100.0 },
                    "bpf_map_bytes": map_bytes,
                }));
            }
        }
        Ok(Value::Array(rows))
    }

    /// Section 4 alone: its results, tables and goals.
    fn only_agent_sidecar(&self) -> Result<()> {
        let started = Instant::now();
        step("the agent as a sidecar (cleanroom agent), alone");
        let agent_sidecar = self.agent_sidecar()?;
        let goals = goals(&Value::Null, &Value::Null, &Value::Null, &agent_sidecar);
        let results = json!({
            "machine": machine(),
            "duration_s": started.elapsed().as_secs_f64(),
            "agent_sidecar": agent_sidecar,
            "goals": goals,
        });
        let path = self.out.join("results-agent-sidecar.json");
        write_results(&path, &results)?;
        print_agent_sidecar(&results);
        print_goals(&results);
        step(&format!(
            "results written to {} ({:.0} s)",
            path.display(),
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// `cleanroom agent --interval 1s` watching 10, then 500 cgroups of the bench's own.
    fn agent_sidecar(&self) -> Result<Value> {
        let mut rows = Vec::new();
        for cgroups in [10, 500] {
            rows.push(self.sidecar(cgroups)?);
        }
        Ok(Value::Array(rows))
    }

    /// One agent over `cgroups` children of a parent cgroup, each with a sleeping process: once
    /// it lists them all, its CPU over a quiet 5 s window, its memory, 20 timed scrapes of
    /// `/metrics`, then new cgroups made at a random phase of its ticks, each timed until it is
    /// listed and until it has a sample.
    fn sidecar(&self, cgroups: usize) -> Result<Value> {
        let mount = v2_mount()?;
        let rel = format!("cleanroom-bench-agent-{}", std::process::id());
        let mut host = SidecarHost::new(mount.join(&rel))?;
        for i in 0..cgroups {
            host.add(&format!("c{i}"))?;
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log_path = self.out.join(format!("agent-sidecar-{cgroups}.log"));
        let t0 = Instant::now();
        let agent = Command::new(&self.cleanroom)
            .args(["agent", "--watch", &format!("{rel}/*"), "--no-store"])
            .args(["--interval", "1s", "--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log_path)?)
            .spawn()
            .context("starting cleanroom agent")?;
        let pid = agent.id();
        let agent = host.agent.insert(agent);
        // Every cgroup listed: the agent is up and its first tick has picked them all.
        let all_watched_ms = loop {
            if let Some(status) = agent.try_wait()? {
                bail!(
                    "cleanroom agent exited ({status}); see {}",
                    log_path.display()
                );
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!(
                    "cleanroom agent did not list {cgroups} cgroups within 60 s; see {}",
                    log_path.display()
                );
            }
            let listed = http_get(port, "/api/v1/cgroups")
                .ok()
                .and_then(|body| serde_json::from_str::<Value>(&body).ok())
                .map_or(0, |v| rows_under(&v, &rel).count());
            if listed >= cgroups {
                break t0.elapsed().as_secs_f64() * 1e3;
            }
            thread::sleep(Duration::from_millis(50));
        };
        // A quiet window: nothing but the agent's own ticks.
        thread::sleep(Duration::from_secs(2));
        let (rss0_kb, _) = memory_kb(pid);
        let cpu0 = cpu_ns(pid);
        let w0 = Instant::now();
        thread::sleep(Duration::from_secs(5));
        let cpu1 = cpu_ns(pid);
        let window = w0.elapsed().as_nanos() as f64;
        let cpu_percent = cpu1.saturating_sub(cpu0) as f64 / window * 100.0;
        let (rss_kb, pss_kb) = memory_kb(pid);
        // Memory still growing tick by tick (each watch keeps its time series).
        let rss_growth = (rss_kb as f64 - rss0_kb as f64) / (window / 1e9);
        let map_bytes = map_bytes();

        // Scrapes, each on a connection of its own (as the client side sees it).
        let mut scrape_ms = Vec::new();
        let mut metrics = String::new();
        for _ in 0..20 {
            let t = Instant::now();
            metrics = http_get(port, "/metrics")?;
            scrape_ms.push(t.elapsed().as_secs_f64() * 1e3);
            thread::sleep(Duration::from_millis(50));
        }
        // The agent's own view: the previous scrape's rendering and the last tick.
        let own_scrape_ms =
            prom_value(&metrics, "cleanroom_scrape_duration_seconds").map(|s| s * 1e3);
        let own_sample_ms =
            prom_value(&metrics, "cleanroom_sample_duration_seconds").map(|s| s * 1e3);
        let watched = prom_value(&metrics, "cleanroom_watched_cgroups");

        // A new cgroup at a random phase of the ticks: listed ("picked up"), then sampled.
        let mut picked_up_ms = Vec::new();
        let mut first_sample_ms = Vec::new();
        for k in 0..5 {
            // The last trial ended just after a tick: wait a random part of the interval.
            let random = std::hash::BuildHasher::hash_one(&RandomState::new(), k);
            thread::sleep(Duration::from_nanos(random % 1_000_000_000));
            let name = format!("new{k}");
            let want = format!("{rel}/{name}");
            let t = Instant::now();
            host.add(&name)?;
            let (mut picked, mut sampled) = (None, None);
            while sampled.is_none() && t.elapsed() < Duration::from_secs(10) {
                let v: Value = serde_json::from_str(&http_get(port, "/api/v1/cgroups")?)?;
                let elapsed = t.elapsed().as_secs_f64() * 1e3;
                if let Some(row) = rows_under(&v, &rel).find(|r| r["cgroup"] == want.as_str()) {
                    picked.get_or_insert(elapsed);
                    if !row["cpu_time_ns"].is_null() {
                        sampled = Some(elapsed);
                    }
                }
                thread::sleep(Duration::from_millis(10));
            }
            picked_up_ms.push(picked.context("a new cgroup was not listed within 10 s")?);
            first_sample_ms.push(sampled.context("a new cgroup had no sample within 10 s")?);
        }
        drop(host);
        eprintln!(
            "xtask: cleanroom agent over {cgroups} cgroups: {cpu_percent:.3}% CPU, RSS {rss_kb} kB, \
             /metrics {:.1} ms, first sample {:.0} ms",
            median(&scrape_ms),
            median(&first_sample_ms)
        );
        Ok(json!({
            "interval": "1s",
            "cgroups": cgroups,
            "all_watched_ms": all_watched_ms,
            "cpu_percent_of_one_core": cpu_percent,
            "rss_kb": rss_kb,
            "pss_kb": pss_kb,
            "rss_growth_kb_per_s": rss_growth,
            "bpf_map_bytes": map_bytes,
            "metrics_bytes": metrics.len(),
            "metrics_watched_cgroups": watched,
            "scrape_ms": spread(&scrape_ms),
            "own_scrape_ms": own_scrape_ms,
            "own_sample_ms": own_sample_ms,
            "picked_up_ms": spread(&picked_up_ms),
            "first_sample_ms": spread(&first_sample_ms),
        }))
    }
}

/// The cgroup v2 mount: `/sys/fs/cgroup` (unified) or `/sys/fs/cgroup/unified` (hybrid).
fn v2_mount() -> Result<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|m| m.join("cgroup.controllers").exists())
        .context("no cgroup v2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified")
}

/// A parent cgroup of the bench's, its children with a sleeping process each, and the agent
/// watching them: all undone when dropped, error or not.
struct SidecarHost {
    parent: PathBuf,
    children: Vec<PathBuf>,
    sleepers: Vec<Child>,
    agent: Option<Child>,
}

impl SidecarHost {
    fn new(parent: PathBuf) -> Result<Self> {
        fs::create_dir(&parent).with_context(|| format!("making {}", parent.display()))?;
        Ok(Self {
            parent,
            children: Vec::new(),
            sleepers: Vec::new(),
            agent: None,
        })
    }

    /// Makes the child cgroup `name` and moves a new `sleep` into it.
    fn add(&mut self, name: &str) -> Result<()> {
        let dir = self.parent.join(name);
        fs::create_dir(&dir).with_context(|| format!("making {}", dir.display()))?;
        self.children.push(dir.clone());
        let sleeper = Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        let pid = sleeper.id();
        self.sleepers.push(sleeper);
        fs::write(dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", dir.display()))
    }
}

impl Drop for SidecarHost {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(agent.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = agent.kill();
            let _ = agent.wait();
        }
        for sleeper in &mut self.sleepers {
            let _ = sleeper.kill();
            let _ = sleeper.wait();
        }
        // A cgroup whose last process was just reaped can be busy for a moment.
        for dir in self.children.iter().chain([&self.parent]) {
            let started = Instant::now();
            while fs::remove_dir(dir).is_err()
                && dir.exists()
                && started.elapsed() < Duration::from_secs(5)
            {
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// `GET path` from the agent on `127.0.0.1:port`, a connection of its own: the body.
fn http_get(port: u16, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(body.to_owned());
    }
    let (mut rest, mut out) = (body, String::new());
    loop {
        let (size, data) = rest.split_once("\r\n").context("a chunk's size")?;
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(data.get(..n).context("a short chunk")?);
        rest = data.get(n + 2..).context("a chunk's end")?;
    }
}

/// The rows of `/api/v1/cgroups` below the cgroup `parent`.
fn rows_under<'a>(v: &'a Value, parent: &'a str) -> impl Iterator<Item = &'a Value> {
    v["cgroups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |r| {
            r["cgroup"]
                .as_str()
                .and_then(|c| c.strip_prefix(parent))
                .is_some_and(|c| c.starts_with('/'))
        })
}

/// An unlabelled sample of the Prometheus text `text`.
fn prom_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// (name, unit, higher is better).
const WORKLOADS: &[(&str, &str, bool)] = &[
    ("sched_pipe", "usecs/op", false),
    ("syscall_basic", "usecs/op", false),
    ("page_faults", "ns/fault", false),
    ("fio_direct", "IOPS", true),
    ("iperf3_loopback", "bits/s", true),
];

fn perf_usecs_per_op(args: &[&str]) -> Result<f64> {
    let out = output(Command::new("perf").args(args))?;
    out.lines()
        .find_map(|l| l.trim().strip_suffix("usecs/op")?.trim().parse().ok())
        .with_context(|| format!("perf {args:?} printed no usecs/op:\n{out}"))
}

/// CPU time of every thread of `pid`, ns (from schedstat: exact, not clock ticks).
fn cpu_ns(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn memory_kb(pid: u32) -> (u64, u64) {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// Bytes the kernel charges for Cleanroom's maps (by name; one agent runs at a time here).
fn map_bytes() -> u64 {
    const OURS: &[&str] = &[
        "CGROUP_STATS",
        "BLOCK_STATS",
        "HISTOGRAMS",
        "ZERO_HISTOGRAM",
        "CGROUP_TREE",
        "DROPS",
        "BIO_OWNER",
        "RQ_START",
        "RUNQ_START",
        "CONNECT_START",
    ];
    let Ok(text) = output(Command::new("bpftool").args(["map", "show", "-j"])) else {
        return 0;
    };
    let maps: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    maps.as_array()
        .into_iter()
        .flatten()
        .filter(|m| {
            m["name"]
                .as_str()
                .is_some_and(|n| OURS.iter().any(|o| o.starts_with(n) && n.len() >= 5))
        })
        .filter_map(|m| m["bytes_memlock"].as_u64())
        .sum()
}

fn machine() -> Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let mem_kb = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    json!({
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpu": model,
        "cpus": thread::available_parallelism().map_or(1, usize::from),
        "memory_gib": mem_kb as f64 / 1_048_576.0,
        "bpftrace": output(Command::new("bpftrace").arg("--version")).unwrap_or_default().trim(),
    })
}

/// Each hook's goals: within 2x of the empty program (3x for the block hooks, which find the
/// owner of a request), and below the bpftrace peer. Hooks seen fewer than 100 times are left
/// out: their cost is noise.
fn per_event_goals(per_event: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for h in per_event.as_array().into_iter().flatten() {
        let hook = h["hook"].as_str().unwrap_or("?");
        if h["events"].as_u64().unwrap_or(0) < 100 {
            continue;
        }
        let most = if hook.contains("block_") { 3.0 } else { 2.0 };
        if let Some(r) = h["vs_floor"].as_f64() {
            out.push(json!({"goal": format!("{hook}: within {most}x of the empty program"), "met": r <= most, "value": r}));
        }
        if let Some(r) = h["vs_bpftrace"].as_f64() {
            out.push(json!({"goal": format!("{hook}: below the bpftrace peer"), "met": r < 1.0, "value": r}));
        }
    }
    out
}

fn goals(per_event: &Value, slowdown: &Value, agent: &Value, agent_sidecar: &Value) -> Value {
    let mut out = per_event_goals(per_event);
    for w in slowdown.as_array().into_iter().flatten() {
        let name = w["workload"].as_str().unwrap_or("?");
        let s = w["cleanroom_slowdown_pct"].as_f64().unwrap_or(f64::NAN);
        let limit = if name == "syscall_basic" { 0.5 } else { 2.0 };
        out.push(json!({"goal": format!("{name}: slowdown under {limit}%"), "met": s < limit, "value": s}));
    }
    for a in agent.as_array().into_iter().flatten() {
        if a["interval"] == "1s" && a["cgroups"] == 500 {
            let cpu = a["cpu_percent_of_one_core"].as_f64().unwrap_or(f64::NAN);
            let rss_mb = a["rss_kb"].as_f64().unwrap_or(f64::NAN) / 1024.0;
            out.push(json!({"goal": "agent under 0.5% of one core at 1 s over 500 cgroups", "met": cpu < 0.5, "value": cpu}));
            out.push(json!({"goal": "agent under 25 MB RSS at 1 s over 500 cgroups", "met": rss_mb < 25.0, "value": rss_mb}));
        }
    }
    for a in agent_sidecar.as_array().into_iter().flatten() {
        if a["cgroups"] == 500 {
            let cpu = a["cpu_percent_of_one_core"].as_f64().unwrap_or(f64::NAN);
            let rss_mib = a["rss_kb"].as_f64().unwrap_or(f64::NAN) / 1024.0;
            let scrape = a["scrape_ms"]["max"].as_f64().unwrap_or(f64::NAN);
            let first = a["first_sample_ms"]["max"].as_f64().unwrap_or(f64::NAN);
            out.push(json!({"goal": "cleanroom agent under 0.5% of one core at 1 s over 500 cgroups", "met": cpu < 0.5, "value": cpu}));
            out.push(json!({"goal": "cleanroom agent under 30 MiB RSS over 500 cgroups", "met": rss_mib < 30.0, "value": rss_mib}));
            out.push(json!({"goal": "every /metrics scrape (of 20) under 50 ms at 500 cgroups", "met": scrape < 50.0, "value": scrape}));
            out.push(json!({"goal": "a new cgroup sampled within one interval (1 s, ms, max of 5)", "met": first <= 1000.0, "value": first}));
        }
    }
    Value::Array(out)
}

/// Writes a section's (or the whole run's) results as pretty JSON.
fn write_results(path: &Path, results: &Value) -> Result<()> {
    fs::write(path, serde_json::to_string_pretty(results)? + "\n")?;
    Ok(())
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

fn print_tables(r: &Value) {
    print_per_event(r);
    print_slowdown_and_agent(r);
}

fn print_per_event(r: &Value) {
    println!(
        "\nPer-event cost (ns/event, BPF stats on; bpftrace on the classic tracepoint of the same name)"
    );
    println!(
        "{:<26} {:>10} {:>10} {:>10} {:>10} {:>9} {:>11}",
        "hook", "events", "cleanroom", "floor", "bpftrace", "vs floor", "vs bpftrace"
    );
    for h in r["per_event"].as_array().into_iter().flatten() {
        println!(
            "{:<26} {:>10} {:>10} {:>10} {:>10} {:>9} {:>11}",
            h["hook"].as_str().unwrap_or("?"),
            h["events"].as_u64().map_or("-".into(), |e| e.to_string()),
            num(&h["cleanroom_ns"], 1),
            num(&h["floor_ns"], 1),
            num(&h["bpftrace_ns"], 1),
            num(&h["vs_floor"], 2),
            num(&h["vs_bpftrace"], 2)
        );
    }
}

fn print_slowdown_and_agent(r: &Value) {
    println!(
        "\nWorkload slowdown (median of {} alternated repetitions; min..max)",
        r["repetitions"]
    );
    println!(
        "{:<16} {:>9} {:>26} {:>26} {:>26} {:>10} {:>10}",
        "workload", "unit", "none", "cleanroom", "bpftrace", "cleanroom", "bpftrace"
    );
    for w in r["slowdown"].as_array().into_iter().flatten() {
        let cell = |m: &Value| {
            format!(
                "{} ({}..{})",
                num(&m["median"], 3),
                num(&m["min"], 3),
                num(&m["max"], 3)
            )
        };
        println!(
            "{:<16} {:>9} {:>26} {:>26} {:>26} {:>9}% {:>9}%",
            w["workload"].as_str().unwrap_or("?"),
            w["unit"].as_str().unwrap_or(""),
            cell(&w["none"]),
            cell(&w["cleanroom"]),
            cell(&w["bpftrace"]),
            num(&w["cleanroom_slowdown_pct"], 2),
            num(&w["bpftrace_slowdown_pct"], 2)
        );
    }
    println!("\nThe agent itself (cleanroom run polling its cgroups)");
    println!(
        "{:<9} {:>8} {:>12} {:>9} {:>9} {:>11} {:>14} {:>12}",
        "interval",
        "cgroups",
        "CPU % core",
        "RSS kB",
        "PSS kB",
        "startup ms",
        "first sample",
        "map bytes"
    );
    for a in r["agent"].as_array().into_iter().flatten() {
        println!(
            "{:<9} {:>8} {:>12} {:>9} {:>9} {:>11} {:>14} {:>12}",
            a["interval"].as_str().unwrap_or("?"),
            a["cgroups"],
            num(&a["cpu_percent_of_one_core"], 3),
            a["rss_kb"],
            a["pss_kb"],
            num(&a["startup_ms"], 1),
            num(&a["first_sample_ms"], 1),
            a["bpf_map_bytes"]
        );
    }
    print_agent_sidecar(r);
    print_goals(r);
}

fn print_agent_sidecar(r: &Value) {
    println!(
        "\nThe agent as a sidecar (cleanroom agent at 1 s, a sleeping process per cgroup; ms)"
    );
    println!(
        "{:<8} {:>10} {:>9} {:>9} {:>10} {:>9} {:>17} {:>11} {:>11} {:>15} {:>15}",
        "cgroups",
        "CPU % core",
        "RSS kB",
        "PSS kB",
        "RSS +kB/s",
        "all seen",
        "/metrics med/max",
        "own scrape",
        "own sample",
        "listed med/max",
        "sample med/max"
    );
    for a in r["agent_sidecar"].as_array().into_iter().flatten() {
        let pair = |s: &Value| format!("{}/{}", num(&s["median"], 1), num(&s["max"], 1));
        println!(
            "{:<8} {:>10} {:>9} {:>9} {:>10} {:>9} {:>17} {:>11} {:>11} {:>15} {:>15}",
            a["cgroups"],
            num(&a["cpu_percent_of_one_core"], 3),
            a["rss_kb"],
            a["pss_kb"],
            num(&a["rss_growth_kb_per_s"], 0),
            num(&a["all_watched_ms"], 0),
            pair(&a["scrape_ms"]),
            num(&a["own_scrape_ms"], 2),
            num(&a["own_sample_ms"], 2),
            pair(&a["picked_up_ms"]),
            pair(&a["first_sample_ms"])
        );
    }
}

fn print_goals(r: &Value) {
    println!("\nGoals (reported, not asserted)");
    for g in r["goals"].as_array().into_iter().flatten() {
        println!(
            "  [{}] {} ({})",
            if g["met"] == true { "met " } else { "MISS" },
            g["goal"].as_str().unwrap_or("?"),
            num(&g["value"], 3)
        );
    }
}
