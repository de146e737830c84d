//! `cleanroom run`: one command, measured in a cgroup of its own.
//!
//! Order matters: probes are attached before the cgroup exists, the child joins the cgroup
//! before `exec`, and at the end everything left in the cgroup is killed before the counters are
//! read, so the totals hold every process the command started, short-lived ones too. The cgroup
//! is removed on every path out (a [`RunCgroup`] removes itself on drop).

mod signals;
mod spawn;
mod status;

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fs::File,
    os::unix::{ffi::OsStrExt as _, process::ExitStatusExt as _},
    path::PathBuf,
    process::ExitStatus,
    time::{Duration, SystemTime},
};

use self::{signals::Signals, spawn::spawn_in_cgroup, status::Console};
use crate::{
    Error, analyze,
    cgroup::{CgroupError, Hierarchy, RunCgroup, check_parent},
    collect,
    config::CleanroomConfig,
    escape::EscapeWatch,
    host, limits,
    probe::Probes,
    report::{self, CgroupRef, Interruption, Leftover, Report, SCHEMA_VERSION},
    session::{End, Session, SessionOptions},
    verdict::{Event, EventKind, Status, ThresholdResult, Verdict},
    watchdog::Watchdog,
};

/// What to run and where results go.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The command and its arguments.
    pub command: Vec<OsString>,
    /// Directory under which the run cgroup is made; default `<v2 mount>/cleanroom`.
    pub cgroup_parent: Option<PathBuf>,
    /// Print the summary table on stderr at the end (and a live status line on a terminal).
    pub print_summary: bool,
    /// What to monitor, judge and enforce.
    pub config: CleanroomConfig,
    /// The run's name, for history and trends.
    pub name: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// How the report names the command, when not by its arguments.
    pub label: Option<Vec<String>>,
}

/// Refuses early, with the missing capabilities named, when this process cannot measure.
pub fn require_privileges(what: &'static str) -> Result<(), Error> {
    let missing = host::missing_caps();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::NotPrivileged { what, missing })
    }
}

/// Finds `program` the way `execvp` would: as a path if it has a slash, else in `PATH`.
pub fn resolve_program(program: &OsString) -> Result<PathBuf, Error> {
    let not_found = || Error::CommandNotFound(program.to_string_lossy().into_owned());
    if program.as_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(not_found())
        };
    }
    which::which(program).map_err(|_| not_found())
}

/// Removes the run cgroups of Cleanroom processes that died without cleaning up (killed with
/// SIGKILL before their watchdog could act, or with it), saying so.
fn remove_stale_runs(parent: &std::path::Path, hierarchy: &Hierarchy) {
    let stale = crate::cgroup::stale_runs(parent, hierarchy);
    let removed: Vec<String> = stale
        .iter()
        .filter(|d| crate::cgroup::kill_and_remove(d, Duration::from_secs(5)).is_ok())
        .map(|d| d.display().to_string())
        .collect();
    if !removed.is_empty() {
        log::warn!(
            "removed {} run cgroup(s) left by cleanroom processes that are gone: {}",
            removed.len(),
            removed.join(", ")
        );
    }
}

/// Runs the command, measured, and returns its report. The report is written (when asked)
/// before this returns, also when the command fails or is interrupted.
pub async fn run(opts: &RunOptions) -> Result<Report, Error> {
    // First of all: from here on a signal is noted, never the end of this process while
    // something it made is still in place.
    let mut signals = Signals::new().map_err(Error::Wait)?;
    require_privileges("cleanroom run")?;
    let program = opts
        .command
        .first()
        .ok_or_else(|| Error::CommandNotFound(String::new()))?;
    resolve_program(program)?;
    let config = &opts.config;
    let pm = &config.performance_monitoring;
    let rl = &config.resource_limits;

    let hierarchy = Hierarchy::detect()?;
    let parent = match &opts.cgroup_parent {
        Some(requested) => check_parent(requested, &hierarchy)?,
        None => hierarchy.v2_mount.join("cleanroom"),
    };
    remove_stale_runs(&parent, &hierarchy);
    let v2_root = File::open(&hierarchy.v2_mount).map_err(|source| CgroupError::Io {
        action: "opening",
        path: hierarchy.v2_mount.clone(),
        source,
    })?;
    let mut probes = Probes::load(Some(&v2_root))?;
    let run_id = format!(
        "run-{}-{}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
        std::process::id()
    );
    let mut cgroup = RunCgroup::create(
        &parent,
        &run_id,
        &hierarchy,
        &limits::v1_controllers_needed(rl),
    )?;
    match Watchdog::start(&cgroup.dirs()) {
        Ok(w) => cgroup.guard(w),
        Err(e) => log::warn!(
            "cannot start the watchdog that removes the run's cgroups if cleanroom is killed \
             ({e}); the next run removes them instead"
        ),
    }
    let limit_lines = limits::apply(&cgroup, rl)?;
    // Before the command starts: it joins the cgroup between fork and exec.
    let escape_watch = EscapeWatch::start(&mut probes, cgroup.id());

    let (specs, not_applicable) = analyze::threshold_specs(config);
    if let Some((name, number)) = signals.pending().await {
        // Set-up took a moment (loading the probes); the command has not started yet.
        log::warn!("{name} before the command started: nothing was run");
        return Err(Error::Interrupted { signal: number });
    }
    let mut console = Console::new(opts.print_summary);
    let sampling = pm.enable_monitoring && rl.enable_resource_monitoring;
    let mut session = Session::start(
        cgroup.target(),
        specs,
        SessionOptions {
            sampling,
            memory: pm.enable_memory_tracking,
            interval: pm.metrics_interval,
            memory_limit: rl.max_memory_usage_bytes,
        },
    );
    // The command's process starts as a copy of this one, and the kernel's peak RSS of a
    // process (process_peak_rss_bytes, ru_maxrss) counts what it held before its exec: give
    // back the heap freed since start-up (parsing the kernel's BTF) first.
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe { libc::malloc_trim(0) };
    let mut child = spawn_in_cgroup(&opts.command, &cgroup.procs_files())?;
    let pid = child.id().map(|p| p as i32);
    for line in &limit_lines {
        session.record(Event {
            t_ns: 0,
            kind: EventKind::Limit,
            subject: line.split(':').next().unwrap_or_default().to_owned(),
            value: None,
            limit: None,
            message: line.clone(),
        });
    }
    if sampling {
        console.tick(&session.tick(&probes)?);
    }
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + pm.metrics_interval,
        pm.metrics_interval,
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let far = Duration::from_secs(86_400 * 365);
    let timeout = tokio::time::sleep(rl.max_test_execution_time.unwrap_or(far));
    tokio::pin!(timeout);
    let mut timed_out = false;
    let kill_at = tokio::time::sleep(far);
    tokio::pin!(kill_at);

    let mut interrupted: Option<&'static str> = None;
    let status: ExitStatus = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(Error::Wait)?,
            sig = signals.next() => {
                let (name, number) = sig;
                if interrupted.is_some() {
                    // A second signal: stop waiting for the command to wind down.
                    log::warn!("{name} again: killing every process of the run");
                    let _ = cgroup.kill_all(Duration::from_secs(5));
                } else if pid.is_some() {
                    if !signals.delivered_by_terminal(number) {
                        // As a shell does to its foreground job: every process of the command's
                        // process group (a wrapper like GNU time ignores SIGINT; its child must
                        // still get it), within the run.
                        cgroup.signal_group(nix::unistd::getpgrp().as_raw(), number);
                    }
                    console.clear_line();
                    log::warn!("{name}: passed to the command; waiting for it to exit (again to kill)");
                }
                interrupted.get_or_insert(name);
            }
            _ = ticker.tick(), if sampling => console.tick(&session.tick(&probes)?),
            () = &mut timeout, if !timed_out && rl.max_test_execution_time.is_some() => {
                timed_out = true;
                let limit = rl.max_test_execution_time.unwrap_or_default();
                let signalled = cgroup.signal_all(libc::SIGTERM);
                let t_ns = session.elapsed_ns();
                let event = Event {
                    t_ns,
                    kind: EventKind::Timeout,
                    subject: "resource_limits.max_test_execution_time".into(),
                    value: Some(t_ns as f64),
                    limit: Some(limit.as_nanos() as f64),
                    message: format!(
                        "the run exceeded resource_limits.max_test_execution_time ({}): sent SIGTERM \
                         to {signalled} processes, SIGKILL follows in {}",
                        humantime::format_duration(limit),
                        humantime::format_duration(rl.resource_cleanup_timeout)
                    ),
                };
                console.event(&event);
                session.record(event);
                kill_at.as_mut().reset(tokio::time::Instant::now() + rl.resource_cleanup_timeout);
            }
            () = &mut kill_at, if timed_out => {
                let event = Event {
                    t_ns: session.elapsed_ns(),
                    kind: EventKind::TimeoutKill,
                    subject: "resource_limits.resource_cleanup_timeout".into(),
                    value: None,
                    limit: None,
                    message: "the run did not stop after SIGTERM: killing every process".into(),
                };
                console.event(&event);
                session.record(event);
                let _ = cgroup.kill_all(Duration::from_secs(5));
                kill_at.as_mut().reset(tokio::time::Instant::now() + far);
            }
        }
    };
    let wall_time_ns = session.elapsed_ns();
    if sampling {
        console.tick(&session.last_tick(&probes)?);
    }
    console.clear_line();

    // Whatever the command left behind ends now, so that its CPU time is charged before the
    // counters are read. Named first: a daemon left running is worth knowing about.
    let left_behind: Vec<Leftover> = cgroup
        .processes()
        .into_iter()
        .map(|(pid, command)| Leftover { pid, command })
        .collect();
    let killed = cgroup.kill_all(Duration::from_secs(10))?;
    let leftovers = killed.max(left_behind.len());
    if leftovers > 0 {
        log::info!("killed {leftovers} processes the command left in its cgroup");
    }
    // A task that just exited may still be finishing its last scheduler tick on another CPU.
    tokio::time::sleep(Duration::from_millis(20)).await;

    let figures = session.finish(
        &mut probes,
        End {
            wall_time_ns,
            max_rss_bytes: children_max_rss(),
        },
    )?;
    for event in figures.raised_at_end() {
        console.event(event);
    }
    let (escaped, escape_notes) =
        escape_watch.finish(&mut probes, &hierarchy.v2_mount, &figures.drops);
    let cgroup_ref = CgroupRef {
        path: cgroup.path().display().to_string(),
        id: cgroup.id(),
    };
    cgroup.remove()?;

    let mut notes = limit_lines;
    if !left_behind.is_empty() {
        notes.push(format!(
            "{} process(es) the command left running were killed at the end: {}",
            left_behind.len(),
            left_behind
                .iter()
                .take(10)
                .map(|l| format!("{} `{}`", l.pid, l.command))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let memory = figures.memory;
    if memory.is_none() {
        notes.push(
            "no cgroup accounts memory for this run (no memory controller): memory_peak_bytes is \
             the largest peak RSS of a single process (getrusage), memory_current_bytes is unavailable"
                .to_owned(),
        );
    }
    if memory.is_some_and(|m| m.peak_bytes.is_none()) {
        notes.push(
            "memory_peak_bytes is unavailable: this kernel keeps no memory.peak for a cgroup \
             (cgroup v2 before Linux 5.19); process_peak_rss_bytes (the largest process's peak) \
             and memory_current_bytes (sampled, in the series) are measured"
                .to_owned(),
        );
    }
    if memory.is_some() && figures.anon_peak_bytes.is_none() {
        notes.push(format!(
            "memory_anon_peak_bytes is unavailable: anonymous memory is sampled every \
             performance_monitoring.metrics_interval ({}), and {}",
            humantime::format_duration(pm.metrics_interval),
            if sampling && pm.enable_memory_tracking {
                "the run was shorter than that"
            } else {
                "sampling or memory tracking is off"
            }
        ));
    }
    if pm.enable_profiling {
        notes.push(
            "performance_monitoring.enable_profiling is set, but CPU profiling is not implemented \
             in this version: no profile was taken"
                .to_owned(),
        );
    }
    notes.extend(collect::write_note(&figures.totals, figures.writeback));
    notes.extend(collect::fault_note(&figures.totals, &figures.kernel));
    notes.extend(escape_notes);
    let mut report = Report {
        schema_version: SCHEMA_VERSION,
        command: opts.label.clone().unwrap_or_else(|| {
            opts.command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        }),
        exit_code: exit_code(status),
        started_at: humantime::format_rfc3339_seconds(figures.started_at).to_string(),
        wall_time_ns,
        cgroup: cgroup_ref,
        totals: figures.totals,
        block_devices: figures.block_devices,
        kernel: figures.kernel,
        unavailable: figures.unavailable,
        dropped: figures
            .drops
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<BTreeMap<_, _>>(),
        notes,
        interrupted: interrupted.map(|signal| Interruption {
            signal: signal.to_owned(),
            killed_leftovers: leftovers,
        }),
        leftovers: left_behind,
        comparison: None,
        escaped,
        aggregates: figures.aggregates,
        anomalies: figures.anomalies,
        anomalies_found: figures.anomalies_found,
        anomaly_method: analyze::ANOMALY_METHOD.to_owned(),
        series_resolution: figures.series_resolution,
        series: figures.series,
        slos: Vec::new(),
        thresholds: figures.thresholds,
        events: figures.events,
        insights: Vec::new(),
        verdict: Verdict::default(),
        name: opts.name.clone(),
        tags: opts.tags.clone(),
        host: {
            let (git_commit, git_branch) = host::git_revision();
            report::HostInfo {
                hostname: host::hostname(),
                kernel: host::kernel_release(),
                cpus: host::cpus(),
                git_commit,
                git_branch,
            }
        },
    };
    report
        .thresholds
        .extend(not_applicable.into_iter().map(|name| ThresholdResult {
            name,
            metric: "container_startup_time".into(),
            limit: 0.0,
            limit_text: "-".into(),
            peak: None,
            peak_text: "n/a (no containers)".into(),
            breaches: 0,
            status: Status::NotApplicable,
        }));
    report.slos = analyze::judge_slos(config, &report);
    report.insights = analyze::insights(&report, host::cpus());
    report.verdict = if report.slos.is_empty() && report.thresholds.is_empty() {
        Verdict::None
    } else if analyze::all_pass(&report.slos, &report.thresholds) {
        Verdict::Pass
    } else {
        Verdict::Fail
    };

    Ok(report)
}

/// The exit code a shell would show: the code, or 128 + the signal that killed it.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Peak RSS of the largest waited-for child process, in bytes (getrusage).
fn children_max_rss() -> Option<u64> {
    // SAFETY: an all-zero rusage is a valid value for getrusage to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid and writable.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    (rc == 0 && ru.ru_maxrss > 0).then(|| ru.ru_maxrss as u64 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 128 + 9);
    }

    #[test]
    fn unknown_programs_are_not_found() {
        assert!(matches!(
            resolve_program(&"no-such-program-cleanroom".into()),
            Err(Error::CommandNotFound(_))
        ));
        assert!(matches!(
            resolve_program(&"./no/such/file".into()),
            Err(Error::CommandNotFound(_))
        ));
        assert!(resolve_program(&"sh".into()).is_ok());
    }
}
