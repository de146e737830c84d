//! The signals that end a run: received by Cleanroom, noted, and passed on to the command.

use std::io;

use tokio::signal::unix::{SignalKind, signal};

/// The signals that end a run: received here, passed on to the command.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts receiving SIGINT, SIGTERM, SIGHUP and SIGQUIT here instead of dying of them.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// A signal that already arrived, if any; does not wait.
    pub async fn pending(&mut self) -> Option<(&'static str, i32)> {
        tokio::select! {
            biased;
            sig = self.next() => Some(sig),
            () = std::future::ready(()) => None,
        }
    }

    /// The next signal received: its name and number.
    pub async fn next(&mut self) -> (&'static str, i32) {
        tokio::select! {
            _ = self.int.recv() => ("SIGINT", libc::SIGINT),
            _ = self.term.recv() => ("SIGTERM", libc::SIGTERM),
            _ = self.hup.recv() => ("SIGHUP", libc::SIGHUP),
            _ = self.quit.recv() => ("SIGQUIT", libc::SIGQUIT),
        }
    }

    /// Ctrl-C and Ctrl-\ on a terminal go to the whole foreground process group, the command
    /// included; passing them on again would deliver them twice.
    pub fn delivered_by_terminal(&self, signal: i32) -> bool {
        if signal != libc::SIGINT && signal != libc::SIGQUIT {
            return false;
        }
        // SAFETY: plain queries on fd 0 and on this process; no memory is passed.
        unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
    }
}
