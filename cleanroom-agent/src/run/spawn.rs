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
    let program = &command[0];
    let procs: Vec<CString> = procs
        .iter()
        .map(|p| CString::new(p.as_os_str().as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Spawn {
            command: program.to_string_lossy().into_owned(),
            source: io::Error::other(e),
        })?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&command[1..]);
    if let Some(socket) = mark_socket {
        cmd.env(super::marks::SOCKET_ENV, socket);
    }
    let parent = std::process::id() as i32;
    // SAFETY: the closure runs in the child between fork and exec and only makes
    // async-signal-safe calls (prctl, getppid, open, write, close) on memory prepared before
    // the fork.
    unsafe {
        cmd.pre_exec(move || {
            die_with_parent(parent)?;
            procs.iter().try_for_each(|p| join_cgroup(p))
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
