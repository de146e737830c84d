//! Each process of a run, from the kernel's record of it when it ended: its command name,
//! parent, start and end, and what the kernel accounted to it (CPU time, faults, storage I/O),
//! as `getrusage(RUSAGE_SELF)` would say it. Read from the probes while the run goes (so the
//! kernel's buffer never fills with a busy run) and at its end.

use serde::{Deserialize, Serialize};

use crate::{
    Error,
    kernel::probe::{Probes, ProcessExit},
};

/// Most processes a report lists; beyond, they are counted in the run's totals only.
pub const MAX_PROCESSES: usize = 100_000;

/// One process of the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Process id.
    pub pid: u32,
    /// Its parent's.
    pub ppid: u32,
    /// Its command name (`comm`, at most 15 bytes).
    pub command: String,
    /// When it started, ns since the run started (0 for one older than the run).
    pub start_ns: u64,
    /// When it ended, ns since the run started.
    pub end_ns: u64,
    /// CPU time of all its threads (not its children's), as the scheduler charges it.
    pub cpu_time_ns: u64,
    /// Minor page faults.
    pub page_faults_minor: u64,
    /// Major page faults.
    pub page_faults_major: u64,
    /// Bytes it caused to be read from storage.
    pub io_read_bytes: u64,
    /// Bytes it wrote to storage (dirtied or written directly).
    pub io_write_bytes: u64,
    /// Its exit code as a shell shows it: the code, or 128 + the signal that killed it.
    pub exit_code: i32,
}

impl ProcessRecord {
    /// The record of `raw`, with times relative to `run_start_ns` (CLOCK_MONOTONIC).
    pub fn from_exit(raw: &ProcessExit, run_start_ns: u64) -> Self {
        let name_len = raw
            .comm
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(raw.comm.len());
        let signal = (raw.exit_code & 0x7f) as i32;
        Self {
            pid: raw.tgid,
            ppid: raw.ppid,
            command: String::from_utf8_lossy(&raw.comm[..name_len]).into_owned(),
            start_ns: raw.start_ns.saturating_sub(run_start_ns),
            end_ns: raw.end_ns.saturating_sub(run_start_ns),
            cpu_time_ns: raw.cpu_ns,
            page_faults_minor: raw.minor_faults,
            page_faults_major: raw.major_faults,
            io_read_bytes: raw.io_read_bytes,
            io_write_bytes: raw.io_write_bytes,
            exit_code: if signal != 0 {
                128 + signal
            } else {
                ((raw.exit_code >> 8) & 0xff) as i32
            },
        }
    }

    /// From start to end, ns.
    pub fn wall_time_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// Collecting a run's process records.
#[derive(Debug)]
pub struct ProcessWatch {
    run_id: u64,
    start_ns: u64,
    records: Vec<ProcessRecord>,
    beyond: u64,
}

/// CLOCK_MONOTONIC now, ns: the clock of the kernel's task start times.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid and writable.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

impl ProcessWatch {
    /// Starts collecting the processes of run `run_id` (its cgroup's id), from now.
    pub fn start(run_id: u64) -> Self {
        Self {
            run_id,
            start_ns: monotonic_ns(),
            records: Vec::new(),
            beyond: 0,
        }
    }

    /// Takes the records the kernel has sent since the last call.
    pub fn collect(&mut self, probes: &mut Probes) -> Result<(), Error> {
        for raw in probes.process_exits(self.run_id)? {
            if self.records.len() < MAX_PROCESSES {
                self.records
                    .push(ProcessRecord::from_exit(&raw, self.start_ns));
            } else {
                self.beyond += 1;
            }
        }
        Ok(())
    }

    /// Every record, in the order the processes ended, and a note when some were left out or
    /// none can be recorded here.
    pub fn finish(
        mut self,
        probes: &mut Probes,
    ) -> Result<(Vec<ProcessRecord>, Vec<String>), Error> {
        self.collect(probes)?;
        let mut notes = Vec::new();
        if let Some(why) = probes.processes_unavailable() {
            notes.push(format!("processes are not listed: {why}"));
        }
        if self.beyond > 0 {
            notes.push(format!(
                "processes lists the first {MAX_PROCESSES} processes; {} more ended, counted in \
                 the totals only",
                self.beyond
            ));
        }
        Ok((self.records, notes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_its_process_and_tells_codes_from_signals() {
        let mut raw = ProcessExit {
            tgid: 42,
            ppid: 1,
            start_ns: 1_500,
            end_ns: 9_000,
            cpu_ns: 7,
            exit_code: 3 << 8,
            ..ProcessExit::default()
        };
        raw.comm[..4].copy_from_slice(b"rust");
        let r = ProcessRecord::from_exit(&raw, 1_000);
        assert_eq!((r.pid, r.command.as_str(), r.exit_code), (42, "rust", 3));
        assert_eq!(
            (r.start_ns, r.end_ns, r.wall_time_ns()),
            (500, 8_000, 7_500)
        );
        raw.exit_code = libc::SIGKILL as u32;
        assert_eq!(ProcessRecord::from_exit(&raw, 0).exit_code, 128 + 9);
        raw.comm = *b"fifteen-chars-ab";
        assert_eq!(
            ProcessRecord::from_exit(&raw, 0).command,
            "fifteen-chars-ab"
        );
    }
}
