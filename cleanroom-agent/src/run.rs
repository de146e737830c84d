//! `cleanroom run`: one command, measured in a cgroup of its own.
//!
//! Order matters: probes are attached before the cgroup exists, the child joins the cgroup
//! before `exec`, and at the end everything left in the cgroup is killed before the counters are
//! read, so the totals hold every process the command started, short-lived ones too. The cgroup
//! is removed on every path out (a [`RunCgroup`] removes itself on drop).
//!
//! [`run`] is the composition of these steps, in this order: `prepare` (privileges, the
//! program, the hierarchy, stale runs, the probes, then the cgroup, its watchdog, limits and
//! escape watch), `launch` (a [`Session`] over the cgroup, then the command in it),
//! `supervise` (signals, ticks, the time limit, until the command exits), `wind_down`
//! (leftovers named and killed), [`Session::finish`] (the figures), `assemble` (the report
//! and its notes) and `judge` (thresholds, SLOs, insights, the verdict). The measuring is the
//! session's; this module only knows the command, its signals and its terminal.

pub mod marks;
mod remote;
mod signals;
mod spawn;
mod status;

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fs::File,
    os::unix::{ffi::OsStrExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, SystemTime},
};

use tokio::process::Child;

use self::{
    marks::{MarkListener, MarkRequest},
    signals::Signals,
    spawn::spawn_in_cgroup,
    status::Console,
};
use crate::{
    Error,
    cgroupfs::cgroup::{CgroupError, Hierarchy, RunCgroup, check_parent},
    cgroupfs::limits,
    cgroupfs::watchdog::Watchdog,
    config::{CleanroomConfig, ResourceLimits},
    host,
    judge::analyze,
    judge::verdict::{Event, EventKind},
    kernel::probe::{Probes, SamplingRates},
    measure::collect,
    measure::session::{End, Figures, Session, SessionOptions},
    measure::{
        connections::{self, Connection},
        containers::{ContainerRecord, ContainerWatch, Notice},
        escape::{EscapeWatch, EscapedProcess},
        processes::{self, ProcessRecord, ProcessWatch},
    },
    metric::Metric,
    output::report::{self, CgroupRef, Interruption, Leftover, Report},
    profile::Sampler,
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
    /// Whether and which Docker containers are followed.
    pub containers: FollowContainers,
    /// Where the run's alerts go, as they are raised (`[alerts]`).
    pub alerts: Option<crate::alerts::Alerting>,
}

/// When Docker containers the command starts are followed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Follow {
    /// When the engine's socket exists (the default).
    #[default]
    IfEngine,
    /// Always: no engine is an error.
    Always,
    /// Never.
    Never,
}

/// Which Docker containers the command starts are followed.
#[derive(Clone, Debug, Default)]
pub struct FollowContainers {
    /// When.
    pub when: Follow,
    /// Only those with every one of these labels (`key` or `key=value`).
    pub labels: Vec<String>,
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
pub(crate) fn remove_stale_runs(parent: &std::path::Path, hierarchy: &Hierarchy) {
    let stale = crate::cgroupfs::cgroup::stale_runs(parent, hierarchy);
    let removed: Vec<String> = stale
        .iter()
        .filter(|d| crate::cgroupfs::cgroup::kill_and_remove(d, Duration::from_secs(5)).is_ok())
        .map(|d| d.display().to_string())
        .collect();
    if !removed.is_empty() {
        log::warn!(
            "removed {} run cgroup(s) left by cleanroom processes that are gone: {}",
            removed.len(),
            removed.join(", ")
        );
    }
    marks::remove_stale_sockets(Path::new(marks::SOCKET_DIR));
}

/// Runs the command, measured, and returns its report. The report is written (when asked)
/// before this returns, also when the command fails or is interrupted.
pub async fn run(opts: &RunOptions) -> Result<Report, Error> {
    // First of all: from here on a signal is noted, never the end of this process while
    // something it made is still in place.
    let mut signals = Signals::new().map_err(Error::Wait)?;
    let missing = host::missing_caps();
    if !missing.is_empty() {
        return remote::run(opts, &mut signals, missing).await;
    }
    let config = &opts.config;
    let mut prepared = prepare(opts)?;
    let (specs, not_applicable) = analyze::threshold_specs(config);
    refuse_if_signalled(&mut signals).await?;
    let mut console = Console::new(opts.print_summary);
    if let Some(alerts) = &opts.alerts {
        console.alert(alerts.clone(), alert_target(opts));
    }
    let options = session_options(config);
    let (mut session, child) = launch(&opts.command, &prepared, specs, options)?;
    let ended = supervise(
        child,
        &mut signals,
        &mut prepared,
        &mut session,
        &mut console,
        &config.resource_limits,
    )
    .await?;
    let wound_down = wind_down(&prepared.cgroup).await?;
    let (figures, outcome) = conclude(prepared, session, &mut console, ended, wound_down)?;
    Ok(analyze::judge(
        config,
        assemble(opts, outcome, figures),
        not_applicable,
    ))
}

/// What the run's alerts name it: its name, else its command line.
pub fn alert_target(opts: &RunOptions) -> String {
    opts.name.clone().unwrap_or_else(|| {
        let line: Vec<String> = opts.label.clone().unwrap_or_else(|| {
            opts.command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        });
        let line = line.join(" ");
        match line.char_indices().nth(80) {
            Some((cut, _)) => format!("{}…", &line[..cut]),
            None => line,
        }
    })
}

/// What `prepare` puts in place before the command starts. Dropped on a way out with an error,
/// the cgroup is removed first, then the probes are detached.
struct Prepared {
    /// Where the v2 hierarchy is mounted.
    v2_mount: PathBuf,
    /// The run's own cgroup, limited and guarded.
    cgroup: RunCgroup,
    /// Attached before the cgroup exists, so the kernel's record of made cgroups has it.
    probes: Probes,
    /// The limits applied, as the report's notes and events say them.
    limit_lines: Vec<String>,
    /// Watching the cgroup for processes that leave it.
    escape_watch: EscapeWatch,
    /// Collecting each process's record as it ends.
    process_watch: ProcessWatch,
    /// Following the Docker containers the command starts, when the engine is there.
    containers: Option<ContainerWatch>,
    /// Why containers are not followed, when they could have been.
    container_notes: Vec<String>,
    /// Taking the run's stack samples, when profiling.
    sampler: Option<Sampler>,
    /// Why no profile is taken, when one was asked for.
    profile_notes: Vec<String>,
    /// Where `cleanroom mark` reaches the run, when it can.
    marks: Option<MarkListener>,
}

/// Checks that the run can be made and sets it up: privileges, the program, the hierarchy and
/// parent, stale runs removed, the probes attached, then the cgroup with its watchdog, limits
/// and escape watch. Nothing is running yet.
fn prepare(opts: &RunOptions) -> Result<Prepared, Error> {
    require_privileges("cleanroom run")?;
    let program = opts
        .command
        .first()
        .ok_or_else(|| Error::CommandNotFound(String::new()))?;
    resolve_program(program)?;
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
    let resource_limits = &opts.config.resource_limits;
    let cgroup = make_cgroup(
        &parent,
        &run_name(std::process::id(), None),
        &hierarchy,
        resource_limits,
    )?;
    let limit_lines = limits::apply(&cgroup, resource_limits)?;
    // Before the command starts: it joins the cgroup between fork and exec.
    let escape_watch = EscapeWatch::start(&mut probes, cgroup.id());
    let process_watch = ProcessWatch::start(cgroup.id());
    let (containers, container_notes) = follow_containers(&opts.containers, &hierarchy.v2_mount)?;
    let (sampler, profile_notes) = start_profiling(&mut probes, &opts.config, cgroup.id());
    let marks = MarkListener::bind(cgroup.id())
        .inspect_err(|e| {
            log::warn!(
                "cannot listen at {}: `cleanroom mark` will not reach this run ({e})",
                marks::SOCKET_DIR
            )
        })
        .ok();
    Ok(Prepared {
        v2_mount: hierarchy.v2_mount,
        cgroup,
        probes,
        limit_lines,
        escape_watch,
        process_watch,
        containers,
        container_notes,
        sampler,
        profile_notes,
        marks,
    })
}

/// Starts sampling the run's stacks when the configuration asks for a profile; a host that
/// cannot is a note, not a failed run.
fn start_profiling(
    probes: &mut Probes,
    config: &CleanroomConfig,
    run_id: u64,
) -> (Option<Sampler>, Vec<String>) {
    let pm = &config.performance_monitoring;
    if !pm.enable_profiling {
        return (None, Vec::new());
    }
    let (sampler, mut notes) = Sampler::attach(probes, SamplingRates::of(pm));
    if sampler.is_some()
        && let Err(e) = probes.profile_cgroups(run_id, &[run_id])
    {
        notes.push(format!("no profile was taken: {e}"));
        return (None, notes);
    }
    (sampler, notes)
}

/// Starts following the engine's containers as `how` asks: none when it says never, or when
/// the engine's socket is missing and it was not asked for (an engine that fails then is a
/// note); an error when it was asked for and cannot be followed.
fn follow_containers(
    how: &FollowContainers,
    v2_mount: &Path,
) -> Result<(Option<ContainerWatch>, Vec<String>), Error> {
    let socket = crate::docker::socket_path();
    match how.when {
        Follow::Never => Ok((None, Vec::new())),
        Follow::IfEngine if !socket.exists() => Ok((None, Vec::new())),
        Follow::IfEngine => match ContainerWatch::start(&socket, &how.labels, v2_mount) {
            Ok(watch) => Ok((Some(watch), Vec::new())),
            Err(e) => Ok((
                None,
                vec![format!(
                    "Docker containers are not followed: {e} (--no-follow-containers says \
                     not to try)"
                )],
            )),
        },
        Follow::Always => Ok((
            Some(ContainerWatch::start(&socket, &how.labels, v2_mount)?),
            Vec::new(),
        )),
    }
}

/// The next notice of the containers followed; never, when none are.
async fn next_notice(containers: &mut Option<ContainerWatch>) -> Notice {
    match containers {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}

/// The next phase mark asked for; never, when the run cannot be reached.
async fn next_mark(marks: &mut Option<MarkListener>) -> MarkRequest {
    match marks {
        Some(listener) => listener.next().await,
        None => std::future::pending().await,
    }
}

/// A run cgroup's name: `run-<secs>-<pid>` after the time and the process that owns it, and
/// `.<suffix>` when one process makes several (the agent, for its clients).
pub(crate) fn run_name(owner: u32, suffix: Option<&str>) -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    match suffix {
        Some(suffix) => format!("run-{secs}-{owner}.{suffix}"),
        None => format!("run-{secs}-{owner}"),
    }
}

/// Makes the run's cgroup `parent/name` with the v1 twins its limits need, and hands it to a
/// watchdog that removes it if Cleanroom is killed.
pub(crate) fn make_cgroup(
    parent: &Path,
    name: &str,
    hierarchy: &Hierarchy,
    resource_limits: &ResourceLimits,
) -> Result<RunCgroup, Error> {
    let mut cgroup = RunCgroup::create(
        parent,
        name,
        hierarchy,
        &limits::v1_controllers_needed(resource_limits),
    )?;
    match Watchdog::start(&cgroup.dirs()) {
        Ok(w) => cgroup.guard(w),
        Err(e) => log::warn!(
            "cannot start the watchdog that removes the run's cgroups if cleanroom is killed \
             ({e}); the next run removes them instead"
        ),
    }
    Ok(cgroup)
}

/// Refuses to start the command when a signal came during set-up (loading the probes takes a
/// moment): nothing was run.
async fn refuse_if_signalled(signals: &mut Signals) -> Result<(), Error> {
    match signals.pending().await {
        Some((name, number)) => {
            log::warn!("{name} before the command started: nothing was run");
            Err(Error::Interrupted { signal: number })
        }
        None => Ok(()),
    }
}

/// How the run's session measures, from the config.
pub(crate) fn session_options(config: &CleanroomConfig) -> SessionOptions {
    let pm = &config.performance_monitoring;
    let rl = &config.resource_limits;
    SessionOptions {
        sampling: pm.enable_monitoring && rl.enable_resource_monitoring,
        memory: pm.enable_memory_tracking,
        interval: pm.metrics_interval,
        memory_limit: rl.max_memory_usage_bytes,
        live_io: true,
        max_points: crate::measure::model::MAX_SERIES_POINTS,
    }
}

/// Starts measuring the run cgroup, then the command in it; the limits applied are the
/// session's first events.
fn launch(
    command: &[OsString],
    prepared: &Prepared,
    specs: Vec<analyze::ThresholdSpec>,
    options: SessionOptions,
) -> Result<(Session, Child), Error> {
    let cgroup = &prepared.cgroup;
    let mut session = Session::start(cgroup.target(), specs, options);
    // The command's process starts as a copy of this one, and the kernel's peak RSS of a
    // process (process_peak_rss_bytes, ru_maxrss) counts what it held before its exec: give
    // back the heap freed since start-up (parsing the kernel's BTF) first.
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe { libc::malloc_trim(0) };
    let mark_socket = prepared.marks.as_ref().map(MarkListener::path);
    let child = spawn_in_cgroup(command, &cgroup.procs_files(), mark_socket)?;
    record_limits(&mut session, &prepared.limit_lines);
    Ok((session, child))
}

/// Records the limits applied as the session's first events.
pub(crate) fn record_limits(session: &mut Session, limit_lines: &[String]) {
    for line in limit_lines {
        session.record(Event {
            t_ns: 0,
            kind: EventKind::Limit,
            subject: line.split(':').next().unwrap_or_default().to_owned(),
            value: None,
            limit: None,
            message: line.clone(),
        });
    }
}

/// How the command's supervision ended.
pub(crate) struct Ended {
    /// The command's exit status.
    pub status: ExitStatus,
    /// The first signal Cleanroom received while the command ran.
    pub interrupted: Option<String>,
    /// From the session's start to the command's exit.
    pub wall_time_ns: u64,
}

/// Waits for the command to exit: ticks the session every interval, passes signals on and
/// enforces the time limit (SIGTERM, then SIGKILL after the clean-up time); then takes the
/// last, partial interval.
async fn supervise(
    mut child: Child,
    signals: &mut Signals,
    prepared: &mut Prepared,
    session: &mut Session,
    console: &mut Console,
    rl: &ResourceLimits,
) -> Result<Ended, Error> {
    let Prepared {
        cgroup,
        probes,
        process_watch,
        containers,
        marks,
        ..
    } = prepared;
    let cgroup = &*cgroup;
    let container_options = SessionOptions {
        sampling: false,
        memory: false,
        interval: session.interval(),
        memory_limit: None,
        live_io: false,
        max_points: 0,
    };
    let has_pid = child.id().is_some();
    if session.samples() {
        console.tick(&session.tick(probes)?);
    }
    let interval = session.interval();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = tokio::time::sleep(rl.max_test_execution_time.unwrap_or(FAR));
    tokio::pin!(timeout);
    let mut timed_out = false;
    let kill_at = tokio::time::sleep(FAR);
    tokio::pin!(kill_at);
    let mut interrupted: Option<&'static str> = None;
    let status: ExitStatus = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(Error::Wait)?,
            (name, number) = signals.next() => {
                let again = interrupted.is_some();
                pass_on(name, number, again, has_pid, signals, cgroup, console);
                interrupted.get_or_insert(name);
            }
            _ = ticker.tick(), if session.samples() => {
                console.tick(&session.tick(probes)?);
                process_watch.collect(probes)?;
            }
            request = next_mark(marks) => {
                let outcome = session.mark(probes, &request.name).map_err(|e| e.to_string());
                if let Err(e) = &outcome {
                    log::warn!("mark {:?} refused: {e}", request.name);
                }
                request.answer(outcome);
            }
            notice = next_notice(containers) => {
                if let Some(watch) = containers.as_mut()
                    && let Some(event) =
                        watch.handle(notice, probes, cgroup.id(), session, container_options)?
                {
                    console.event(&event);
                    session.record(event);
                }
            }
            () = &mut timeout, if !timed_out && rl.max_test_execution_time.is_some() => {
                timed_out = true;
                let event = time_out(cgroup, session.elapsed_ns(), rl);
                console.event(&event);
                session.record(event);
                kill_at.as_mut().reset(tokio::time::Instant::now() + rl.resource_cleanup_timeout);
            }
            () = &mut kill_at, if timed_out => {
                let event = kill_after_timeout(session.elapsed_ns());
                console.event(&event);
                session.record(event);
                let _ = cgroup.kill_all(Duration::from_secs(5));
                kill_at.as_mut().reset(tokio::time::Instant::now() + FAR);
            }
        }
    };
    let wall_time_ns = session.elapsed_ns();
    if session.samples() {
        console.tick(&session.last_tick(probes)?);
    }
    console.clear_line();
    Ok(Ended {
        status,
        interrupted: interrupted.map(str::to_owned),
        wall_time_ns,
    })
}

/// A deadline that never comes.
const FAR: Duration = Duration::from_secs(86_400 * 365);

/// Passes a signal Cleanroom received on to the command. The first goes, as a shell sends it
/// to its foreground job, to every process of the command's process group within the run (a
/// wrapper like GNU time ignores SIGINT; its child must still get it); a second kills every
/// process of the run.
fn pass_on(
    name: &'static str,
    number: i32,
    again: bool,
    has_pid: bool,
    signals: &Signals,
    cgroup: &RunCgroup,
    console: &mut Console,
) {
    if again {
        // A second signal: stop waiting for the command to wind down.
        log::warn!("{name} again: killing every process of the run");
        let _ = cgroup.kill_all(Duration::from_secs(5));
    } else if has_pid {
        if !signals.delivered_by_terminal(number) {
            cgroup.signal_group(nix::unistd::getpgrp().as_raw(), number);
        }
        console.clear_line();
        log::warn!("{name}: passed to the command; waiting for it to exit (again to kill)");
    }
}

/// The time limit is reached at `t_ns`: SIGTERM to every process of the run, and the event
/// that says so.
pub(crate) fn time_out(cgroup: &RunCgroup, t_ns: u64, rl: &ResourceLimits) -> Event {
    let limit = rl.max_test_execution_time.unwrap_or_default();
    let signalled = cgroup.signal_all(libc::SIGTERM);
    Event {
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
    }
}

/// The event for killing what still runs after the clean-up time, at `t_ns`.
pub(crate) fn kill_after_timeout(t_ns: u64) -> Event {
    Event {
        t_ns,
        kind: EventKind::TimeoutKill,
        subject: "resource_limits.resource_cleanup_timeout".into(),
        value: None,
        limit: None,
        message: "the run did not stop after SIGTERM: killing every process".into(),
    }
}

/// What winding down found.
pub(crate) struct WoundDown {
    /// The processes the command left running, named before they were killed.
    pub left_behind: Vec<Leftover>,
    /// How many processes were killed (at least those named).
    pub killed: usize,
}

/// Ends whatever the command left behind, so that its CPU time is charged before the counters
/// are read. Named first: a daemon left running is worth knowing about.
pub(crate) async fn wind_down(cgroup: &RunCgroup) -> Result<WoundDown, Error> {
    let left_behind: Vec<Leftover> = cgroup
        .processes()
        .into_iter()
        .map(|(pid, command)| Leftover { pid, command })
        .collect();
    let killed = cgroup
        .kill_all(Duration::from_secs(10))?
        .max(left_behind.len());
    if killed > 0 {
        log::info!("killed {killed} processes the command left in its cgroup");
    }
    // A task that just exited may still be finishing its last scheduler tick on another CPU.
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(WoundDown {
        left_behind,
        killed,
    })
}

/// Ends the measuring: the session's figures read (and the events the end raised said), the
/// escape watch ended, the cgroup removed.
fn conclude(
    prepared: Prepared,
    session: Session,
    console: &mut Console,
    ended: Ended,
    wound_down: WoundDown,
) -> Result<(Figures, Outcome), Error> {
    // Bound in this order, dropped in the reverse: on an error the cgroup goes first, as in
    // `Prepared`.
    let Prepared {
        v2_mount,
        mut probes,
        cgroup,
        limit_lines,
        escape_watch,
        process_watch,
        containers,
        container_notes,
        sampler,
        profile_notes,
        marks,
    } = prepared;
    // The command has ended: nothing more can be marked.
    drop(marks);
    let end = End {
        wall_time_ns: ended.wall_time_ns,
        max_rss_bytes: children_max_rss(),
    };
    // Each container's figures before the run's, whose end forgets their map entries.
    let (containers, container_notes) = match containers {
        Some(watch) => {
            let (records, mut notes) = watch.finish(
                &probes,
                &probes.unavailable(),
                &probes.drops()?,
                ended.wall_time_ns,
            )?;
            notes.splice(0..0, container_notes);
            (records, notes)
        }
        None => (Vec::new(), container_notes),
    };
    let figures = session.finish(&mut probes, end)?;
    for event in figures.raised_at_end() {
        console.event(event);
    }
    let lost = figures
        .drops
        .get(crate::kernel::probe::STACK_SAMPLES_LOST)
        .copied()
        .unwrap_or(0);
    let profile = sampler.and_then(|s| s.take(cgroup.id(), lost));
    let mut records = Records::read(
        &mut probes,
        escape_watch,
        process_watch,
        &v2_mount,
        &figures,
        cgroup.id(),
    )?;
    records.process_notes.extend(container_notes);
    records.process_notes.extend(profile_notes);
    let outcome = Outcome {
        ended,
        wound_down,
        cgroup: remove(cgroup)?,
        records,
        containers,
        profile,
        limit_lines,
    };
    Ok((figures, outcome))
}

/// Removes a run's cgroup, once its figures are read; gives how the report names it.
pub(crate) fn remove(cgroup: RunCgroup) -> Result<CgroupRef, Error> {
    let named = CgroupRef {
        path: cgroup.path().display().to_string(),
        id: cgroup.id(),
    };
    cgroup.remove()?;
    Ok(named)
}

/// What the probes recorded of a run beside its figures: processes that left it, each process
/// as it ended, its connections, and what the report must say of them.
pub(crate) struct Records {
    /// Processes that left the cgroup.
    pub escaped: Vec<EscapedProcess>,
    /// What the report must say about them.
    pub escape_notes: Vec<String>,
    /// Each process of the run, as it ended.
    pub processes: Vec<ProcessRecord>,
    /// What the report must say about them (and about connections, containers, profiles).
    pub process_notes: Vec<String>,
    /// The run's traffic by remote endpoint.
    pub connections: Vec<Connection>,
}

impl Records {
    /// Ends the run's watches and reads its connections, after its session's `figures`.
    pub(crate) fn read(
        probes: &mut Probes,
        escape_watch: EscapeWatch,
        process_watch: ProcessWatch,
        v2_mount: &Path,
        figures: &Figures,
        run_id: u64,
    ) -> Result<Self, Error> {
        let (escaped, escape_notes) = escape_watch.finish(probes, v2_mount, &figures.drops);
        let (processes, mut process_notes) = process_watch.finish(probes)?;
        let (connections, connection_notes) = connections::read(probes, run_id)?;
        process_notes.extend(connection_notes);
        Ok(Self {
            escaped,
            escape_notes,
            processes,
            process_notes,
            connections,
        })
    }
}

/// What the run front end saw of the run, beside the session's figures.
pub(crate) struct Outcome {
    pub ended: Ended,
    pub wound_down: WoundDown,
    /// Where the run was measured.
    pub cgroup: CgroupRef,
    /// What the probes recorded beside the figures.
    pub records: Records,
    /// The Docker containers it started.
    pub containers: Vec<ContainerRecord>,
    /// Its CPU profile, when one was taken.
    pub profile: Option<crate::profile::Profile>,
    /// The limits applied.
    pub limit_lines: Vec<String>,
}

/// The report of a run, not yet judged.
pub(crate) fn assemble(opts: &RunOptions, outcome: Outcome, figures: Figures) -> Report {
    let notes = notes(&opts.config, &outcome, &figures);
    let Outcome {
        ended, wound_down, ..
    } = outcome;
    let command = opts.label.clone().unwrap_or_else(|| {
        opts.command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    });
    Report {
        exit_code: exit_code(ended.status),
        notes,
        interrupted: ended.interrupted.map(|signal| Interruption {
            signal,
            killed_leftovers: wound_down.killed,
        }),
        leftovers: wound_down.left_behind,
        escaped: outcome.records.escaped,
        processes: outcome.records.processes,
        connections: outcome.records.connections,
        containers: outcome.containers,
        profile: outcome.profile,
        name: opts.name.clone(),
        tags: opts.tags.clone(),
        ..Report::unjudged(
            figures,
            command,
            outcome.cgroup,
            report::HostInfo::current(),
        )
    }
}

/// The report's notes, in this order: limits applied, leftovers, how memory was measured,
/// profiling, writes and faults the kernel counts differently, processes that left.
fn notes(config: &CleanroomConfig, outcome: &Outcome, figures: &Figures) -> Vec<String> {
    let mut notes = outcome.limit_lines.clone();
    let left_behind = &outcome.wound_down.left_behind;
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
    notes.extend(memory_notes(&session_options(config), figures));
    notes.extend(collect::write_note(&figures.totals, figures.writeback));
    notes.extend(collect::fault_note(&figures.totals, &figures.kernel));
    notes.extend(outcome.records.escape_notes.iter().cloned());
    notes.extend(outcome.records.process_notes.iter().cloned());
    let net = |m: Metric| match figures.totals.get(m.name()) {
        Some(collect::Total::Value(v)) => Some(*v),
        _ => None,
    };
    let run_bytes = net(Metric::NetTxBytes).zip(net(Metric::NetRxBytes));
    notes.extend(processes::net_note(
        &outcome.records.processes,
        run_bytes.map(|(tx, rx)| tx + rx),
    ));
    notes
}

/// What the report must say where memory could not be measured the usual way.
fn memory_notes(options: &SessionOptions, figures: &Figures) -> Vec<String> {
    let memory = figures.memory;
    let mut notes = Vec::new();
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
            humantime::format_duration(options.interval),
            if options.sampling && options.memory {
                "the run was shorter than that"
            } else {
                "sampling or memory tracking is off"
            }
        ));
    }
    notes
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
