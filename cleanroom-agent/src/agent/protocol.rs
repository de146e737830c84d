//! The agent's Unix socket protocol, as both ends speak it: one JSON object per line each way,
//! a request, then its reply. `docs/agent-socket.md` is the reference for people; this module
//! is the one for the code.
//!
//! A client is who the kernel says it is (SO_PEERCRED): nothing in a request names a user.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    config::{PerformanceMonitoring, ResourceLimits},
    output::report::Report,
};

/// Where the agent listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/cleanroom/agent.sock";

/// The environment variable that points `cleanroom run` at another socket.
pub const SOCKET_ENV: &str = "CLEANROOM_AGENT_SOCKET";

/// The group given the socket by default, when it exists.
pub const DEFAULT_GROUP: &str = "cleanroom";

/// Longest request line the agent reads, bytes; a longer one ends the connection.
pub const MAX_REQUEST: usize = 256 * 1024;

/// How long the agent waits for a request line once it has begun, or for the first one after
/// connecting; a connection with no run open is closed after this much silence.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the agent waits for a client to take its reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The socket `cleanroom run` uses: [`SOCKET_ENV`], else [`DEFAULT_SOCKET`].
pub fn socket_path() -> PathBuf {
    std::env::var_os(SOCKET_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// A run the agent made for a client: the id of its cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub u64);

/// What a client asks.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Who am I to the agent, and what does it offer.
    Hello,
    /// Make a run cgroup delegated to me, limited and measured as this configuration says.
    Start {
        /// How the report names the command.
        command: Vec<String>,
        /// Sampling and thresholds.
        #[serde(default)]
        performance_monitoring: Box<PerformanceMonitoring>,
        /// Limits, applied by the agent.
        #[serde(default)]
        resource_limits: Box<ResourceLimits>,
    },
    /// Move me (the connecting process) into my run: sent by the command's process between
    /// `fork` and `exec`.
    Join {
        /// The run.
        run: RunId,
    },
    /// Start phase `name` of my run.
    Mark {
        /// The run.
        run: RunId,
        /// The phase.
        name: String,
    },
    /// My command ended: wind the run down and give me its report.
    End {
        /// The run.
        run: RunId,
        /// The command's wait status (as `waitpid` gives it).
        wait_status: i32,
        /// The signal the client was stopped by while the command ran, by name.
        #[serde(default)]
        interrupted: Option<String>,
    },
    /// My live runs.
    Runs,
}

/// A live run, as its owner sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunInfo {
    /// Its id.
    pub run: RunId,
    /// Its v2 cgroup directory, delegated to its owner.
    pub cgroup: PathBuf,
    /// The command, as the report names it.
    pub command: Vec<String>,
}

/// Who the agent says the client is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Peer {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Process id, when the kernel gives it.
    pub pid: Option<i32>,
}

/// The agent's answer to one request: `ok`, and what was asked for, or why not.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request was done.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `hello`: who the client is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Peer>,
    /// `hello`: the agent's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `start`: the run made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunInfo>,
    /// `mark`: when the phase began, ns since the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t_ns: Option<u64>,
    /// `end`: the run's report, not yet judged (the client judges it by its own SLOs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Box<Report>>,
    /// `runs`: the client's live runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<Vec<RunInfo>>,
}

impl Reply {
    /// A refusal.
    pub fn refused(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(error.into()),
            ..Self::default()
        }
    }

    /// Done, nothing to give.
    pub fn done() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }

    /// As one line.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self)
            .unwrap_or_else(|e| format!("{{\"ok\":false,\"error\":\"{e}\"}}").into_bytes());
        line.push(b'\n');
        line
    }
}

/// Asks the agent at `socket` who this process is to it (`hello`), within a few seconds: what
/// `cleanroom doctor` checks for an unprivileged user.
pub fn hello(socket: &std::path::Path) -> Result<Peer, String> {
    use std::io::{BufRead as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let timeout = Some(Duration::from_secs(5));
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .and_then(|()| stream.write_all(b"{\"op\":\"hello\"}\n"))
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut line = String::new();
    std::io::BufReader::new(std::io::Read::take(stream, MAX_REQUEST as u64))
        .read_line(&mut line)
        .map_err(|e| format!("{}: no answer: {e}", socket.display()))?;
    let reply: Reply = serde_json::from_str(&line)
        .map_err(|e| format!("{}: not the agent's answer: {e}", socket.display()))?;
    match (reply.ok, reply.peer) {
        (true, Some(peer)) => Ok(peer),
        _ => Err(format!(
            "{}: {}",
            socket.display(),
            reply.error.unwrap_or_else(|| "refused".into())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_request_carries_the_limits_as_the_config_file_reads_them() {
        let limits = ResourceLimits {
            max_memory_usage_bytes: Some(64 << 20),
            max_test_execution_time: Some(Duration::from_millis(1500)),
            ..ResourceLimits::default()
        };
        let request = Request::Start {
            command: vec!["make".into()],
            performance_monitoring: Box::default(),
            resource_limits: Box::new(limits.clone()),
        };
        let line = serde_json::to_string(&request).unwrap();
        match serde_json::from_str(&line).unwrap() {
            Request::Start {
                resource_limits, ..
            } => assert_eq!(*resource_limits, limits),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limits_that_cannot_work_are_refused_on_the_wire_too() {
        let line =
            r#"{"op":"start","command":["x"],"resource_limits":{"max_memory_usage_bytes":10}}"#;
        let error = serde_json::from_str::<Request>(line).unwrap_err();
        assert!(error.to_string().contains("too small"), "{error}");
        assert!(serde_json::from_str::<Request>(r#"{"op":"join","run":1,"x":2}"#).is_err());
    }
}
