//! A cgroup's counters on one CPU from its map entry and that CPU's pending copies, exact even
//! when the CPU adds a copy to the entry while they are read.
//!
//! The hottest hooks, packets, forks and exits count into per-CPU copies for the cgroup a CPU
//! counted last, and add a copy to the cgroup's entry in `CGROUP_STATS` when an event of
//! another cgroup takes it. A reader sees the entry and the copies at different moments, so a
//! copy added in between would be in neither, or in both. The entry is therefore read before
//! and after the copies: where a copy still held the cgroup, its counters were not added yet
//! when the copy was read, nor when the entry was read before it (the entry read first plus the
//! copy); where it did not, whatever it had held was added before the copy was read, so the
//! entry read after has it. Each kind of copy chooses for its own fields. A cgroup that counts
//! nothing more — one removed, or a run whose processes are gone — is read exactly; a live one
//! is never read above what it counted.
//!
//! Pure: values in, counters out ([`crate::kernel::probe`] does the reading).

use cleanroom_common::{
    CgroupStats, ExitPending, ForkPending, NetPending, PendingCounters, PendingSet,
};

/// One CPU's pending copies, as read.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuPending {
    /// The scheduler's and page faults' copies (two cgroups).
    pub stats: PendingSet,
    /// The packet copy.
    pub net: NetPending,
    /// The fork copy.
    pub forks: ForkPending,
    /// The exit copy.
    pub exits: ExitPending,
}

impl CpuPending {
    /// Whether one of the copies holds cgroup `id`.
    pub fn holds(&self, id: u64) -> bool {
        self.stats.ways.iter().any(|w| w.cgroup_id == id)
            || self.net.cgroup_id == id
            || self.forks.cgroup_id == id
            || self.exits.cgroup_id == id
    }
}

/// Cgroup `id`'s counters on one CPU: `before` and `after` are its entry there (zero when it
/// had none) read before and after that CPU's copies `pending`.
pub fn on_cpu(
    id: u64,
    before: &CgroupStats,
    pending: &CpuPending,
    after: &CgroupStats,
) -> CgroupStats {
    let mut stats = *after;
    if let Some(way) = pending.stats.ways.iter().find(|w| w.cgroup_id == id) {
        take(&mut stats, before, way);
    }
    if pending.net.cgroup_id == id {
        take(&mut stats, before, &pending.net);
    }
    if pending.forks.cgroup_id == id {
        take(&mut stats, before, &pending.forks.counters);
    }
    if pending.exits.cgroup_id == id {
        take(&mut stats, before, &pending.exits.counters);
    }
    stats
}

/// Sets the fields of `stats` that `C` keeps to those of `before`, and adds `counters`.
fn take<C: PendingCounters>(stats: &mut CgroupStats, before: &CgroupStats, counters: &C) {
    C::take_fields(stats, before);
    counters.add_to(stats);
}

#[cfg(test)]
mod tests {
    use cleanroom_common::{CgroupPending, ExitCounts, ForkCounts, PendingStats};

    use super::*;

    const X: u64 = 7;
    const OTHER: u64 = 9;

    /// The fields of `s`, in order.
    fn fields(s: &CgroupStats) -> [u64; 18] {
        // SAFETY: `CgroupStats` is `repr(C)` and made of exactly 18 `u64`s (asserted where it
        // is defined), so it has the layout of `[u64; 18]`.
        unsafe { core::mem::transmute::<CgroupStats, [u64; 18]>(*s) }
    }

    fn stats_from(f: [u64; 18]) -> CgroupStats {
        // SAFETY: as in `fields`; every bit pattern is a valid `CgroupStats`.
        unsafe { core::mem::transmute::<[u64; 18], CgroupStats>(f) }
    }

    /// Copies holding `id` in every kind, with `n` in every counter.
    fn copies_of(id: u64, n: u64) -> CpuPending {
        let mut p = CpuPending::default();
        p.stats.ways[1] = PendingStats {
            cgroup_id: id,
            cpu_time_ns: n,
            cpu_time_updates: n,
            switches_voluntary: n,
            switches_involuntary: n,
            page_faults_user: n,
            page_faults_kernel: n,
            ..PendingStats::default()
        };
        p.net = NetPending {
            cgroup_id: id,
            rx_bytes: n,
            tx_bytes: n,
            rx_packets: n,
            tx_packets: n,
            ..NetPending::default()
        };
        p.forks = CgroupPending {
            cgroup_id: id,
            counters: ForkCounts {
                processes_forked: n,
            },
        };
        p.exits = CgroupPending {
            cgroup_id: id,
            counters: ExitCounts {
                page_faults_major: n,
                processes_exited: n,
                io_read_bytes: n,
                io_write_bytes: n,
                io_cancelled_write_bytes: n,
                process_peak_rss_pages: n,
            },
        };
        p
    }

    /// An entry with `n` in every counter.
    fn entry(n: u64) -> CgroupStats {
        stats_from([n; 18])
    }

    /// `entry` after a CPU added its copies `pending` of cgroup `X` to it.
    fn added(entry: CgroupStats, pending: &CpuPending) -> CgroupStats {
        let mut stats = entry;
        for way in &pending.stats.ways {
            way.add_to(&mut stats);
        }
        pending.net.add_to(&mut stats);
        pending.forks.add_to(&mut stats);
        pending.exits.add_to(&mut stats);
        stats
    }

    /// A cgroup that counts nothing more, 5 in its entry and 3 in a CPU's copies: read the same
    /// whenever the CPU adds the copies to the entry — before the read, between the entry's
    /// first read and the copies', after the copies', or not at all.
    #[test]
    fn a_copy_added_at_any_moment_is_counted_once() {
        let copies = copies_of(X, 3);
        let whole = added(entry(5), &copies);
        let cases = [
            ("added before", whole, CpuPending::default(), whole),
            (
                "added after the entry",
                entry(5),
                copies_of(OTHER, 1),
                whole,
            ),
            ("added after the copies", entry(5), copies, whole),
            ("not added", entry(5), copies, entry(5)),
        ];
        for (case, before, pending, after) in cases {
            assert_eq!(on_cpu(X, &before, &pending, &after), whole, "{case}");
        }
    }

    /// A live cgroup's copy added to its entry between the reads and taken again by it: what
    /// was added is read later, never twice.
    #[test]
    fn a_copy_taken_again_after_it_was_added_is_never_counted_twice() {
        // 5 in the entry and 3 pending, added; then 2 more pending.
        let then = copies_of(X, 2);
        let read = on_cpu(X, &entry(5), &then, &added(entry(5), &copies_of(X, 3)));
        assert_eq!(
            read,
            added(entry(5), &then),
            "short until the next read, not over"
        );
    }

    /// Each kind of copy takes from the entry exactly the fields it adds to.
    #[test]
    fn each_copy_takes_the_fields_it_adds() {
        /// A kind's name, what it adds to an entry, and how it takes its fields from one.
        type Kind = (
            &'static str,
            fn(&mut CgroupStats),
            fn(&mut CgroupStats, &CgroupStats),
        );
        let kinds: [Kind; 4] = [
            (
                "stats",
                |s| copies_of(X, 1).stats.ways[1].add_to(s),
                PendingStats::take_fields,
            ),
            (
                "net",
                |s| copies_of(X, 1).net.add_to(s),
                NetPending::take_fields,
            ),
            (
                "forks",
                |s| copies_of(X, 1).forks.add_to(s),
                ForkCounts::take_fields,
            ),
            (
                "exits",
                |s| copies_of(X, 1).exits.add_to(s),
                ExitCounts::take_fields,
            ),
        ];
        for (kind, add, take) in kinds {
            let mut added = CgroupStats::default();
            add(&mut added);
            let mut taken = stats_from([u64::MAX; 18]);
            take(&mut taken, &CgroupStats::default());
            let adds = fields(&added).map(|f| f != 0);
            let takes = fields(&taken).map(|f| f == 0);
            assert_eq!(adds, takes, "{kind}");
            assert!(adds.iter().any(|a| *a), "{kind} adds something");
        }
    }
}
