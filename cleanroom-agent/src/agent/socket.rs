//! The agent's Unix socket: who may connect (the file's owner, group and mode), who each
//! client is (SO_PEERCRED), and the reading of requests, bounded so that no client can stall
//! the agent or other clients: each connection is a task of its own, a request line is at most
//! [`MAX_REQUEST`] bytes, a connection with no run open is dropped after [`REQUEST_TIMEOUT`]
//! of silence, a reply not taken within [`REPLY_TIMEOUT`] ends the connection, and one user
//! holds at most [`MAX_CONNECTIONS_PER_UID`] connections at once.
//!
//! Requests are passed to the agent's loop as [`Incoming`] calls, which owns the probes and
//! the runs; this module never touches a cgroup.

use std::{
    collections::HashMap,
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use super::protocol::{
    DEFAULT_GROUP, MAX_REQUEST, Peer, REPLY_TIMEOUT, REQUEST_TIMEOUT, Reply, Request, RunId,
};

/// The most connections one user holds at once; more are refused as they come.
pub const MAX_CONNECTIONS_PER_UID: usize = 64;

/// The most connections at once from everyone.
pub const MAX_CONNECTIONS: usize = 1_024;

/// One connection, for as long as it lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A request, from whom, and where its reply goes.
#[derive(Debug)]
pub struct Call {
    /// The connection it came on.
    pub conn: ConnId,
    /// Who sent it.
    pub peer: Peer,
    /// What it asks.
    pub request: Request,
    /// Where the reply goes.
    pub reply: oneshot::Sender<Reply>,
}

/// What the connections tell the agent's loop.
#[derive(Debug)]
pub enum Incoming {
    /// A request to answer.
    Call(Box<Call>),
    /// A connection that had runs open ended: they are abandoned.
    Gone {
        /// The connection.
        conn: ConnId,
        /// The runs it opened and did not end.
        runs: Vec<RunId>,
    },
}

/// Why the socket cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process listens there.
    #[error(
        "another process already listens on {0} (another agent?); stop it, or give this one \
         --socket PATH"
    )]
    InUse(PathBuf),
    /// The named group does not exist.
    #[error("no group {0:?} on this host for the agent's socket (socket_group / --socket-group)")]
    NoGroup(String),
    /// A system call failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Who may connect: owner root, this group (read and write), nobody else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// The socket's group, when there is one: its members may connect.
    pub group: Option<(String, u32)>,
}

impl Access {
    /// The group asked for (it must exist), else [`DEFAULT_GROUP`] when it exists, else none.
    pub fn resolve(asked: Option<&str>) -> Result<Self, SocketError> {
        let lookup = |name: &str| {
            nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .map(|g| (name.to_owned(), g.gid.as_raw()))
        };
        match asked {
            Some(name) => lookup(name)
                .map(|group| Self { group: Some(group) })
                .ok_or_else(|| SocketError::NoGroup(name.to_owned())),
            None => Ok(Self {
                group: lookup(DEFAULT_GROUP),
            }),
        }
    }

    /// The socket file's mode.
    pub fn mode(&self) -> u32 {
        if self.group.is_some() { 0o660 } else { 0o600 }
    }

    /// As the log says it.
    pub fn describe(&self) -> String {
        match &self.group {
            Some((name, _)) => format!("root and group {name}"),
            None => format!("root alone (no group {DEFAULT_GROUP:?} on this host)"),
        }
    }
}

/// The agent's listening socket, removed when dropped.
#[derive(Debug)]
pub struct AgentSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl AgentSocket {
    /// Listens at `path` for `access`: a stale socket there (nobody listening) is replaced, a
    /// live one is an error.
    pub fn bind(path: &Path, access: &Access) -> Result<Self, SocketError> {
        let io_err = |action, source| SocketError::Io {
            action,
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_err("making the directory of", e))?;
        }
        if path.exists() {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(SocketError::InUse(path.to_owned())),
                Err(_) => std::fs::remove_file(path).map_err(|e| io_err("removing", e))?,
            }
        }
        // Made with no permission for anyone but root, then opened up to the group: never
        // reachable by others in between.
        // SAFETY: umask only sets this process's file mode mask.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above, restoring the mask.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(|e| io_err("listening on", e))?;
        let socket = Self {
            listener,
            path: path.to_owned(),
        };
        if let Some((_, gid)) = &access.group {
            nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(*gid)))
                .map_err(|e| io_err("giving its group to", e.into()))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(access.mode()))
            .map_err(|e| io_err("setting the mode of", e))?;
        Ok(socket)
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts connections in the background, each served by a task of its own, passing their
    /// calls to `calls`.
    pub fn serve(self, calls: mpsc::Sender<Incoming>) {
        tokio::spawn(async move {
            let counts = Arc::new(Mutex::new(Counts::default()));
            let mut next = 0;
            loop {
                let stream = match self.listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, most likely: wait rather than spin.
                        log::warn!("agent socket: accepting a connection failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                next += 1;
                let conn = ConnId(next);
                tokio::spawn(connection(stream, conn, calls.clone(), Arc::clone(&counts)));
            }
        });
    }
}

impl Drop for AgentSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Connections open, by user and in all.
#[derive(Debug, Default)]
struct Counts {
    by_uid: HashMap<u32, usize>,
    total: usize,
}

/// A connection counted for as long as it is held.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    uid: u32,
}

impl Slot {
    /// Counts a connection of `uid`, unless that user or everyone holds the most already.
    fn take(counts: &Arc<Mutex<Counts>>, uid: u32) -> Option<Self> {
        let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
        let mine = c.by_uid.get(&uid).copied().unwrap_or(0);
        if mine >= MAX_CONNECTIONS_PER_UID || c.total >= MAX_CONNECTIONS {
            return None;
        }
        c.by_uid.insert(uid, mine + 1);
        c.total += 1;
        Some(Self {
            counts: Arc::clone(counts),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total -= 1;
        if let Some(n) = c.by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                c.by_uid.remove(&self.uid);
            }
        }
    }
}

/// Serves one connection: its requests in order, each answered before the next is read.
async fn connection(
    stream: UnixStream,
    conn: ConnId,
    calls: mpsc::Sender<Incoming>,
    counts: Arc<Mutex<Counts>>,
) {
    let Ok(cred) = stream.peer_cred() else {
        return;
    };
    let peer = Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
    };
    let (read, mut write) = stream.into_split();
    let Some(_slot) = Slot::take(&counts, peer.uid) else {
        let refusal = Reply::refused(format!(
            "too many connections: at most {MAX_CONNECTIONS_PER_UID} per user"
        ));
        let _ = tokio::time::timeout(REPLY_TIMEOUT, write.write_all(&refusal.to_line())).await;
        return;
    };
    let mut reader = BufReader::new(read);
    let mut open: Vec<RunId> = Vec::new();
    loop {
        // A connection with a run open may wait as long as its command runs.
        let line = if open.is_empty() {
            match tokio::time::timeout(REQUEST_TIMEOUT, read_line(&mut reader, MAX_REQUEST)).await {
                Ok(line) => line,
                Err(_) => break,
            }
        } else {
            read_line(&mut reader, MAX_REQUEST).await
        };
        let reply = match line {
            Ok(Line::Text(text)) => match serde_json::from_slice::<Request>(&text) {
                Ok(request) => {
                    let reply = call(&calls, conn, peer, request).await;
                    note_runs(&mut open, &reply);
                    reply
                }
                Err(e) => Reply::refused(format!("not a request: {e}")),
            },
            Ok(Line::TooLong) => {
                let refusal = Reply::refused(format!(
                    "a request is one line of at most {MAX_REQUEST} bytes"
                ));
                let _ =
                    tokio::time::timeout(REPLY_TIMEOUT, write.write_all(&refusal.to_line())).await;
                break;
            }
            Ok(Line::End) | Err(_) => break,
        };
        match tokio::time::timeout(REPLY_TIMEOUT, write.write_all(&reply.to_line())).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    if !open.is_empty() {
        let _ = calls.send(Incoming::Gone { conn, runs: open }).await;
    }
}

/// Keeps the runs this connection has open: one a start made, less one an end finished.
fn note_runs(open: &mut Vec<RunId>, reply: &Reply) {
    if !reply.ok {
        return;
    }
    if let Some(run) = &reply.run {
        open.push(run.run);
    }
    if let Some(report) = &reply.report {
        open.retain(|r| r.0 != report.cgroup.id);
    }
}

/// Passes a request to the agent's loop and waits for its reply.
async fn call(calls: &mpsc::Sender<Incoming>, conn: ConnId, peer: Peer, request: Request) -> Reply {
    let (reply, answer) = oneshot::channel();
    let incoming = Incoming::Call(Box::new(Call {
        conn,
        peer,
        request,
        reply,
    }));
    if calls.send(incoming).await.is_err() {
        return Reply::refused("the agent is stopping");
    }
    answer
        .await
        .unwrap_or_else(|_| Reply::refused("the agent is stopping"))
}

/// A line read, or why there was none.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// The line, without its newline.
    Text(Vec<u8>),
    /// Longer than allowed (the rest is not read).
    TooLong,
    /// The client closed the connection (a partial last line is dropped).
    End,
}

/// Reads one line of at most `max` bytes, never holding more than that.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, max: usize) -> io::Result<Line> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(Line::End);
        }
        let (take, complete) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max {
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(&buf[..take]);
        reader.consume(take + usize::from(complete));
        if complete {
            return Ok(Line::Text(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_and_a_partial_last_one_is_dropped() {
        let mut input: &[u8] = b"{\"op\":\"hello\"}\nshort\n";
        assert_eq!(
            read_line(&mut input, 64).await.unwrap(),
            Line::Text(b"{\"op\":\"hello\"}".to_vec())
        );
        assert_eq!(
            read_line(&mut input, 64).await.unwrap(),
            Line::Text(b"short".to_vec())
        );
        assert_eq!(read_line(&mut input, 64).await.unwrap(), Line::End);
        let long = [b'x'; 100];
        assert_eq!(read_line(&mut &long[..], 64).await.unwrap(), Line::TooLong);
        assert_eq!(read_line(&mut &b"half"[..], 64).await.unwrap(), Line::End);
    }

    #[test]
    fn one_user_holds_a_bounded_number_of_connections() {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let held: Vec<Slot> = (0..MAX_CONNECTIONS_PER_UID)
            .map(|_| Slot::take(&counts, 1000).unwrap())
            .collect();
        assert!(Slot::take(&counts, 1000).is_none());
        // Another user is still served.
        let other = Slot::take(&counts, 1001);
        assert!(other.is_some());
        drop(held);
        assert!(Slot::take(&counts, 1000).is_some());
        drop(other);
        assert_eq!(counts.lock().unwrap().total, 0);
    }

    #[test]
    fn without_a_group_the_socket_is_roots_alone() {
        let access = Access { group: None };
        assert_eq!(access.mode(), 0o600);
        let access = Access {
            group: Some(("cleanroom".into(), 999)),
        };
        assert_eq!(access.mode(), 0o660);
    }
}
