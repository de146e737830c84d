//! Each process of a run, from the kernel's record of it when it ended: its command name and
//! line, parent, start and end, and what the kernel accounted to it (CPU time, faults, storage I/O),
//! as `getrusage(RUSAGE_SELF)` would say it. Read from the probes while the run goes (so the
//! kernel's buffer never fills with a busy run) and at its end.

use serde::{Deserialize, Serialize};

use cleanroom_common::COMMAND_LINE_BYTES;

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
    /// Its command line, the arguments separated by spaces (quoted where they hold spaces or
    /// quotes), at most [`COMMAND_LINE_BYTES`] bytes of it; `None` when it was not taken (a
    /// process that neither ran a program nor was forked inside the run, or a kernel without
    /// the hook).
    pub command_line: Option<String>,
    /// Whether [`Self::command_line`] was cut short.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub command_line_truncated: bool,
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
    /// Network traffic of the sockets it owned (made, accepted, or last sent or received on),
    /// from the IP header on; `None` where the kernel cannot tell a socket's process.
    #[serde(default)]
    pub net: Option<NetTraffic>,
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
        let line_len = (raw.command_line_len as usize).min(COMMAND_LINE_BYTES);
        Self {
            pid: raw.tgid,
            ppid: raw.ppid,
            command: String::from_utf8_lossy(&raw.comm[..name_len]).into_owned(),
            command_line: (line_len > 0).then(|| command_line(&raw.command_line[..line_len])),
            command_line_truncated: raw.command_line_len as usize > COMMAND_LINE_BYTES,
            start_ns: raw.start_ns.saturating_sub(run_start_ns),
            end_ns: raw.end_ns.saturating_sub(run_start_ns),
            cpu_time_ns: raw.cpu_ns,
            page_faults_minor: raw.minor_faults,
            page_faults_major: raw.major_faults,
            io_read_bytes: raw.io_read_bytes,
            io_write_bytes: raw.io_write_bytes,
            net: Some(NetTraffic {
                tx_bytes: raw.net.tx_bytes,
                tx_packets: raw.net.tx_packets,
                rx_bytes: raw.net.rx_bytes,
                rx_packets: raw.net.rx_packets,
            }),
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

    /// The program it ran: the file name of its first argument, else its command name.
    pub fn executable(&self) -> &str {
        self.command_line
            .as_deref()
            .and_then(|line| first_word(line).rsplit('/').next())
            .filter(|name| !name.is_empty())
            .unwrap_or(&self.command)
    }
}

/// A process's network traffic, from the IP header on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetTraffic {
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
}

impl NetTraffic {
    /// Bytes both ways.
    pub fn bytes(&self) -> u64 {
        self.tx_bytes + self.rx_bytes
    }
}

/// What a report must say when the processes' network bytes fall short of the run's
/// (`run_bytes`, both ways) by more than 1%: traffic no listed process owned. Less is the
/// usual last ACK after a process ended, which the README describes.
pub fn net_note(processes: &[ProcessRecord], run_bytes: Option<u64>) -> Option<String> {
    let run_bytes = run_bytes?;
    let listed: u64 = processes
        .iter()
        .filter_map(|p| p.net.map(|n| n.bytes()))
        .sum();
    if processes.iter().any(|p| p.net.is_none()) || listed.saturating_mul(100) >= run_bytes * 99 {
        return None;
    }
    let rest = run_bytes - listed;
    Some(format!(
        "{} of the run's {} of network traffic is not in any process's net: traffic after its \
         process ended (the peer's last ACK), on sockets no process of the run used, or of \
         processes not listed",
        crate::units::human_bytes(rest),
        crate::units::human_bytes(run_bytes),
    ))
}

impl ProcessRecord {
    /// Its command line (else its command name) in at most `max` characters, cut with "…".
    pub fn shown(&self, max: usize) -> String {
        cut(
            self.command_line.as_deref().unwrap_or(&self.command),
            max,
            self.command_line_truncated,
        )
    }

    /// Like [`Self::shown`], the program named by its file name alone: `rustc --edition …`
    /// rather than `/home/ci/.rustup/toolchains/…/bin/rustc --edition …`.
    pub fn brief(&self, max: usize) -> String {
        let Some(line) = self.command_line.as_deref() else {
            return cut(&self.command, max, false);
        };
        let first = first_word(line);
        let quoted = usize::from(line.starts_with('\'')) * 2;
        let rest = line.get(first.len() + quoted..).unwrap_or("");
        let name = self.executable();
        let name = if name.contains([' ', '\'', '"']) {
            format!("'{}'", name.replace('\'', r"'\''"))
        } else {
            name.to_owned()
        };
        cut(&format!("{name}{rest}"), max, self.command_line_truncated)
    }
}

/// `text` in at most `max` characters, cut with "…".
pub fn cut_to(text: &str, max: usize) -> String {
    cut(text, max, false)
}

/// `line` in at most `max` characters, cut with "…" (also when it was cut before).
fn cut(line: &str, max: usize, truncated: bool) -> String {
    if line.chars().count() <= max && !truncated {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// One process in [`tree`]: how deep it is and what it and its descendants cost.
#[derive(Clone, Debug, PartialEq)]
pub struct TreeNode<'a> {
    /// The process.
    pub process: &'a ProcessRecord,
    /// 0 for a process whose parent is not in the run.
    pub depth: usize,
    /// CPU time of it and every descendant listed, ns.
    pub subtree_cpu_ns: u64,
    /// How many descendants are listed.
    pub descendants: usize,
}

/// The processes as a tree, depth first, each one's children in the order they started. A
/// process's parent is the listed process with its `ppid` alive when it started (pids are
/// reused); one whose parent is not listed is a root.
pub fn tree(processes: &[ProcessRecord]) -> Vec<TreeNode<'_>> {
    use std::collections::HashMap;
    let mut by_pid: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, p) in processes.iter().enumerate() {
        by_pid.entry(p.pid).or_default().push(i);
    }
    let parent_of = |i: usize| -> Option<usize> {
        let child = &processes[i];
        by_pid.get(&child.ppid)?.iter().copied().find(|&j| {
            j != i
                && processes[j].start_ns <= child.start_ns
                && child.start_ns <= processes[j].end_ns
        })
    };
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); processes.len()];
    let mut roots = Vec::new();
    for i in 0..processes.len() {
        match parent_of(i) {
            Some(j) => children[j].push(i),
            None => roots.push(i),
        }
    }
    let by_start = |v: &mut Vec<usize>| v.sort_by_key(|&i| (processes[i].start_ns, i));
    by_start(&mut roots);
    children.iter_mut().for_each(by_start);
    // Depth first without recursion (a chain can be as long as the list).
    let mut order: Vec<(usize, usize)> = Vec::with_capacity(processes.len());
    let mut stack: Vec<(usize, usize)> = roots.iter().rev().map(|&i| (i, 0)).collect();
    while let Some((i, depth)) = stack.pop() {
        order.push((i, depth));
        stack.extend(children[i].iter().rev().map(|&c| (c, depth + 1)));
    }
    // Subtree sums: every descendant comes after its ancestor in `order`.
    let mut cpu: Vec<u64> = processes.iter().map(|p| p.cpu_time_ns).collect();
    let mut count = vec![0usize; processes.len()];
    for &(i, _) in order.iter().rev() {
        for &c in &children[i] {
            cpu[i] += cpu[c];
            count[i] += 1 + count[c];
        }
    }
    order
        .into_iter()
        .map(|(i, depth)| TreeNode {
            process: &processes[i],
            depth,
            subtree_cpu_ns: cpu[i],
            descendants: count[i],
        })
        .collect()
}

/// A command line as the kernel keeps it (arguments, each NUL-terminated) as one line: the
/// arguments separated by spaces, single-quoted where they are empty or hold spaces or quotes.
fn command_line(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    raw.split(|b| *b == 0)
        .map(|arg| {
            let arg = String::from_utf8_lossy(arg);
            if !arg.is_empty()
                && !arg
                    .chars()
                    .any(|c| c.is_whitespace() || c == '\'' || c == '"' || c.is_control())
            {
                return arg.into_owned();
            }
            let escaped: String = arg
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect::<String>()
                .replace('\'', r"'\''");
            format!("'{escaped}'")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first argument of a line made by [`command_line`].
fn first_word(line: &str) -> &str {
    if let Some(quoted) = line.strip_prefix('\'') {
        return quoted.split('\'').next().unwrap_or("");
    }
    line.split(' ').next().unwrap_or("")
}

/// The processes of one program, together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandGroup {
    /// The program ([`ProcessRecord::executable`]).
    pub command: String,
    /// How many processes.
    pub count: usize,
    /// Their CPU time, ns.
    pub cpu_time_ns: u64,
    /// Their wall times added, ns.
    pub wall_time_ns: u64,
    /// Their storage bytes written.
    pub io_write_bytes: u64,
    /// Their network bytes both ways; `None` where the kernel cannot tell a socket's process.
    pub net_bytes: Option<u64>,
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

/// The processes grouped by the program they ran, the most CPU first.
pub fn by_command(processes: &[ProcessRecord]) -> Vec<CommandGroup> {
    let mut groups: std::collections::BTreeMap<&str, CommandGroup> = Default::default();
    for p in processes {
        let g = groups
            .entry(p.executable())
            .or_insert_with(|| CommandGroup {
                command: p.executable().to_owned(),
                count: 0,
                cpu_time_ns: 0,
                wall_time_ns: 0,
                io_write_bytes: 0,
                net_bytes: Some(0),
            });
        g.count += 1;
        g.cpu_time_ns += p.cpu_time_ns;
        g.wall_time_ns += p.wall_time_ns();
        g.io_write_bytes += p.io_write_bytes;
        g.net_bytes = g.net_bytes.zip(p.net).map(|(sum, n)| sum + n.bytes());
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

/// CLOCK_MONOTONIC now, ns: the clock of the kernel's task start times and `bpf_ktime_get_ns`.
pub(crate) fn monotonic_ns() -> u64 {
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
        } else {
            if let Some(why) = probes.command_lines_unavailable() {
                notes.push(format!("processes are listed without command lines: {why}"));
            }
            if let Some(why) = probes.process_net_unavailable() {
                self.records.iter_mut().for_each(|p| p.net = None);
                notes.push(format!(
                    "processes are listed without their network traffic: {why}"
                ));
            } else if let Some(what) = probes.process_net_partial() {
                notes.push(format!("processes' network traffic: {what}"));
            }
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
            command_line: None,
            command_line_truncated: false,
            start_ns: start,
            end_ns: end,
            cpu_time_ns: cpu,
            page_faults_minor: 0,
            page_faults_major: 0,
            io_read_bytes: 0,
            io_write_bytes: 10,
            net: None,
            exit_code: 0,
        }
    }

    #[test]
    fn traffic_no_process_owned_is_said() {
        let mut owner = process(1, "curl", 0, 0, 1);
        owner.net = Some(NetTraffic {
            tx_bytes: 600,
            rx_bytes: 300,
            ..NetTraffic::default()
        });
        assert_eq!(net_note(std::slice::from_ref(&owner), Some(900)), None);
        assert_eq!(net_note(std::slice::from_ref(&owner), Some(909)), None);
        let note = net_note(std::slice::from_ref(&owner), Some(1_000)).expect("a note");
        assert!(note.starts_with("100 B of the run's 1000 B"), "{note}");
        // Unknown per process (an older kernel): nothing to compare.
        let unknown = process(2, "sh", 0, 0, 1);
        assert_eq!(net_note(&[owner, unknown], Some(1_000)), None);
        let groups = by_command(&[process(3, "sh", 0, 0, 1)]);
        assert_eq!(groups[0].net_bytes, None);
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

    #[test]
    fn the_tree_nests_children_under_the_parent_alive_when_they_started() {
        let mut ps = vec![
            process(10, "sh", 1, 0, 100),
            process(11, "make", 2, 5, 90),
            process(12, "cc", 30, 10, 20),
            process(13, "cc", 40, 30, 40),
            process(20, "orphan", 5, 50, 60),
            // pid 11 again, later: its child must not go under the first 11.
            process(11, "late", 7, 95, 99),
            process(14, "child-of-late", 9, 96, 97),
        ];
        for (i, ppid) in [(0, 1), (1, 10), (2, 11), (3, 11), (4, 99), (5, 10), (6, 11)] {
            ps[i].ppid = ppid;
        }
        let t = tree(&ps);
        let shape: Vec<(u32, usize, u64, usize)> = t
            .iter()
            .map(|n| (n.process.pid, n.depth, n.subtree_cpu_ns, n.descendants))
            .collect();
        assert_eq!(
            shape,
            [
                (10, 0, 89, 5),
                (11, 1, 72, 2),
                (12, 2, 30, 0),
                (13, 2, 40, 0),
                (11, 1, 16, 1),
                (14, 2, 9, 0),
                (20, 0, 5, 0),
            ]
        );
        // A long chain does not recurse.
        let chain: Vec<ProcessRecord> = (1..50_000u32)
            .map(|pid| {
                let mut p = process(pid, "x", 1, u64::from(pid), 100_000);
                p.ppid = pid - 1;
                p
            })
            .collect();
        let t = tree(&chain);
        assert_eq!(
            (t[0].descendants, t.last().unwrap().depth),
            (49_998, 49_998)
        );
    }

    #[test]
    fn a_command_line_is_quoted_where_needed_and_names_the_program() {
        let mut raw = ProcessExit::default();
        raw.comm[..2].copy_from_slice(b"sh");
        let r = ProcessRecord::from_exit(&raw, 0);
        assert_eq!((r.command_line.as_deref(), r.executable()), (None, "sh"));
        let line = b"/usr/bin/rustc\0--crate-name\0a b\0\0it's\0";
        raw.command_line[..line.len()].copy_from_slice(line);
        raw.command_line_len = line.len() as u32;
        let r = ProcessRecord::from_exit(&raw, 0);
        assert_eq!(
            r.command_line.as_deref(),
            Some(r"/usr/bin/rustc --crate-name 'a b' '' 'it'\''s'")
        );
        assert!(!r.command_line_truncated);
        assert_eq!(r.executable(), "rustc");
        raw.command_line_len = 4_000;
        let r = ProcessRecord::from_exit(&raw, 0);
        assert!(r.command_line_truncated);
        assert!(
            r.command_line
                .as_deref()
                .unwrap()
                .starts_with("/usr/bin/rustc --crate-name")
        );
        assert_eq!(first_word("'/a b/x y' z"), "/a b/x y");
        assert_eq!(r.brief(20), "rustc --crate-name …");
        raw.command_line_len = line.len() as u32;
        let r = ProcessRecord::from_exit(&raw, 0);
        assert_eq!(r.brief(100), r"rustc --crate-name 'a b' '' 'it'\''s'");
        let line = b"/a b/c d\0x\0";
        raw.command_line[..line.len()].copy_from_slice(line);
        raw.command_line_len = line.len() as u32;
        assert_eq!(ProcessRecord::from_exit(&raw, 0).brief(100), "'c d' x");
    }
}
