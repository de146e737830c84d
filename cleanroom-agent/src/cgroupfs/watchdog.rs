//! A run's cgroups outlive nothing: a small process that removes them if Cleanroom dies.
//!
//! `cleanroom run` can be killed with SIGKILL (a CI timeout, the OOM killer), which no handler
//! sees. So before the command starts, Cleanroom starts this binary again as a watchdog
//! (`cleanroom watchdog DIR...`, hidden) in a session of its own — out of reach of signals
//! sent to Cleanroom's terminal or process group — holding the read end of a pipe whose write
//! end only Cleanroom has. When Cleanroom exits, however it exits, the kernel closes that end
//! and the watchdog wakes: every directory still there is a run cgroup that was not cleaned
//! up, so it kills every process in it and removes it, deepest first. After a normal run the
//! directories are already gone and the watchdog just exits.
//!
//! The command itself also gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies at once with Cleanroom
//! even before the watchdog has done its work.

use std::{
    io::{self, Read as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::Duration,
};

/// The hidden subcommand the binary dispatches to [`serve`].
pub const SUBCOMMAND: &str = "watchdog";

/// A running watchdog; dropping it (after the cgroups are removed) lets it exit.
#[derive(Debug)]
pub struct Watchdog {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts the watchdog for `dirs` (the v2 run cgroup first, then any v1 twins).
    pub fn start(dirs: &[PathBuf]) -> io::Result<Self> {
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg0("cleanroom")
            .arg(SUBCOMMAND)
            .args(dirs)
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        // SAFETY: runs between fork and exec; setsid(2) is async-signal-safe and touches no
        // memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(io::Error::from)?;
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let pipe = child.stdin.take();
        Ok(Self { child, pipe })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.pipe.take());
        // It exits at once when the directories are gone; reap it so no zombie is left.
        let _ = self.child.wait();
    }
}

/// The watchdog itself: waits for end of file on stdin, then removes whichever of `dirs` are
/// still there, killing what is left in them first. Returns how many directories it removed.
pub fn serve(dirs: &[PathBuf]) -> usize {
    for signal in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGHUP,
        nix::sys::signal::Signal::SIGQUIT,
        nix::sys::signal::Signal::SIGPIPE,
    ] {
        // SAFETY: SIG_IGN installs no handler code; nothing else in this process relies on
        // these signals.
        let _ = unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigIgn) };
    }
    let mut buf = [0u8; 64];
    let mut stdin = io::stdin().lock();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    dirs.iter().filter(|d| reap(d)).count()
}

/// Kills what is left in the cgroup at `dir` and removes it with its sub-cgroups. Returns
/// whether it was there.
pub fn reap(dir: &Path) -> bool {
    if !dir.exists() {
        return false;
    }
    let _ = crate::cgroupfs::cgroup::kill_and_remove(dir, Duration::from_secs(10));
    true
}
