//! What the probes cost a run: each hook's nanoseconds per event, as measured on this host
//! ([`Calibration`], filled by `kernel::meter`), times the run's events of that hook
//! ([`estimate`]). Pure.
//!
//! The method, as the report states it: the kernel's BPF run-time statistics are switched on
//! for short windows while the probes run (the first second, then half a second of every
//! 30 s), and each program's run time and run count are read every 250 ms of a window; a hook's
//! cost is its run time over its runs in all windows, and the lowest and highest of its
//! 250 ms means bound it. The events of a run are the kernel's counts where the probes count
//! them for the run (switches, CPU-time updates, faults, bios, packets), and estimates where
//! they do not (wakeups: as many as voluntary switches; forks, execs and exits: as many as new
//! processes; each given half to twice that). Hooks whose
//! events cannot be told for a run are listed as not included, never guessed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{kernel::tally::Counted, metric::Latency};

/// What one hook cost per event in the windows measured so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HookCost {
    /// Nanoseconds spent in the program, over all windows.
    pub run_time_ns: u64,
    /// Its runs, over all windows.
    pub runs: u64,
    /// The lowest mean of a sub-window with enough runs to tell ([`MIN_RUNS`]).
    pub low_ns: Option<f64>,
    /// The highest such mean.
    pub high_ns: Option<f64>,
}

/// Runs a sub-window needs before its mean counts towards a hook's bounds.
pub const MIN_RUNS: u64 = 20;

impl HookCost {
    /// The mean cost of one run, when the hook ran in a window.
    pub fn mean_ns(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_time_ns as f64 / self.runs as f64)
    }

    fn add(&mut self, run_time_ns: u64, runs: u64) {
        self.run_time_ns += run_time_ns;
        self.runs += runs;
        if runs >= MIN_RUNS {
            let mean = run_time_ns as f64 / runs as f64;
            self.low_ns = Some(self.low_ns.map_or(mean, |l| l.min(mean)));
            self.high_ns = Some(self.high_ns.map_or(mean, |h| h.max(mean)));
        }
    }

    /// Mean, low and high, the bounds falling back to the mean where no sub-window had enough
    /// runs.
    fn range(&self) -> Option<(f64, f64, f64)> {
        let mean = self.mean_ns()?;
        Some((
            mean,
            self.low_ns.unwrap_or(mean).min(mean),
            self.high_ns.unwrap_or(mean).max(mean),
        ))
    }
}

/// Per-event costs measured on this host, by hook (`tp_btf/sched_switch`, ...).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Calibration {
    /// Each hook's cost.
    pub hooks: BTreeMap<String, HookCost>,
    /// Sub-windows folded in.
    pub sub_windows: u32,
    /// Why nothing could be measured, when nothing could.
    pub unavailable: Option<String>,
}

impl Calibration {
    /// Folds in one sub-window: each hook's run time and runs during it.
    pub fn add_sub_window<'a>(&mut self, deltas: impl IntoIterator<Item = (&'a str, u64, u64)>) {
        for (hook, run_time_ns, runs) in deltas {
            self.hooks
                .entry(hook.to_owned())
                .or_default()
                .add(run_time_ns, runs);
        }
        self.sub_windows += 1;
    }

    /// The lowest and highest mean of any hook: the range given to a hook that had events in
    /// the run but none in a window.
    fn any_hook_range(&self) -> Option<(f64, f64, f64)> {
        let ranges: Vec<(f64, f64, f64)> =
            self.hooks.values().filter_map(HookCost::range).collect();
        let low = ranges.iter().map(|r| r.1).reduce(f64::min)?;
        let high = ranges.iter().map(|r| r.2).reduce(f64::max)?;
        Some(((low + high) / 2.0, low, high))
    }
}

/// How a hook's events in a run are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventsAre {
    /// Counted for the run by the probes.
    Counted,
    /// Estimated from a related count, given half to twice that.
    Estimated,
}

/// One hook's share of what the probes cost a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HookShare {
    /// The hook (`tp_btf/sched_switch`, `cgroup_skb/egress`, ...).
    pub hook: String,
    /// The run's events of it.
    pub events: u64,
    /// How they are known.
    pub events_are: EventsAre,
    /// Nanoseconds per event, measured on this host.
    pub ns_per_event: f64,
    /// Whether the hook ran in a calibration window (else it is given the range of all hooks).
    pub calibrated: bool,
    /// `events × ns_per_event`.
    pub cpu_ns: u64,
}

/// What the probes cost a run, by [the module's method](self).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeCost {
    /// CPU time spent in the probes on the run's events, in nanoseconds (estimated).
    pub cpu_ns: u64,
    /// Its lower bound.
    pub low_ns: u64,
    /// Its upper bound.
    pub high_ns: u64,
    /// `cpu_ns` over the run's CPU time, when both are known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_of_cpu: Option<f64>,
    /// How it was estimated.
    pub method: String,
    /// By hook, the costliest first.
    pub hooks: Vec<HookShare>,
    /// Attached hooks whose events cannot be told for a run: their cost is left out.
    pub not_included: Vec<String>,
}

/// What a report says about the probes' cost: the estimate, or why there is none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProbesCost {
    /// Estimated by [the module's method](self).
    Estimated(ProbeCost),
    /// Not known.
    Unknown {
        /// Why.
        unknown_because: String,
    },
}

impl ProbesCost {
    /// [`estimate`], or why there is none.
    pub fn of(counted: &Counted, calibration: &Calibration, attached: &[String]) -> Self {
        match estimate(counted, calibration, attached) {
            Some(cost) => Self::Estimated(cost),
            None => Self::Unknown {
                unknown_because: calibration.unavailable.clone().unwrap_or_else(|| {
                    "no program ran while their costs were being measured".to_owned()
                }),
            },
        }
    }

    /// One line for a summary: `≈ 38.2 ms of CPU (31.0 ms to 45.1 ms), 0.4% of the run's CPU`.
    pub fn line(&self) -> String {
        match self {
            Self::Estimated(c) => {
                let ms = |ns: u64| crate::units::human_duration_ns(ns);
                let share = c
                    .share_of_cpu
                    .map(|s| format!(", {} of the run's CPU", percent(s)))
                    .unwrap_or_default();
                format!(
                    "≈ {} of CPU ({} to {}){share}",
                    ms(c.cpu_ns),
                    ms(c.low_ns),
                    ms(c.high_ns)
                )
            }
            Self::Unknown { unknown_because } => format!("unknown: {unknown_because}"),
        }
    }
}

/// A share as a percentage with two significant digits at most (`0.41%`, `3.2%`, `12%`).
fn percent(share: f64) -> String {
    let p = share * 100.0;
    if p >= 10.0 {
        format!("{p:.0}%")
    } else if p >= 1.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.2}%")
    }
}

/// How a report says the cost was estimated.
pub const METHOD: &str = "the run's events of each hook (counted by the probes, or estimated) \
     times its ns per event on this host, measured with the kernel's BPF run-time statistics \
     (on for the first second, then half a second of every 30 s); the bounds are the lowest and \
     highest 250 ms means";

/// The run's events of each hook it can be told for: `(hook, events, how known)`.
fn events(counted: &Counted) -> Vec<(&'static str, u64, EventsAre)> {
    let s = &counted.stats;
    let block = counted
        .block
        .values()
        .fold((0, 0), |(r, w), b| (r + b.read_ops, w + b.write_ops));
    let completions: u64 = [Latency::BlockRead, Latency::BlockWrite]
        .iter()
        .filter_map(|l| counted.latencies.get(l))
        .map(|h| h.count)
        .sum();
    use EventsAre::{Counted as C, Estimated as E};
    vec![
        ("tp_btf/sched_stat_runtime", s.cpu_time_updates, C),
        (
            "tp_btf/sched_switch",
            s.switches_voluntary + s.switches_involuntary,
            C,
        ),
        ("tp_btf/sched_wakeup", s.switches_voluntary, E),
        ("tp_btf/sched_wakeup_new", s.processes_forked, E),
        ("tp_btf/sched_process_fork", s.processes_forked, E),
        ("tp_btf/sched_process_exit", s.processes_exited, E),
        ("tp_btf/sched_process_exec", s.processes_forked, E),
        ("tp_btf/page_fault_user", s.page_faults_user, C),
        ("tp_btf/page_fault_kernel", s.page_faults_kernel, C),
        ("tp_btf/block_bio_queue", block.0 + block.1, C),
        ("tp_btf/block_rq_issue", completions, E),
        ("tp_btf/block_rq_complete", completions, E),
        ("cgroup_skb/egress", s.net_tx_packets, C),
        ("cgroup_skb/ingress", s.net_rx_packets, C),
    ]
}

/// What the probes in `attached` (hook names) cost the run that `counted` describes, with the
/// costs of `calibration`. `None` when nothing was calibrated (see
/// [`Calibration::unavailable`]).
pub fn estimate(
    counted: &Counted,
    calibration: &Calibration,
    attached: &[String],
) -> Option<ProbeCost> {
    let fallback = calibration.any_hook_range()?;
    let mut hooks = Vec::new();
    let (mut cpu, mut low, mut high) = (0.0, 0.0, 0.0);
    let mut told = Vec::new();
    for (hook, n, are) in events(counted) {
        if !attached.iter().any(|a| a == hook) {
            continue;
        }
        told.push(hook);
        let own = calibration.hooks.get(hook).and_then(HookCost::range);
        let (mean, lo, hi) = own.unwrap_or(fallback);
        let (n_lo, n_hi) = match are {
            EventsAre::Counted => (n as f64, n as f64),
            EventsAre::Estimated => (n as f64 / 2.0, n as f64 * 2.0),
        };
        let ns = n as f64 * mean;
        cpu += ns;
        low += n_lo * lo;
        high += n_hi * hi;
        if n > 0 {
            hooks.push(HookShare {
                hook: hook.to_owned(),
                events: n,
                events_are: are,
                ns_per_event: mean,
                calibrated: own.is_some(),
                cpu_ns: ns.round() as u64,
            });
        }
    }
    hooks.sort_by(|a, b| b.cpu_ns.cmp(&a.cpu_ns).then(a.hook.cmp(&b.hook)));
    let cpu_time = counted.stats.cpu_time_ns;
    Some(ProbeCost {
        cpu_ns: cpu.round() as u64,
        low_ns: low.round() as u64,
        high_ns: high.round() as u64,
        share_of_cpu: (cpu_time > 0).then(|| cpu / cpu_time as f64),
        method: METHOD.to_owned(),
        hooks,
        not_included: attached
            .iter()
            .filter(|a| !told.contains(&a.as_str()))
            .cloned()
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use cleanroom_common::CgroupStats;

    use super::*;

    fn calibrated(hooks: &[(&str, &[(u64, u64)])]) -> Calibration {
        let mut c = Calibration::default();
        let windows = hooks.iter().map(|h| h.1.len()).max().unwrap_or(0);
        for w in 0..windows {
            c.add_sub_window(
                hooks
                    .iter()
                    .filter_map(|(hook, subs)| subs.get(w).map(|(t, n)| (*hook, *t, *n))),
            );
        }
        c
    }

    #[test]
    fn a_counted_hook_costs_its_events_times_its_mean_within_its_sub_window_bounds() {
        let c = calibrated(&[("tp_btf/sched_switch", &[(10_000, 100), (30_000, 100)])]);
        let counted = Counted {
            stats: CgroupStats {
                switches_voluntary: 600,
                switches_involuntary: 400,
                cpu_time_ns: 2_000_000,
                ..CgroupStats::default()
            },
            ..Counted::default()
        };
        let cost = estimate(&counted, &c, &["tp_btf/sched_switch".to_owned()]).unwrap();
        // 1,000 switches at a mean of 200 ns, bounded by the 100 and 300 ns sub-windows.
        assert_eq!(cost.cpu_ns, 200_000);
        assert_eq!((cost.low_ns, cost.high_ns), (100_000, 300_000));
        assert_eq!(cost.share_of_cpu, Some(0.1));
        assert_eq!(cost.hooks[0].events, 1_000);
        assert!(cost.not_included.is_empty());
    }

    #[test]
    fn estimated_events_widen_the_bounds_and_untold_hooks_are_listed_not_guessed() {
        let c = calibrated(&[
            ("tp_btf/sched_wakeup", &[(5_000, 50)]),
            ("tp_btf/sock_send_length", &[(9_000, 30)]),
        ]);
        let counted = Counted {
            stats: CgroupStats {
                switches_voluntary: 10,
                ..CgroupStats::default()
            },
            ..Counted::default()
        };
        let attached = [
            "tp_btf/sched_wakeup".to_owned(),
            "tp_btf/sock_send_length".to_owned(),
        ];
        let cost = estimate(&counted, &c, &attached).unwrap();
        assert_eq!(cost.cpu_ns, 1_000);
        assert_eq!((cost.low_ns, cost.high_ns), (500, 2_000));
        assert_eq!(cost.hooks[0].events_are, EventsAre::Estimated);
        assert_eq!(
            cost.not_included,
            vec!["tp_btf/sock_send_length".to_owned()]
        );
        // No CPU time: no share.
        assert_eq!(cost.share_of_cpu, None);
    }

    #[test]
    fn a_hook_never_seen_in_a_window_gets_the_range_of_all_hooks() {
        let c = calibrated(&[
            ("tp_btf/sched_switch", &[(5_000, 50)]),
            ("tp_btf/page_fault_user", &[(15_000, 50)]),
        ]);
        let counted = Counted {
            stats: CgroupStats {
                net_tx_packets: 10,
                ..CgroupStats::default()
            },
            ..Counted::default()
        };
        let cost = estimate(&counted, &c, &["cgroup_skb/egress".to_owned()]).unwrap();
        assert!(!cost.hooks[0].calibrated);
        assert_eq!(
            (cost.low_ns, cost.cpu_ns, cost.high_ns),
            (1_000, 2_000, 3_000)
        );
    }

    #[test]
    fn nothing_calibrated_gives_no_estimate() {
        let c = Calibration {
            unavailable: Some("no BPF statistics".into()),
            ..Calibration::default()
        };
        assert_eq!(estimate(&Counted::default(), &c, &[]), None);
    }

    #[test]
    fn sub_windows_with_few_runs_count_in_the_mean_but_not_the_bounds() {
        let c = calibrated(&[("h", &[(1_000, 10), (4_000, 40), (8_000, 40)])]);
        let h = &c.hooks["h"];
        assert_eq!(h.mean_ns(), Some(13_000.0 / 90.0));
        assert_eq!((h.low_ns, h.high_ns), (Some(100.0), Some(200.0)));
        assert_eq!(c.sub_windows, 3);
    }
}
