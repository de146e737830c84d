//! Marking phases from inside a run: `cleanroom run` listens on a Unix socket of its own and
//! tells the command where ([`SOCKET_ENV`]); `cleanroom mark NAME`, run by the command's
//! script, asks it to start phase NAME and waits for the answer, so the phase begins at the
//! mark, not at the run's next tick.
//!
//! The protocol is one JSON line each way: `{"mark":"build"}` in, `{"ok":true,"t_ns":123}`
//! (ns since the run started) or `{"ok":false,"error":"..."}` out. A request line is at most
//! [`MAX_LINE`] bytes and must come within [`READ_TIMEOUT`]; a client that sends more, sends
//! nothing or goes away costs one task, never the run's measuring.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

/// The environment variable that tells the command (and `cleanroom mark`) where its run
/// listens.
pub const SOCKET_ENV: &str = "CLEANROOM_RUN_SOCKET";

/// Where runs' sockets are made.
pub const SOCKET_DIR: &str = "/run/cleanroom";

/// Longest request line, bytes.
pub const MAX_LINE: u64 = 4_096;

/// How long the run waits for a client's request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How long `cleanroom mark` waits for the run's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    mark: String,
}

/// An answer.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// A mark asked for, to be answered with when the phase began (ns since the run started) or
/// why it was refused.
#[derive(Debug)]
pub struct MarkRequest {
    /// The phase's name, as sent.
    pub name: String,
    reply: oneshot::Sender<Result<u64, String>>,
}

impl MarkRequest {
    /// Answers the client.
    pub fn answer(self, outcome: Result<u64, String>) {
        let _ = self.reply.send(outcome);
    }
}

/// The run's socket, removed when dropped.
#[derive(Debug)]
pub struct MarkListener {
    listener: UnixListener,
    path: PathBuf,
    sender: mpsc::Sender<MarkRequest>,
    requests: mpsc::Receiver<MarkRequest>,
}

impl MarkListener {
    /// Listens at `SOCKET_DIR/run-<id>.sock`, readable and writable by root alone (the
    /// command runs as root too).
    pub fn bind(id: u64) -> io::Result<Self> {
        Self::bind_at(&Path::new(SOCKET_DIR).join(format!("run-{id}.sock")))
    }

    /// Listens at `path`, replacing a stale socket there.
    pub fn bind_at(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let (sender, requests) = mpsc::channel(16);
        Ok(Self {
            listener,
            path: path.to_owned(),
            sender,
            requests,
        })
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next mark asked for. Each connection is read by a task of its own; cancel-safe.
    pub async fn next(&mut self) -> MarkRequest {
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        tokio::spawn(serve(stream, self.sender.clone()));
                    }
                }
                Some(request) = self.requests.recv() => return request,
            }
        }
    }
}

impl Drop for MarkListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes the sockets in `dir` that no run listens on any more (a `cleanroom run` that was
/// killed): those that refuse a connection. Gives how many went.
pub fn remove_stale_sockets(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("run-") && n.ends_with(".sock"))
        })
        .filter(|p| {
            matches!(
                std::os::unix::net::UnixStream::connect(p),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
            )
        })
        .filter(|p| std::fs::remove_file(p).is_ok())
        .count()
}

/// Reads one request from `stream`, passes it on, writes the answer.
async fn serve(stream: UnixStream, requests: mpsc::Sender<MarkRequest>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_LINE));
    let read = tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await;
    let outcome = match read {
        Err(_) => Err("no request line in time".to_owned()),
        Ok(Err(e)) => Err(format!("reading the request: {e}")),
        Ok(Ok(_)) if !line.ends_with('\n') => {
            Err(format!("a request is one line of at most {MAX_LINE} bytes"))
        }
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Err(e) => Err(format!("not a request ({{\"mark\":\"NAME\"}}): {e}")),
            Ok(request) => {
                let (reply, answer) = oneshot::channel();
                let asked = MarkRequest {
                    name: request.mark,
                    reply,
                };
                match requests.send(asked).await {
                    Err(_) => Err("the run is ending".to_owned()),
                    Ok(()) => answer
                        .await
                        .unwrap_or_else(|_| Err("the run is ending".to_owned())),
                }
            }
        },
    };
    let answer = match outcome {
        Ok(t_ns) => Answer {
            ok: true,
            t_ns: Some(t_ns),
            error: None,
        },
        Err(e) => Answer {
            ok: false,
            t_ns: None,
            error: Some(e),
        },
    };
    if let Ok(mut json) = serde_json::to_vec(&answer) {
        json.push(b'\n');
        let _ = tokio::time::timeout(READ_TIMEOUT, write.write_all(&json)).await;
    }
}

/// Why `cleanroom mark` could not mark.
#[derive(Debug, thiserror::Error)]
pub enum MarkClientError {
    /// Not inside a run.
    #[error(
        "not inside a `cleanroom run`: ${SOCKET_ENV} is not set (cleanroom run sets it for the \
         command it measures)"
    )]
    NotInRun,
    /// The run did not answer.
    #[error("the run at {path} did not answer: {source}")]
    Unreachable {
        /// Its socket.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The run refused.
    #[error("the run refused the mark: {0}")]
    Refused(String),
}

/// Asks the run this process is in to start phase `name`; gives when it began (ns since the
/// run started).
pub fn mark(name: &str) -> Result<u64, MarkClientError> {
    let path = std::env::var_os(SOCKET_ENV).ok_or(MarkClientError::NotInRun)?;
    mark_at(Path::new(&path), name)
}

/// Asks the run listening at `path` to start phase `name`.
pub fn mark_at(path: &Path, name: &str) -> Result<u64, MarkClientError> {
    let unreachable = |source| MarkClientError::Unreachable {
        path: path.display().to_string(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(ANSWER_TIMEOUT)))
        .map_err(unreachable)?;
    let mut line = serde_json::to_vec(&Request {
        mark: name.to_owned(),
    })
    .map_err(|e| unreachable(io::Error::other(e)))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(unreachable)?;
    let mut answer = String::new();
    BufReader::new(io::Read::take(stream, MAX_LINE))
        .read_line(&mut answer)
        .map_err(unreachable)?;
    let answer: Answer = serde_json::from_str(&answer)
        .map_err(|e| unreachable(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    match (answer.ok, answer.t_ns) {
        (true, Some(t_ns)) => Ok(t_ns),
        _ => Err(MarkClientError::Refused(
            answer.error.unwrap_or_else(|| "no reason given".to_owned()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_mark_is_answered_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.sock");
        let mut listener = MarkListener::bind_at(&path).unwrap();
        let run = tokio::spawn(async move {
            let request = listener.next().await;
            assert_eq!(request.name, "build");
            request.answer(Ok(42));
            let request = listener.next().await;
            request.answer(Err("bad name".into()));
            listener
        });
        let client = |name: &'static str, path: PathBuf| {
            tokio::task::spawn_blocking(move || mark_at(&path, name))
        };
        // Garbage gets an answer, not a hang, and never reaches the run.
        let mut raw = tokio::net::UnixStream::connect(&path).await.unwrap();
        raw.write_all(b"not json\n").await.unwrap();
        let mut answer = String::new();
        tokio::io::BufReader::new(raw)
            .read_line(&mut answer)
            .await
            .unwrap();
        assert!(answer.contains("\"ok\":false"), "{answer}");
        assert_eq!(client("build", path.clone()).await.unwrap().unwrap(), 42);
        let refused = client("x", path.clone()).await.unwrap().unwrap_err();
        assert!(refused.to_string().contains("bad name"), "{refused}");
        let listener = run.await.unwrap();
        drop(listener);
        assert!(!path.exists(), "the socket is removed");
    }

    #[tokio::test]
    async fn only_sockets_nobody_listens_on_are_removed_as_stale() {
        let dir = tempfile::tempdir().unwrap();
        let live = MarkListener::bind_at(&dir.path().join("run-1.sock")).unwrap();
        // A killed run's socket: the file stays, nobody listens.
        drop(std::os::unix::net::UnixListener::bind(dir.path().join("run-2.sock")).unwrap());
        std::fs::write(dir.path().join("other.sock"), "").unwrap();
        assert_eq!(remove_stale_sockets(dir.path()), 1);
        assert!(live.path().exists() && !dir.path().join("run-2.sock").exists());
        assert!(dir.path().join("other.sock").exists());
    }
}
