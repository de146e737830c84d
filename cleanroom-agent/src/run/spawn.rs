//! Starting the command inside the run cgroup: the child joins the cgroup (and any v1 twin)
//! between `fork` and `exec`, so nothing it does escapes the counts, and dies with Cleanroom.

use std::{
    ffi::{CString, OsString},
    io,
    os::unix::ffi::OsStrExt as _,
    path::PathBuf,
};

use crate::Error;

/// Starts the command; the child moves itself into the cgroups before `exec`.
pub fn spawn_in_cgroup(
    command: &[OsString],
    procs: &[PathBuf],
    mark_socket: Option<&std::path::Path>,
) -> Result<tokio::process::Child, Error> {
    let procs: Vec<CString> = procs
        .iter()
        .map(|p| CString::new(p.as_os_str().as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Spawn {
            command: command[0].to_string_lossy().into_owned(),
            source: io::Error::other(e),
        })?;
    // Async-signal-safe: open, write and close on the paths made above.
    spawn_with(command, mark_socket, move || {
        procs.iter().try_for_each(|p| join_cgroup(p))
    })
}

/// How the command's process asks the agent to move it into its run (unprivileged runs): the
/// socket's address and the request line, made before the fork.
#[derive(Clone)]
pub struct Joining {
    address: libc::sockaddr_un,
    request: Vec<u8>,
}

impl Joining {
    /// Joining run `run` through the agent at `socket`.
    pub fn new(socket: &std::path::Path, run: crate::agent::protocol::RunId) -> io::Result<Self> {
        // SAFETY: an all-zero sockaddr_un is valid; the family and path are set below.
        let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        address.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let path = socket.as_os_str().as_bytes();
        if path.len() >= address.sun_path.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket path too long: {}", socket.display()),
            ));
        }
        for (to, from) in address.sun_path.iter_mut().zip(path) {
            *to = *from as libc::c_char;
        }
        let mut request = serde_json::to_vec(&crate::agent::protocol::Request::Join { run })
            .map_err(io::Error::other)?;
        request.push(b'\n');
        Ok(Self { address, request })
    }

    /// In the child: connects, asks, and reads the answer, which must be `{"ok":true...`.
    /// Async-signal-safe: system calls on memory prepared before the fork, a stack buffer.
    fn ask(&self) -> io::Result<()> {
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let outcome = self.ask_on(fd);
        // SAFETY: closes the descriptor opened above, once.
        unsafe { libc::close(fd) };
        outcome
    }

    fn ask_on(&self, fd: libc::c_int) -> io::Result<()> {
        // SAFETY: `address` is a valid sockaddr_un of the size given.
        let rc = unsafe {
            libc::connect(
                fd,
                (&raw const self.address).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut sent = 0;
        while sent < self.request.len() {
            // SAFETY: writes from the prepared buffer, within its length.
            let n = unsafe {
                libc::write(
                    fd,
                    self.request[sent..].as_ptr().cast(),
                    self.request.len() - sent,
                )
            };
            if n <= 0 {
                return Err(io::Error::last_os_error());
            }
            sent += n as usize;
        }
        let mut answer = [0u8; 512];
        let mut got = 0;
        while got < answer.len() && !answer[..got].contains(&b'\n') {
            // SAFETY: reads into the stack buffer, within its length.
            let n =
                unsafe { libc::read(fd, answer[got..].as_mut_ptr().cast(), answer.len() - got) };
            if n <= 0 {
                break;
            }
            got += n as usize;
        }
        if answer[..got].starts_with(b"{\"ok\":true") {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EACCES))
        }
    }
}

/// Starts the command of an unprivileged run; the child asks the agent to move it into the run
/// before `exec`.
pub fn spawn_joining(
    command: &[OsString],
    joining: Joining,
    mark_socket: Option<&std::path::Path>,
) -> Result<tokio::process::Child, Error> {
    // Async-signal-safe: socket, connect, write, read and close on memory made above.
    spawn_with(command, mark_socket, move || joining.ask())
}

/// Starts the command, telling it where marks go; the child calls `join` between `fork` and
/// `exec`, after making sure it dies with Cleanroom. `join` must be async-signal-safe.
fn spawn_with(
    command: &[OsString],
    mark_socket: Option<&std::path::Path>,
    mut join: impl FnMut() -> io::Result<()> + Send + Sync + 'static,
) -> Result<tokio::process::Child, Error> {
    let program = &command[0];
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&command[1..]);
    if let Some(socket) = mark_socket {
        cmd.env(super::marks::SOCKET_ENV, socket);
    }
    let parent = std::process::id() as i32;
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe calls (prctl, getppid, and `join`'s, which its callers keep so) on
    // memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            die_with_parent(parent)?;
            join()
        });
    }
    cmd.spawn().map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => Error::CommandNotFound(program.to_string_lossy().into_owned()),
        _ => Error::Spawn {
            command: program.to_string_lossy().into_owned(),
            source,
        },
    })
}

/// Asks the kernel to SIGKILL this (child) process when Cleanroom dies, and exits at once if
/// it already has. Async-signal-safe: two system calls.
fn die_with_parent(parent: i32) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getppid(2) cannot fail and touches no memory.
    if unsafe { libc::getppid() } != parent {
        // SAFETY: _exit(2) ends this child without running any of the parent's handlers.
        unsafe { libc::_exit(137) };
    }
    Ok(())
}

/// Writes "0" (this process) into `cgroup.procs`. Async-signal-safe: no allocation.
fn join_cgroup(procs: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: `procs` is a valid NUL-terminated string that outlives the call.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: writes one byte from a static buffer to a descriptor we own.
    let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let error = io::Error::last_os_error();
    // SAFETY: closes the descriptor opened above, once.
    unsafe { libc::close(fd) };
    if written == 1 { Ok(()) } else { Err(error) }
}
