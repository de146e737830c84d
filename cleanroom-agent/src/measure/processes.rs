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

/// The processes of one command name, together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandGroup {
    /// The command name.
    pub command: String,
    /// How many processes.
    pub count: usize,
    /// Their CPU time, ns.
    pub cpu_time_ns: u64,
    /// Their wall times added, ns.
    pub wall_time_ns: u64,
    /// Their storage bytes written.
    pub io_write_bytes: u64,
}

/// The `n` processes with the most CPU time, most first.
pub fn top_by_cpu(processes: &[ProcessRecord], n: usize) -> Vec<&ProcessRecord> {
    let mut sorted: Vec<&ProcessRecord> = processes.iter().collect();
    sorted.sort_by_key(|p| std::cmp::Reverse(p.cpu_time_ns));
    sorted.truncate(n);
    sorted
}

/// The `n` processes that lasted longest, longest first.
pub fn top_by_wall(processes: &[ProcessRecord], n: usize) -> Vec<&ProcessRecord> {
    let mut sorted: Vec<&ProcessRecord> = processes.iter().collect();
    sorted.sort_by_key(|p| std::cmp::Reverse(p.wall_time_ns()));
    sorted.truncate(n);
    sorted
}

/// The processes grouped by command name, the most CPU first.
pub fn by_command(processes: &[ProcessRecord]) -> Vec<CommandGroup> {
    let mut groups: std::collections::BTreeMap<&str, CommandGroup> = Default::default();
    for p in processes {
        let g = groups.entry(&p.command).or_insert_with(|| CommandGroup {
            command: p.command.clone(),
            count: 0,
            cpu_time_ns: 0,
            wall_time_ns: 0,
            io_write_bytes: 0,
        });
        g.count += 1;
        g.cpu_time_ns += p.cpu_time_ns;
        g.wall_time_ns += p.wall_time_ns();
        g.io_write_bytes += p.io_write_bytes;
    }
    let mut out: Vec<CommandGroup> = groups.into_values().collect();
    out.sort_by_key(|g| std::cmp::Reverse(g.cpu_time_ns));
    out
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

    fn process(pid: u32, command: &str, cpu: u64, start: u64, end: u64) -> ProcessRecord {
        ProcessRecord {
            pid,
            ppid: 1,
            command: command.into(),
            start_ns: start,
            end_ns: end,
            cpu_time_ns: cpu,
            page_faults_minor: 0,
            page_faults_major: 0,
            io_read_bytes: 0,
            io_write_bytes: 10,
            exit_code: 0,
        }
    }

    #[test]
    fn tops_and_groups_rank_by_cpu_and_wall_time() {
        let ps = [
            process(1, "rustc", 50, 0, 100),
            process(2, "rustc", 70, 0, 10),
            process(3, "sh", 5, 0, 1_000),
        ];
        let cpu: Vec<u32> = top_by_cpu(&ps, 2).iter().map(|p| p.pid).collect();
        assert_eq!(cpu, [2, 1]);
        let wall: Vec<u32> = top_by_wall(&ps, 5).iter().map(|p| p.pid).collect();
        assert_eq!(wall, [3, 1, 2]);
        let groups = by_command(&ps);
        assert_eq!(
            (
                groups[0].command.as_str(),
                groups[0].count,
                groups[0].cpu_time_ns
            ),
            ("rustc", 2, 120)
        );
        assert_eq!(
            (groups[0].wall_time_ns, groups[0].io_write_bytes),
            (110, 20)
        );
        assert_eq!(groups[1].command, "sh");
    }

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
