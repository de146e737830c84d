//! Runs the agent makes for unprivileged clients (`cleanroom run` without root): a run cgroup
//! delegated to the client's user, limited by the agent, measured by a [`Session`] on the
//! agent's probes, and at the end the same unjudged report `cleanroom run` makes as root — the
//! client judges it by its own SLOs, stores and renders it.
//!
//! The rules: a client acts only on runs made for its own uid (as the kernel says it is); the
//! command's process joins its run by asking from inside, between `fork` and `exec` (the
//! agent moves the asking process, never a pid named in a request); limits are written by the
//! agent (the delegated directory gives the user `cgroup.procs`, `cgroup.threads` and
//! `cgroup.subtree_control`, never `memory.max`); a run whose client goes away is killed and
//! removed.

use std::{
    collections::BTreeMap,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, Instant},
};

use super::{
    profiling::Profiling,
    protocol::{Peer, Reply, Request, RunId, RunInfo},
    socket::{Call, ConnId, Incoming},
    watched::CgroupId,
};
use crate::{
    Error,
    cgroupfs::cgroup::{CgroupError, Hierarchy, RunCgroup},
    cgroupfs::limits,
    config::CleanroomConfig,
    judge::analyze,
    kernel::probe::Probes,
    measure::{
        escape::EscapeWatch,
        processes::ProcessWatch,
        session::{End, Session},
    },
    output::report::Report,
    run::{self, Ended, Outcome, Records, RunOptions},
};

/// The most live runs one user may have at once.
pub const MAX_RUNS_PER_UID: usize = 16;

/// The shortest interval a client's run is sampled at: each is a read of the maps by the agent.
pub const MIN_CLIENT_INTERVAL: Duration = Duration::from_millis(100);

/// The most bytes of command line a run's report names (the rest is cut).
const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// One client's run.
struct ClientRun {
    /// Whose it is.
    owner: Peer,
    /// The connection that started it.
    conn: ConnId,
    /// Its cgroup, delegated to the owner.
    cgroup: RunCgroup,
    /// The measuring.
    session: Session,
    /// Processes that leave it.
    escape_watch: EscapeWatch,
    /// Each process as it ends.
    process_watch: ProcessWatch,
    /// The limits applied, as the notes say them.
    limit_lines: Vec<String>,
    /// What the report must say that a root run would not.
    notes: Vec<String>,
    /// The command and configuration, for the report.
    options: RunOptions,
    /// When it is next sampled.
    next_tick: Instant,
    /// Where it stands against its time limit.
    time_limit: TimeLimit,
    /// Whether its tasks are sampled for a profile.
    profiled: bool,
}

/// A run against its time limit.
#[derive(Clone, Copy)]
enum TimeLimit {
    /// Within it (or it has none).
    Within,
    /// Past it: SIGTERM was sent then.
    Terminated(Instant),
    /// Killed after the clean-up time.
    Killed,
}

/// The clients' runs, and where they are made.
pub struct Clients {
    parent: PathBuf,
    hierarchy: Hierarchy,
    runs: BTreeMap<RunId, ClientRun>,
    made: u64,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("parent", &self.parent)
            .field("runs", &self.runs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Clients {
    /// Runs for clients are made under `parent`.
    pub fn new(parent: PathBuf, hierarchy: Hierarchy) -> Self {
        Self {
            parent,
            hierarchy,
            runs: BTreeMap::new(),
            made: 0,
        }
    }

    /// The live runs' cgroup ids: the agent's own watches leave their map entries alone.
    pub fn ids(&self) -> Vec<u64> {
        self.runs.keys().map(|r| r.0).collect()
    }

    /// When the next run is due to be sampled.
    pub fn next_tick(&self) -> Option<Instant> {
        self.runs.values().map(|r| r.next_tick).min()
    }

    /// Samples every run that is due, and enforces time limits.
    pub fn tick(&mut self, probes: &mut Probes) {
        let now = Instant::now();
        for (id, run) in &mut self.runs {
            if run.next_tick > now {
                continue;
            }
            let interval = run.session.interval();
            run.next_tick = now + interval;
            if run.session.samples()
                && let Err(e) = run.session.tick(probes)
            {
                log::warn!("client run {}: sampling failed: {e}", id.0);
            }
            if let Err(e) = run.process_watch.collect(probes) {
                log::warn!("client run {}: reading ended processes failed: {e}", id.0);
            }
            enforce_time_limit(run, now);
        }
    }

    /// Answers one call, or cleans up after a connection that went away. Runs that ask for a
    /// profile share the agent's `profiling`.
    pub async fn handle(
        &mut self,
        incoming: Incoming,
        probes: &mut Probes,
        profiling: &mut Profiling,
    ) {
        match incoming {
            Incoming::Call(call) => {
                let Call {
                    conn,
                    peer,
                    request,
                    reply,
                } = *call;
                let answer = self.answer(conn, peer, request, probes, profiling).await;
                let _ = reply.send(answer);
            }
            Incoming::Gone { conn, runs } => {
                for id in runs {
                    if self.runs.get(&id).is_some_and(|r| r.conn == conn) {
                        self.abandon(id, probes, profiling);
                    }
                }
            }
        }
    }

    /// Every live run killed and removed (the agent is stopping).
    pub fn stop(&mut self, probes: &mut Probes, profiling: &mut Profiling) {
        let ids: Vec<RunId> = self.runs.keys().copied().collect();
        for id in ids {
            self.abandon(id, probes, profiling);
        }
    }

    async fn answer(
        &mut self,
        conn: ConnId,
        peer: Peer,
        request: Request,
        probes: &mut Probes,
        profiling: &mut Profiling,
    ) -> Reply {
        let outcome = match request {
            Request::Hello => Ok(Reply {
                ok: true,
                peer: Some(peer),
                version: Some(env!("CARGO_PKG_VERSION").to_owned()),
                ..Reply::default()
            }),
            Request::Runs => Ok(Reply {
                ok: true,
                runs: Some(
                    self.runs
                        .iter()
                        .filter(|(_, r)| r.owner.uid == peer.uid)
                        .map(|(id, r)| info(*id, r))
                        .collect(),
                ),
                ..Reply::default()
            }),
            Request::Start {
                command,
                performance_monitoring,
                resource_limits,
            } => self
                .start(
                    conn,
                    peer,
                    command,
                    CleanroomConfig {
                        performance_monitoring: *performance_monitoring,
                        resource_limits: *resource_limits,
                        ..CleanroomConfig::default()
                    },
                    probes,
                    profiling,
                )
                .map(|info| Reply {
                    ok: true,
                    run: Some(info),
                    ..Reply::default()
                }),
            Request::Join { run } => self.join(peer, run).map(|()| Reply::done()),
            Request::Mark { run, name } => self.owned(peer, run).and_then(|r| {
                r.session
                    .mark(probes, &name)
                    .map(|t_ns| Reply {
                        ok: true,
                        t_ns: Some(t_ns),
                        ..Reply::default()
                    })
                    .map_err(|e| e.to_string())
            }),
            Request::End {
                run,
                wait_status,
                interrupted,
            } => match self.take(peer, run) {
                Err(e) => Err(e),
                Ok(taken) => self
                    .end(
                        run,
                        taken,
                        ExitStatus::from_raw(wait_status),
                        interrupted,
                        probes,
                        profiling,
                    )
                    .await
                    .map(|report| Reply {
                        ok: true,
                        report: Some(Box::new(report)),
                        ..Reply::default()
                    })
                    .map_err(|e| e.to_string()),
            },
        };
        outcome.unwrap_or_else(Reply::refused)
    }

    /// The run `id` when it is `peer`'s; else the same refusal whether it exists or not, so
    /// that nobody learns of another's runs.
    fn owned(&mut self, peer: Peer, id: RunId) -> Result<&mut ClientRun, String> {
        self.runs
            .get_mut(&id)
            .filter(|r| r.owner.uid == peer.uid)
            .ok_or_else(|| not_yours(peer, id))
    }

    /// The run `id`, taken out, when it is `peer`'s; else as [`Self::owned`].
    fn take(&mut self, peer: Peer, id: RunId) -> Result<ClientRun, String> {
        if self.runs.get(&id).is_some_and(|r| r.owner.uid == peer.uid)
            && let Some(run) = self.runs.remove(&id)
        {
            return Ok(run);
        }
        Err(not_yours(peer, id))
    }

    /// Makes a run for `peer`: the cgroup, its limits, its delegation, then its measuring.
    fn start(
        &mut self,
        conn: ConnId,
        peer: Peer,
        mut command: Vec<String>,
        config: CleanroomConfig,
        probes: &mut Probes,
        profiling: &mut Profiling,
    ) -> Result<RunInfo, String> {
        let live = self
            .runs
            .values()
            .filter(|r| r.owner.uid == peer.uid)
            .count();
        if live >= MAX_RUNS_PER_UID {
            return Err(format!(
                "you have {live} runs live already, the most one user may have"
            ));
        }
        if config.performance_monitoring.metrics_interval < MIN_CLIENT_INTERVAL {
            return Err(format!(
                "performance_monitoring.metrics_interval must be at least {} through the agent",
                humantime::format_duration(MIN_CLIENT_INTERVAL)
            ));
        }
        cut_command(&mut command);
        let mut notes = Vec::new();
        self.made += 1;
        let name = run::run_name(
            std::process::id(),
            Some(&format!("u{}.{}", peer.uid, self.made)),
        );
        let rl = &config.resource_limits;
        let cgroup = run::make_cgroup(&self.parent, &name, &self.hierarchy, rl)
            .map_err(|e| e.to_string())?;
        let limit_lines = limits::apply(&cgroup, rl).map_err(|e| e.to_string())?;
        delegate(cgroup.path(), peer).map_err(|e| e.to_string())?;
        let (specs, _) = analyze::threshold_specs(&config);
        let id = RunId(cgroup.id());
        let escape_watch = EscapeWatch::start(probes, id.0);
        let process_watch = ProcessWatch::start(id.0);
        let pm = &config.performance_monitoring;
        let profiled = pm.enable_profiling;
        if profiled {
            notes.extend(profiling.begin(probes, CgroupId(id.0), &[id.0]));
            if pm.profiling_frequency_hz != profiling.frequency_hz() {
                notes.push(format!(
                    "the profile was sampled at the agent's {} Hz, not the {} Hz asked for \
                     (the agent's profile_frequency_hz sets it for every profile it takes)",
                    profiling.frequency_hz(),
                    pm.profiling_frequency_hz
                ));
            }
        }
        let mut session = Session::start(cgroup.target(), specs, run::session_options(&config));
        run::record_limits(&mut session, &limit_lines);
        let next_tick = Instant::now() + session.interval();
        log::info!(
            "client uid {} (pid {}): run {} made at {}",
            peer.uid,
            peer.pid.unwrap_or(0),
            id.0,
            cgroup.path().display()
        );
        let run = ClientRun {
            owner: peer,
            conn,
            cgroup,
            session,
            escape_watch,
            process_watch,
            limit_lines,
            notes,
            options: RunOptions {
                command: command.iter().map(Into::into).collect(),
                config,
                ..RunOptions::default()
            },
            next_tick,
            time_limit: TimeLimit::Within,
            profiled,
        };
        let info = info(id, &run);
        self.runs.insert(id, run);
        Ok(info)
    }

    /// Moves the asking process into its user's run.
    fn join(&mut self, peer: Peer, id: RunId) -> Result<(), String> {
        let procs = self.owned(peer, id)?.cgroup.procs_files();
        let pid = peer
            .pid
            .filter(|p| *p > 0)
            .ok_or("the kernel did not say which process is asking")?;
        // The process is blocked waiting for this answer; it is still the asker's.
        let uid = procfs::process::Process::new(pid)
            .and_then(|p| p.uid())
            .map_err(|e| format!("process {pid}: {e}"))?;
        if uid != peer.uid {
            return Err(format!("process {pid} is not yours"));
        }
        for file in procs {
            std::fs::write(&file, pid.to_string())
                .map_err(|e| format!("moving process {pid} into {}: {e}", file.display()))?;
        }
        Ok(())
    }

    /// Ends run `id`, taken out of the live ones: its processes killed, its figures read, its
    /// cgroup removed; gives the report, unjudged.
    async fn end(
        &self,
        id: RunId,
        mut run: ClientRun,
        status: ExitStatus,
        interrupted: Option<String>,
        probes: &mut Probes,
        profiling: &mut Profiling,
    ) -> Result<Report, Error> {
        let wall_time_ns = run.session.elapsed_ns();
        if run.session.samples() {
            run.session.last_tick(probes)?;
        }
        let wound_down = run::wind_down(&run.cgroup).await?;
        let ClientRun {
            cgroup,
            session,
            escape_watch,
            process_watch,
            limit_lines,
            mut notes,
            options,
            profiled,
            ..
        } = run;
        let profile = if profiled {
            let (profile, note) = profiling.end(probes, CgroupId(id.0));
            notes.extend(note);
            profile
        } else {
            None
        };
        let end = End {
            wall_time_ns,
            max_rss_bytes: None,
        };
        let figures = session.finish(probes, end)?;
        let mut records = Records::read(
            probes,
            escape_watch,
            process_watch,
            &self.hierarchy.v2_mount,
            &figures,
            id.0,
        )?;
        records.process_notes.extend(notes);
        let cgroup = run::remove(cgroup)?;
        log::info!("client run {} ended", id.0);
        let outcome = Outcome {
            ended: Ended {
                status,
                interrupted,
                wall_time_ns,
            },
            wound_down,
            cgroup,
            records,
            containers: Vec::new(),
            profile,
            limit_lines,
        };
        Ok(run::assemble(&options, outcome, figures))
    }

    /// Kills and removes run `id`, whose client went away.
    fn abandon(&mut self, id: RunId, probes: &mut Probes, profiling: &mut Profiling) {
        let Some(run) = self.runs.remove(&id) else {
            return;
        };
        if run.profiled {
            let _ = profiling.end(probes, CgroupId(id.0));
        }
        log::warn!(
            "client uid {}: run {} abandoned (its client went away): killed and removed",
            run.owner.uid,
            id.0
        );
        let _ = run.cgroup.kill_all(Duration::from_secs(5));
        let _ = run.session.finish(probes, End::default());
        let _ = probes.unwatch_run(id.0);
        if let Err(e) = run.cgroup.remove() {
            log::warn!("run {}: {e}", id.0);
        }
    }
}

/// The refusal for a run that is not `peer`'s, or not there: the same words for both.
fn not_yours(peer: Peer, id: RunId) -> String {
    format!("no run {} of yours (uid {})", id.0, peer.uid)
}

/// What the client is told of its run.
fn info(id: RunId, run: &ClientRun) -> RunInfo {
    RunInfo {
        run: id,
        cgroup: run.cgroup.path().to_owned(),
        command: run
            .options
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
    }
}

/// Sends SIGTERM when the run's time limit has passed, and SIGKILL after the clean-up time.
fn enforce_time_limit(run: &mut ClientRun, now: Instant) {
    let rl = &run.options.config.resource_limits;
    let Some(limit) = rl.max_test_execution_time else {
        return;
    };
    match run.time_limit {
        TimeLimit::Within if u128::from(run.session.elapsed_ns()) >= limit.as_nanos() => {
            let event = run::time_out(&run.cgroup, run.session.elapsed_ns(), rl);
            run.session.record(event);
            run.time_limit = TimeLimit::Terminated(now);
        }
        TimeLimit::Terminated(at) if now.duration_since(at) >= rl.resource_cleanup_timeout => {
            let event = run::kill_after_timeout(run.session.elapsed_ns());
            run.session.record(event);
            let _ = run.cgroup.kill_all(Duration::from_secs(5));
            run.time_limit = TimeLimit::Killed;
        }
        _ => {}
    }
}

/// Cuts a command line longer than [`MAX_COMMAND_BYTES`] (counting its words' bytes).
fn cut_command(command: &mut Vec<String>) {
    let mut total = 0;
    let keep = command
        .iter()
        .take_while(|w| {
            total += w.len();
            total <= MAX_COMMAND_BYTES
        })
        .count();
    if keep < command.len() {
        command.truncate(keep);
        command.push("…".to_owned());
    }
}

/// Delegates the run's v2 directory to `peer` as cgroup v2 delegation has it: the directory
/// and its `cgroup.procs`, `cgroup.threads` and `cgroup.subtree_control` owned by the user.
fn delegate(dir: &Path, peer: Peer) -> Result<(), CgroupError> {
    let uid = nix::unistd::Uid::from_raw(peer.uid);
    let gid = nix::unistd::Gid::from_raw(peer.gid);
    for path in [
        dir.to_owned(),
        dir.join("cgroup.procs"),
        dir.join("cgroup.threads"),
        dir.join("cgroup.subtree_control"),
    ] {
        nix::unistd::chown(&path, Some(uid), Some(gid)).map_err(|e| CgroupError::Io {
            action: "delegating",
            path: path.clone(),
            source: e.into(),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_command_lines_are_cut_with_a_mark() {
        let mut command = vec!["x".repeat(40_000), "y".repeat(40_000), "z".into()];
        cut_command(&mut command);
        assert_eq!(command.len(), 2);
        assert_eq!(command[1], "…");
        let mut short = vec!["make".to_owned(), "test".to_owned()];
        cut_command(&mut short);
        assert_eq!(short, ["make", "test"]);
    }
}
