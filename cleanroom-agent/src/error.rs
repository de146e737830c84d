//! The library's error type: what went wrong, phrased so that the one-line message says what to
//! do. The binary maps every one of these to exit code 2.

use std::{io, path::PathBuf};

use crate::{
    agent::AgentError, cgroupfs::cgroup::CgroupError, cgroupfs::limits::LimitError,
    config::ConfigError, kernel::probe::ProbeError, output::render::RenderError, store::StoreError,
};

/// Cleanroom's own failures (never the measured command's).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not root and without the capabilities needed.
    #[error(
        "{what} needs root (missing {}); run it as root, e.g. `sudo cleanroom ...`",
        missing.join(", ")
    )]
    NotPrivileged {
        /// What was attempted.
        what: &'static str,
        /// Capabilities lacking.
        missing: Vec<&'static str>,
    },
    /// Not root, and no agent to measure through.
    #[error(
        "{what} needs root (missing {}) or a running `cleanroom agent`: run it as root (`sudo \
         cleanroom ...`), or start `cleanroom agent` on this host and use its socket ({reason})",
        missing.join(", ")
    )]
    NoAgent {
        /// What was attempted.
        what: &'static str,
        /// Capabilities lacking.
        missing: Vec<&'static str>,
        /// Why the agent's socket could not be used.
        reason: String,
    },
    /// The agent refused or failed a request of an unprivileged run.
    #[error("the agent at {socket}: {detail}")]
    AgentRefused {
        /// Its socket.
        socket: PathBuf,
        /// What it said, or what went wrong talking to it.
        detail: String,
    },
    /// The command does not exist.
    #[error("command not found: {0} (not a path to a file, nor found in PATH)")]
    CommandNotFound(String),
    /// The command could not be started.
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        /// The program.
        command: String,
        /// Why.
        source: io::Error,
    },
    /// A signal arrived before the command started: nothing was run, nothing is left behind.
    #[error("interrupted by signal {signal} before the command started; nothing was run")]
    Interrupted {
        /// The signal number.
        signal: i32,
    },
    /// Waiting for the command or for signals failed.
    #[error("waiting for the command: {0}")]
    Wait(io::Error),
    /// The cgroup layer failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The BPF layer failed.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// The Docker engine could not be followed.
    #[error(transparent)]
    Docker(#[from] crate::docker::client::DockerError),
    /// A configuration file is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A resource limit could not be put in place.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The history store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A report could not be rendered or written.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// The agent cannot start as configured.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// A saved report could not be read.
    #[error("cannot read report {}: {detail}", path.display())]
    ReadReport {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The baseline asked for cannot be found.
    #[error("baseline: {0}")]
    Baseline(String),
}
