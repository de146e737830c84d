//! The cgroups the agent watches, each measured by a [`Session`] under the rule that picked it,
//! and one tick over all of them: look for cgroups that appeared or went, read every watched
//! subtree in one pass over the maps, free the map entries of cgroups that are gone.
//!
//! A sub-cgroup of a watched cgroup that is removed keeps counting in its watched cgroup: its
//! figures are folded into the watch's `retired` sum before its map entries are freed. Map
//! entries of any other removed cgroup (watched or not: the kernel programs count every cgroup)
//! are freed on the tick after its removal, so a host that makes and removes cgroups all day
//! keeps flat map use.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    ffi::OsStr,
    path::{Path, PathBuf},
    time::Duration,
};

use super::profiling::Profiling;
use crate::{
    Error,
    cgroupfs::cgroup::Target,
    cgroupfs::watch::{RuleId, WatchRule, Watcher},
    config::{CleanroomConfig, PerformanceMonitoring},
    judge::analyze::{self, ThresholdSpec},
    kernel::probe::{Counted, Probes, SamplingRates},
    kernel::tally,
    measure::session::{End, Figures, Session, SessionOptions, Tick},
    profile::Profile,
};

/// The most points a watched cgroup's series keeps: a watch can last for days, and hundreds
/// run at once.
pub const MAX_POINTS: usize = 48;

/// A cgroup's v2 id (its inode number in cgroupfs): how the kernel programs key it, and how the
/// agent's API names a live cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct CgroupId(pub u64);

/// Why the agent stopped watching a cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The cgroup was removed.
    Removed,
    /// The agent is stopping.
    AgentStopped,
    /// A reloaded configuration no longer matches it.
    Unwatched,
}

impl Ended {
    /// As the report's tag and event say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Removed => "removed",
            Ended::AgentStopped => "agent_stopped",
            Ended::Unwatched => "unwatched",
        }
    }
}

/// One watched cgroup.
#[derive(Debug)]
pub struct Watch {
    /// Its path relative to the v2 mount, e.g. `docker/abc`.
    pub relative: PathBuf,
    /// The rule that picked it, as it was when it was picked.
    pub rule: WatchRule,
    /// Its thresholds and SLOs, as a run's configuration, for judging.
    pub config: CleanroomConfig,
    /// Thresholds that cannot apply to a watched cgroup.
    pub not_applicable: Vec<String>,
    /// The measuring.
    pub session: Session,
    /// What sub-cgroups that are gone counted, their map entries freed.
    retired: Counted,
    /// When its rule profiles it: what its report must say of the profiles (those this host
    /// could not take).
    profiled: Option<Vec<String>>,
}

/// A watch that ended, with its figures.
#[derive(Debug)]
pub struct Finished {
    /// The cgroup's id.
    pub id: CgroupId,
    /// Its v2 directory.
    pub path: PathBuf,
    /// The watch.
    pub relative: PathBuf,
    /// Its rule.
    pub rule: WatchRule,
    /// Its judging configuration.
    pub config: CleanroomConfig,
    /// Thresholds that cannot apply.
    pub not_applicable: Vec<String>,
    /// Why it ended.
    pub ended: Ended,
    /// The figures.
    pub figures: Figures,
    /// Its profiles, when its rule asked for them and the host could take them.
    pub profile: Option<Profile>,
    /// What the report must say of the profiles.
    pub profile_notes: Vec<String>,
}

/// What one tick did.
#[derive(Debug, Default)]
pub struct TickReport {
    /// Cgroups picked up.
    pub started: Vec<CgroupId>,
    /// Each watched cgroup's tick (its interval point and events).
    pub ticks: Vec<(CgroupId, Tick)>,
    /// Watches that ended.
    pub finished: Vec<Finished>,
    /// Map entries of removed cgroups freed.
    pub freed: usize,
}

/// Every watched cgroup.
#[derive(Debug)]
pub struct Watched {
    mount: PathBuf,
    watcher: Watcher,
    interval: Duration,
    watches: BTreeMap<CgroupId, Watch>,
    profiling: Profiling,
}

impl Watched {
    /// Nothing watched yet: cgroups below `mount` (the v2 mount) are picked by `watcher` on
    /// each tick, sampled every `interval`, and profiled at `rates` when their rule asks.
    pub fn new(mount: PathBuf, watcher: Watcher, interval: Duration, rates: SamplingRates) -> Self {
        Self {
            mount,
            watcher,
            interval,
            watches: BTreeMap::new(),
            profiling: Profiling::new(rates),
        }
    }

    /// The live watches, by id.
    pub fn watches(&self) -> &BTreeMap<CgroupId, Watch> {
        &self.watches
    }

    /// The sampling interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The agent's profiling, which the clients' runs share.
    pub fn profiling(&mut self) -> &mut Profiling {
        &mut self.profiling
    }

    /// Takes new rules (a reloaded configuration): cgroups picked from now on follow them; a
    /// watched cgroup no rule matches any more ends at the next tick.
    pub fn set_watcher(&mut self, watcher: Watcher, rates: SamplingRates) {
        self.watcher = watcher;
        self.profiling.set_rates(rates);
    }

    /// Looks for new and removed cgroups, samples every watched one in one pass over the maps,
    /// ends the watches of cgroups that are gone (or no longer matched), and frees the map
    /// entries of every removed cgroup.
    ///
    /// The subtrees of `keep` (runs measured elsewhere: the clients' runs) are left in the maps
    /// for their own sessions to read, removed sub-cgroups too.
    pub fn tick(&mut self, probes: &mut Probes, keep: &[u64]) -> Result<TickReport, Error> {
        let mut report = TickReport::default();
        let tree = probes.tree()?;
        let removed: BTreeSet<u64> = tree
            .iter()
            .filter(|(_, node)| node.removed != 0)
            .map(|(id, _)| *id)
            .collect();
        let found = self.watcher.scan(&self.mount);
        let matched: HashSet<&OsStr> = found.iter().map(|(p, _)| p.as_os_str()).collect();
        let mut ending: Vec<(CgroupId, Ended)> = Vec::new();
        for (id, watch) in &self.watches {
            // The kernel's record says it went (even if a new cgroup took its name since);
            // else a path the scan no longer matches went or is no longer watched.
            if removed.contains(&id.0) {
                ending.push((*id, Ended::Removed));
            } else if !matched.contains(watch.relative.as_os_str()) {
                let gone = !self.mount.join(&watch.relative).is_dir();
                ending.push((
                    *id,
                    if gone {
                        Ended::Removed
                    } else {
                        Ended::Unwatched
                    },
                ));
            }
        }
        let known: HashSet<&OsStr> = self
            .watches
            .values()
            .map(|w| w.relative.as_os_str())
            .collect();
        let new: Vec<(PathBuf, RuleId)> = found
            .iter()
            .filter(|(p, _)| !known.contains(p.as_os_str()))
            .cloned()
            .collect();
        for (relative, rule) in new {
            // Gone between the scan and now: it is not picked up.
            let Ok(target) = Target::at(&self.mount.join(&relative)) else {
                continue;
            };
            let id = CgroupId(target.id);
            let watch = self.start(probes, target, relative, rule);
            self.watches.insert(id, watch);
            report.started.push(id);
        }

        let ids: Vec<CgroupId> = self.watches.keys().copied().collect();
        let roots: Vec<u64> = ids.iter().map(|id| id.0).collect();
        let subtrees = tally::subtrees(tree.iter().map(|(id, n)| (*id, n.parent_id)), &roots);
        // Each watch's subtree, then the removed sub-cgroups of each: one pass for both.
        let gone_below: Vec<BTreeSet<u64>> = subtrees
            .iter()
            .zip(&roots)
            .map(|(s, root)| {
                s.iter()
                    .filter(|id| *id != root && removed.contains(id))
                    .copied()
                    .collect()
            })
            .collect();
        let mut groups = subtrees.clone();
        groups.extend(gone_below.iter().cloned());
        let mut counted = probes.count(&groups, true)?;
        let gone_counted = counted.split_off(ids.len());

        let ending: BTreeMap<CgroupId, Ended> = ending.into_iter().collect();
        let hook_unavailable = probes.unavailable();
        let mut to_forget: BTreeSet<u64> = removed.clone();
        for (i, (mut now, gone)) in counted.into_iter().zip(gone_counted).enumerate() {
            let id = ids[i];
            let Some(watch) = self.watches.get_mut(&id) else {
                continue;
            };
            now.absorb(&watch.retired);
            if let Some(ended) = ending.get(&id) {
                let watch = self.watches.remove(&id).expect("the watch is there");
                // Its whole subtree was read: whatever of it is left in the maps goes.
                to_forget.extend(subtrees[i].iter());
                report.finished.push(finish(
                    id,
                    &self.mount,
                    watch,
                    now,
                    *ended,
                    probes,
                    &mut self.profiling,
                    &hook_unavailable,
                )?);
                continue;
            }
            watch.retired.absorb(&gone);
            report.ticks.push((id, watch.session.tick_counted(now)));
        }
        for kept in tally::subtrees(tree.iter().map(|(id, n)| (*id, n.parent_id)), keep) {
            for id in kept {
                to_forget.remove(&id);
            }
        }
        report.freed = to_forget.len();
        probes.forget(&to_forget)?;
        Ok(report)
    }

    /// Ends every watch (the agent stopping): their figures, read in one pass.
    pub fn stop(&mut self, probes: &mut Probes) -> Result<Vec<Finished>, Error> {
        let ids: Vec<CgroupId> = self.watches.keys().copied().collect();
        let roots: Vec<u64> = ids.iter().map(|id| id.0).collect();
        let mut subtrees = probes.subtrees(&roots)?;
        for (set, id) in subtrees.iter_mut().zip(&ids) {
            if let Some(w) = self.watches.get(id) {
                set.extend(w.session.target().subtree_ids().unwrap_or_default());
            }
        }
        let counted = probes.count(&subtrees, true)?;
        let hook_unavailable = probes.unavailable();
        let mut finished = Vec::with_capacity(ids.len());
        for (id, mut now) in ids.into_iter().zip(counted) {
            let Some(watch) = self.watches.remove(&id) else {
                continue;
            };
            now.absorb(&watch.retired);
            finished.push(finish(
                id,
                &self.mount,
                watch,
                now,
                Ended::AgentStopped,
                probes,
                &mut self.profiling,
                &hook_unavailable,
            )?);
        }
        Ok(finished)
    }

    /// A watch of `target` under rule `rule`, starting now (its profiling too, when the rule
    /// asks).
    fn start(
        &mut self,
        probes: &mut Probes,
        target: Target,
        relative: PathBuf,
        rule: RuleId,
    ) -> Watch {
        let mut rule = self.watcher.rules()[rule.0].clone();
        // A container's cgroup is named as `cleanroom run` names the containers it follows.
        if let Some((name, image)) = crate::docker::describe_cgroup(&relative) {
            rule.tags.entry("container".into()).or_insert(name);
            rule.tags.entry("image".into()).or_insert(image);
        }
        let config = CleanroomConfig {
            performance_monitoring: PerformanceMonitoring {
                metrics_interval: self.interval,
                thresholds: rule.thresholds.clone(),
                ..PerformanceMonitoring::default()
            },
            slos: rule.slos.clone(),
            ..CleanroomConfig::default()
        };
        let (specs, not_applicable): (Vec<ThresholdSpec>, Vec<String>) =
            analyze::threshold_specs(&config);
        let options = SessionOptions {
            sampling: true,
            // Where no cgroup accounts its memory (a hybrid host's v2 hierarchy), no tick tries.
            memory: target.memory().is_some(),
            interval: self.interval,
            memory_limit: target.memory_limit(),
            // Reading every live thread's /proc file on every tick is most of what watching
            // hundreds of cgroups would cost; the end reads them.
            live_io: false,
            max_points: MAX_POINTS,
        };
        let profiled = rule.profile.then(|| {
            let subtree = target.subtree_ids().unwrap_or_else(|_| vec![target.id]);
            self.profiling.begin(probes, CgroupId(target.id), &subtree)
        });
        Watch {
            relative,
            rule,
            config,
            not_applicable,
            session: Session::start(target, specs, options),
            retired: Counted::default(),
            profiled,
        }
    }
}

/// Ends one watch with its subtree's figures `counted` (and its profile, if it has one).
#[allow(clippy::too_many_arguments)]
fn finish(
    id: CgroupId,
    mount: &Path,
    watch: Watch,
    counted: Counted,
    ended: Ended,
    probes: &mut Probes,
    profiling: &mut Profiling,
    hook_unavailable: &BTreeSet<crate::metric::AnyMetric>,
) -> Result<Finished, Error> {
    let (profile, profile_notes) = match watch.profiled {
        Some(mut notes) => {
            let (profile, note) = profiling.end(probes, id);
            notes.extend(note);
            (profile, notes)
        }
        None => (None, Vec::new()),
    };
    let end = End {
        wall_time_ns: watch.session.elapsed_ns(),
        max_rss_bytes: None,
    };
    let drops = probes.drops()?;
    let cost = probes.cost_of(&counted);
    let mut figures = watch
        .session
        .conclude(counted, hook_unavailable, drops, end);
    figures.probes = Some(cost);
    Ok(Finished {
        id,
        path: mount.join(&watch.relative),
        relative: watch.relative,
        rule: watch.rule,
        config: watch.config,
        not_applicable: watch.not_applicable,
        ended,
        figures,
        profile,
        profile_notes,
    })
}
