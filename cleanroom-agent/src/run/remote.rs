//! `cleanroom run` without root: measured through the agent's socket. The agent makes a run
//! cgroup delegated to this user and measures it; this process starts the command (which asks
//! the agent, from between `fork` and `exec`, to be moved into the run), passes signals and
//! phase marks on, and at the end gets the report — the same one a root run makes — to judge,
//! render and store as a root run does. Its thresholds are judged then too, so their alerts
//! are sent at the end, not as the run goes.

use std::{
    io,
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use super::{
    RunOptions,
    marks::{MarkListener, MarkRequest},
    next_mark,
    signals::Signals,
    spawn::{Joining, spawn_joining},
};
use crate::{
    Error,
    agent::protocol::{self, Reply, Request, RunInfo},
    judge::analyze,
    output::report::Report,
};

/// The longest reply this client reads (a whole report), bytes.
const MAX_REPLY: u64 = 1 << 30;

/// A connection to the agent: requests and replies in turn.
struct Agent {
    socket: PathBuf,
    reader: BufReader<tokio::io::Take<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Agent {
    /// Connects to the agent at `socket`; an agent that is not there is the one-line error
    /// that names both ways to measure.
    async fn connect(socket: &Path, missing: Vec<&'static str>) -> Result<Self, Error> {
        let stream = UnixStream::connect(socket).await.map_err(|e| {
            let reason = match e.kind() {
                io::ErrorKind::PermissionDenied => format!(
                    "you (uid {}) may not use {}: its group's members may, see `ls -l {}`",
                    nix::unistd::getuid(),
                    socket.display(),
                    socket.display()
                ),
                io::ErrorKind::NotFound => format!("no agent socket at {}", socket.display()),
                io::ErrorKind::ConnectionRefused => {
                    format!("no agent listens on {}", socket.display())
                }
                _ => format!("{}: {e}", socket.display()),
            };
            Error::NoAgent {
                what: "cleanroom run",
                missing,
                reason,
            }
        })?;
        let (read, writer) = stream.into_split();
        Ok(Self {
            socket: socket.to_owned(),
            reader: BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REPLY)),
            writer,
        })
    }

    /// Sends `request`, gives the agent's reply when it is `ok`.
    async fn call(&mut self, request: &Request) -> Result<Reply, Error> {
        let failed = |detail: String| Error::AgentRefused {
            socket: self.socket.clone(),
            detail,
        };
        let mut line = serde_json::to_vec(request).map_err(|e| failed(e.to_string()))?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .await
            .map_err(|e| failed(format!("sending a request: {e}")))?;
        let mut answer = String::new();
        let read = self.reader.read_line(&mut answer).await;
        match read {
            Err(e) => return Err(failed(format!("reading its answer: {e}"))),
            Ok(0) => return Err(failed("it closed the connection".into())),
            Ok(_) => {}
        }
        let reply: Reply = serde_json::from_str(&answer)
            .map_err(|e| failed(format!("an answer that is not one: {e}")))?;
        if reply.ok {
            Ok(reply)
        } else {
            Err(failed(
                reply
                    .error
                    .unwrap_or_else(|| "refused, no reason given".into()),
            ))
        }
    }
}

/// Runs the command measured by the agent, and returns its judged report.
pub async fn run(
    opts: &RunOptions,
    signals: &mut Signals,
    missing: Vec<&'static str>,
) -> Result<Report, Error> {
    let config = &opts.config;
    let program = opts
        .command
        .first()
        .ok_or_else(|| Error::CommandNotFound(String::new()))?;
    super::resolve_program(program)?;
    let socket = protocol::socket_path();
    let mut agent = Agent::connect(&socket, missing).await?;
    if opts.cgroup_parent.is_some() {
        return Err(Error::AgentRefused {
            socket,
            detail: "--cgroup-parent needs root: the agent makes your run where it is configured \
                     to (runs_cgroup)"
                .into(),
        });
    }
    let (_, not_applicable) = analyze::threshold_specs(config);
    let label = opts.label.clone().unwrap_or_else(|| {
        opts.command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    });
    let started = agent
        .call(&Request::Start {
            command: label,
            performance_monitoring: Box::new(config.performance_monitoring.clone()),
            resource_limits: Box::new(config.resource_limits.clone()),
        })
        .await?;
    let info = started.run.ok_or_else(|| Error::AgentRefused {
        socket: socket.clone(),
        detail: "it made no run".into(),
    })?;
    if let Some((name, number)) = signals.pending().await {
        log::warn!("{name} before the command started: nothing was run");
        // Closing the connection removes the run.
        return Err(Error::Interrupted { signal: number });
    }
    let (marks_dir, mut marks) = listen_for_marks(&info);
    let joining = Joining::new(&socket, info.run).map_err(|e| Error::AgentRefused {
        socket: socket.clone(),
        detail: e.to_string(),
    })?;
    let child = spawn_joining(
        &opts.command,
        joining,
        marks.as_ref().map(MarkListener::path),
    )?;
    let (status, interrupted) = supervise(child, signals, &mut marks, &mut agent, &info).await?;
    drop(marks);
    drop(marks_dir);
    let ended = agent
        .call(&Request::End {
            run: info.run,
            wait_status: status.into_raw(),
            interrupted,
        })
        .await?;
    let mut report = *ended.report.ok_or_else(|| Error::AgentRefused {
        socket,
        detail: "it gave no report".into(),
    })?;
    report.name = opts.name.clone();
    report.tags = opts.tags.clone();
    let report = analyze::judge(config, report, not_applicable);
    // The agent's figures are judged here, once the command ended: the thresholds' breaches
    // and clearings are alerted now, in their order, not as they happened.
    if let Some(alerts) = &opts.alerts {
        let target = super::alert_target(opts);
        for event in &report.events {
            alerts.raise(&target, event);
        }
    }
    Ok(report)
}

/// Listens for `cleanroom mark` in a directory of this user's own (removed with it).
fn listen_for_marks(info: &RunInfo) -> (Option<tempfile::TempDir>, Option<MarkListener>) {
    let listening = tempfile::Builder::new()
        .prefix("cleanroom-run-")
        .tempdir()
        .and_then(|dir| {
            let listener = MarkListener::bind_at(&dir.path().join("run.sock"))?;
            Ok((dir, listener))
        });
    match listening {
        Ok((dir, listener)) => (Some(dir), Some(listener)),
        Err(e) => {
            log::warn!(
                "cannot listen for marks: `cleanroom mark` will not reach run {} ({e})",
                info.run.0
            );
            (None, None)
        }
    }
}

/// Waits for the command to exit, passing signals to it and marks to the agent.
async fn supervise(
    mut child: tokio::process::Child,
    signals: &mut Signals,
    marks: &mut Option<MarkListener>,
    agent: &mut Agent,
    info: &RunInfo,
) -> Result<(std::process::ExitStatus, Option<String>), Error> {
    let pid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    let mut interrupted: Option<&'static str> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(Error::Wait)?,
            (name, number) = signals.next() => {
                let Some(pid) = pid else { continue };
                if interrupted.is_some() {
                    log::warn!("{name} again: killing the command (the agent ends what is left)");
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                } else {
                    if !signals.delivered_by_terminal(number)
                        && let Ok(signal) = nix::sys::signal::Signal::try_from(number)
                    {
                        let _ = nix::sys::signal::kill(pid, signal);
                    }
                    log::warn!("{name}: passed to the command; waiting for it to exit (again to kill)");
                    interrupted = Some(name);
                }
            }
            request = next_mark(marks) => forward_mark(agent, info, request).await,
        }
    };
    Ok((status, interrupted.map(str::to_owned)))
}

/// Passes a mark to the agent and its answer back.
async fn forward_mark(agent: &mut Agent, info: &RunInfo, request: MarkRequest) {
    let name = request.name.clone();
    let outcome = agent
        .call(&Request::Mark {
            run: info.run,
            name,
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|reply| reply.t_ns.ok_or_else(|| "no time given".to_owned()));
    if let Err(e) = &outcome {
        log::warn!("mark {:?} refused: {e}", request.name);
    }
    request.answer(outcome);
}
