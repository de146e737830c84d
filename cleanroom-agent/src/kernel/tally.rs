//! Summing what the kernel counted into groups of cgroups — a run's subtree, or each watched
//! cgroup's — in one pass over each map, however many groups are read at once.
//!
//! Pure: map entries in, sums out ([`crate::kernel::probe`] does the reading). A cgroup may belong to
//! several groups (a watched cgroup inside another one's subtree); its figures then count in
//! each.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cleanroom_common::{BlockKey, BlockStats, CgroupStats, HistKey, Histogram};

use crate::{measure::model, metric::Latency};

/// What the kernel counted for a set of cgroups.
#[derive(Clone, Debug, Default)]
pub struct Counted {
    /// Counters summed over CPUs and cgroups.
    pub stats: CgroupStats,
    /// Block counters per device (kernel `dev_t` encoding).
    pub block: BTreeMap<u32, BlockStats>,
    /// Histograms per latency (all devices together); a latency without one had no event.
    pub latencies: BTreeMap<Latency, Histogram>,
    /// Block latency histograms per device.
    pub block_latencies: BTreeMap<(u32, Latency), Histogram>,
}

impl Counted {
    /// Adds what `other` counted: the figures of cgroups that are gone, kept by whoever still
    /// measures the group they belonged to after their map entries are freed.
    pub fn absorb(&mut self, other: &Counted) {
        self.stats = self.stats.wrapping_add(other.stats);
        for (dev, b) in &other.block {
            let slot = self.block.entry(*dev).or_default();
            *slot = slot.wrapping_add(*b);
        }
        for (latency, h) in &other.latencies {
            let total = self
                .latencies
                .entry(*latency)
                .or_insert_with(model::empty_histogram);
            *total = model::merge(total, h);
        }
        for (key, h) in &other.block_latencies {
            let total = self
                .block_latencies
                .entry(*key)
                .or_insert_with(model::empty_histogram);
            *total = model::merge(total, h);
        }
    }
}

/// Sums map entries into the groups their cgroup belongs to.
#[derive(Debug)]
pub struct Tally {
    member_of: HashMap<u64, Vec<usize>>,
    sums: Vec<Counted>,
}

impl Tally {
    /// Sums for `groups`, each a set of cgroup ids, in that order.
    pub fn new(groups: &[BTreeSet<u64>]) -> Self {
        let mut member_of: HashMap<u64, Vec<usize>> = HashMap::new();
        for (index, group) in groups.iter().enumerate() {
            for id in group {
                member_of.entry(*id).or_default().push(index);
            }
        }
        Self {
            member_of,
            sums: groups.iter().map(|_| Counted::default()).collect(),
        }
    }

    /// Every cgroup of any group, once: the keys worth looking up in a map keyed by cgroup.
    pub fn cgroups(&self) -> impl Iterator<Item = u64> + '_ {
        self.member_of.keys().copied()
    }

    /// Whether cgroup `id` belongs to any group.
    pub fn has(&self, id: u64) -> bool {
        self.member_of.contains_key(&id)
    }

    /// Cgroup `id`'s counters (already summed over CPUs).
    pub fn add_stats(&mut self, id: u64, stats: CgroupStats) {
        for &g in self.member_of.get(&id).into_iter().flatten() {
            let sum = &mut self.sums[g].stats;
            *sum = sum.wrapping_add(stats);
        }
    }

    /// One block map entry (already summed over CPUs).
    pub fn add_block(&mut self, key: BlockKey, stats: BlockStats) {
        for &g in self.member_of.get(&key.cgroup_id).into_iter().flatten() {
            let slot = self.sums[g].block.entry(key.dev).or_default();
            *slot = slot.wrapping_add(stats);
        }
    }

    /// One histogram map entry; a kind no latency metric has is left out.
    pub fn add_histogram(&mut self, key: HistKey, histogram: &Histogram) {
        let Some(latency) = Latency::ALL.iter().find(|l| l.kind() == key.kind).copied() else {
            return;
        };
        for &g in self.member_of.get(&key.cgroup_id).into_iter().flatten() {
            let sums = &mut self.sums[g];
            let total = sums
                .latencies
                .entry(latency)
                .or_insert_with(model::empty_histogram);
            *total = model::merge(total, histogram);
            if matches!(latency, Latency::BlockRead | Latency::BlockWrite) {
                let per_dev = sums
                    .block_latencies
                    .entry((key.dev, latency))
                    .or_insert_with(model::empty_histogram);
                *per_dev = model::merge(per_dev, histogram);
            }
        }
    }

    /// The sums, one per group, in the order the groups were given.
    pub fn finish(self) -> Vec<Counted> {
        self.sums
    }
}

/// Pure: each root's subtree — the root and every cgroup below it — from the kernel's record
/// of made cgroups (`(id, parent id)` pairs), in the order of `roots`.
pub fn subtrees(nodes: impl IntoIterator<Item = (u64, u64)>, roots: &[u64]) -> Vec<BTreeSet<u64>> {
    let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
    for (id, parent) in nodes {
        children.entry(parent).or_default().push(id);
    }
    roots
        .iter()
        .map(|&root| {
            let mut out = BTreeSet::from([root]);
            let mut pending = vec![root];
            while let Some(id) = pending.pop() {
                for child in children.get(&id).into_iter().flatten() {
                    if out.insert(*child) {
                        pending.push(*child);
                    }
                }
            }
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(cpu: u64) -> CgroupStats {
        CgroupStats {
            cpu_time_ns: cpu,
            ..CgroupStats::default()
        }
    }

    fn block(read: u64) -> BlockStats {
        BlockStats {
            read_bytes: read,
            ..BlockStats::default()
        }
    }

    #[test]
    fn entries_count_in_every_group_of_their_cgroup_and_nowhere_else() {
        let groups = [
            BTreeSet::from([1, 2]),
            BTreeSet::from([2, 3]),
            BTreeSet::new(),
        ];
        let mut tally = Tally::new(&groups);
        let mut ids: Vec<u64> = tally.cgroups().collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2, 3]);
        tally.add_stats(1, stats(10));
        tally.add_stats(2, stats(100));
        tally.add_stats(3, stats(1000));
        tally.add_stats(9, stats(5));
        let key = |cgroup_id, dev| BlockKey {
            cgroup_id,
            dev,
            _pad: 0,
        };
        tally.add_block(key(2, 7), block(4096));
        tally.add_block(key(3, 7), block(512));
        tally.add_block(key(3, 8), block(1));
        tally.add_block(key(9, 7), block(99));
        let sums = tally.finish();
        assert_eq!(
            sums.iter().map(|c| c.stats.cpu_time_ns).collect::<Vec<_>>(),
            [110, 1100, 0]
        );
        assert_eq!(sums[0].block[&7].read_bytes, 4096);
        assert_eq!(sums[1].block[&7].read_bytes, 4608);
        assert_eq!(sums[1].block[&8].read_bytes, 1);
        assert!(sums[2].block.is_empty());
        // A group nothing happened in holds no histogram (an empty one is implied).
        assert!(sums[2].latencies.is_empty());
    }

    #[test]
    fn histograms_go_to_their_latency_and_block_ones_to_their_device() {
        let groups = [BTreeSet::from([1])];
        let mut tally = Tally::new(&groups);
        let mut h = model::empty_histogram();
        h.count = 3;
        h.buckets[2] = 3;
        let block_read = Latency::BlockRead.kind();
        tally.add_histogram(
            HistKey {
                cgroup_id: 1,
                kind: block_read,
                dev: 7,
            },
            &h,
        );
        tally.add_histogram(
            HistKey {
                cgroup_id: 1,
                kind: block_read,
                dev: 7,
            },
            &h,
        );
        tally.add_histogram(
            HistKey {
                cgroup_id: 1,
                kind: u32::MAX,
                dev: 0,
            },
            &h,
        );
        let sums = tally.finish();
        assert_eq!(sums[0].latencies[&Latency::BlockRead].count, 6);
        assert_eq!(sums[0].block_latencies[&(7, Latency::BlockRead)].count, 6);
        assert!(!sums[0].latencies.contains_key(&Latency::Runqueue));
    }

    #[test]
    fn absorbing_adds_counters_blocks_and_histograms() {
        let mut tally = Tally::new(&[BTreeSet::from([1]), BTreeSet::from([2])]);
        tally.add_stats(1, stats(10));
        tally.add_stats(2, stats(5));
        tally.add_block(
            BlockKey {
                cgroup_id: 1,
                dev: 7,
                _pad: 0,
            },
            block(100),
        );
        tally.add_block(
            BlockKey {
                cgroup_id: 2,
                dev: 7,
                _pad: 0,
            },
            block(1),
        );
        tally.add_block(
            BlockKey {
                cgroup_id: 2,
                dev: 8,
                _pad: 0,
            },
            block(2),
        );
        let [mut a, b]: [Counted; 2] = tally.finish().try_into().unwrap();
        a.absorb(&b);
        assert_eq!(a.stats.cpu_time_ns, 15);
        assert_eq!(a.block[&7].read_bytes, 101);
        assert_eq!(a.block[&8].read_bytes, 2);
    }

    #[test]
    fn subtrees_follow_parents_down_from_each_root() {
        let nodes = [(2, 1), (3, 2), (4, 1), (5, 9), (6, 5)];
        assert_eq!(
            subtrees(nodes, &[1, 5, 8]),
            vec![
                BTreeSet::from([1, 2, 3, 4]),
                BTreeSet::from([5, 6]),
                BTreeSet::from([8])
            ]
        );
    }
}
