//! One measuring session over one target cgroup: a sample per tick (the time series, thresholds
//! checked, events raised), and at the end the session's figures.
//!
//! It knows what to read, never why: not the command that runs in the cgroup, nor who made the
//! cgroup, nor signals or terminals. It prints nothing; each tick hands its point and
//! events to the front end, which says what it wants to ([`crate::run`] draws a status line).
//! `cleanroom run` measures the cgroup it made for its command; the agent can measure a cgroup
//! someone else made.
//!
//! Between ticks the kernel's record of made cgroups finds the target's sub-cgroups, so one made
//! before the probes were loaded is only found at [`Session::finish`], which also walks the
//! directory tree.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant, SystemTime},
};

use crate::{
    Error,
    cgroupfs::cgroup::{MemoryStat, Target},
    judge::analyze::{self, ThresholdMonitor, ThresholdSpec},
    judge::verdict::{Anomaly, Event, EventKind, ThresholdResult},
    kernel::cost::ProbesCost,
    kernel::probe::{Counted, Drops, Probes},
    measure::collect::{BlockDevice, Sample, Total},
    measure::model::{self, Aggregate, Reading, SeriesPoint, SeriesResolution},
    measure::phases::{MarkError, Marks, Phase, check_name},
    metric::AnyMetric,
    units::human_bytes,
};

/// Why a phase could not be marked.
#[derive(Debug, thiserror::Error)]
pub enum MarkFailed {
    /// The mark itself is refused (its name, or too many).
    #[error(transparent)]
    Refused(#[from] MarkError),
    /// The counters could not be read.
    #[error(transparent)]
    Read(#[from] Error),
}

/// How a session measures.
#[derive(Clone, Copy, Debug)]
pub struct SessionOptions {
    /// Whether the front end ticks every `interval` (the time series and thresholds).
    pub sampling: bool,
    /// Whether each tick reads memory too.
    pub memory: bool,
    /// The time between ticks.
    pub interval: Duration,
    /// The memory limit set on the target, when known: an OOM kill event names it.
    pub memory_limit: Option<u64>,
    /// Whether each tick reads the storage I/O of the target's live threads (`/proc`, a file
    /// per thread): else a tick's io_* figures hold the exited threads' alone, and only the end
    /// adds the live ones.
    pub live_io: bool,
    /// The most points the series keeps ([`model::MAX_SERIES_POINTS`] for a run).
    pub max_points: usize,
}

/// The end of a session, as the front end saw it.
#[derive(Clone, Copy, Debug, Default)]
pub struct End {
    /// From the start to the end of what was measured.
    pub wall_time_ns: u64,
    /// The largest peak RSS of a single process of the target, where the front end knows it
    /// (the last-resort memory figure when no cgroup accounts memory).
    pub max_rss_bytes: Option<u64>,
}

/// What one tick produced.
#[derive(Clone, Debug, Default)]
pub struct Tick {
    /// The interval since the previous tick; none on the first.
    pub point: Option<SeriesPoint>,
    /// The events the interval raised (thresholds breached or cleared), already recorded.
    pub events: Vec<Event>,
}

/// A session's figures at its end.
#[derive(Clone, Debug)]
pub struct Figures {
    /// When the session started.
    pub started_at: SystemTime,
    /// From the start to the end.
    pub wall_time_ns: u64,
    /// What the probes and cgroupfs measured, by metric name.
    pub totals: BTreeMap<String, Total>,
    /// Metrics that could not be measured.
    pub unavailable: Vec<String>,
    /// Block I/O per device, busiest first.
    pub block_devices: Vec<BlockDevice>,
    /// The kernel's own cgroupfs figures, for cross-checking.
    pub kernel: BTreeMap<String, u64>,
    /// Events the kernel programs could not count, by reason.
    pub drops: Drops,
    /// The kernel's memory accounting at the end, where a cgroup accounts the target's memory.
    pub memory: Option<MemoryStat>,
    /// The highest anonymous memory of any tick, when the session lasted at least one interval.
    pub anon_peak_bytes: Option<u64>,
    /// Whether buffered writes are charged to the target when written back.
    pub writeback: bool,
    /// One point per interval, bounded.
    pub series: Vec<SeriesPoint>,
    /// How the series was kept, when the session ticked.
    pub series_resolution: Option<SeriesResolution>,
    /// Per series name: average, peak, percentiles, trend.
    pub aggregates: BTreeMap<String, Aggregate>,
    /// The strongest anomalous intervals.
    pub anomalies: Vec<Anomaly>,
    /// How many anomalies were found, when more than `anomalies` keeps.
    pub anomalies_found: Option<usize>,
    /// The verdict on each threshold watched.
    pub thresholds: Vec<ThresholdResult>,
    /// Every event of the session, in the order raised.
    pub events: Vec<Event>,
    /// The phases marked, in order.
    pub phases: Vec<Phase>,
    /// What the probes cost the target, when the front end asked (see [`Session::finish`]).
    pub probes: Option<ProbesCost>,
    /// Where in `events` those the end itself raised begin.
    end_events: usize,
}

impl Figures {
    /// The events the end itself raised (an OOM kill, thresholds breached by the whole
    /// session's figures), for a front end to say.
    pub fn raised_at_end(&self) -> &[Event] {
        &self.events[self.end_events..]
    }
}

/// Measuring one target cgroup.
#[derive(Debug)]
pub struct Session {
    target: Target,
    options: SessionOptions,
    started_at: SystemTime,
    started: Instant,
    prev: Option<Reading>,
    series: model::Series,
    thresholds: ThresholdMonitor,
    events: Vec<Event>,
    anon_peak_bytes: Option<u64>,
    last: Option<Sample>,
    /// Other cgroups whose subtrees count as part of the target (containers a run started).
    included: Vec<u64>,
    /// The phases marked so far.
    marks: Marks,
}

impl Session {
    /// Starts measuring `target` now, watching `specs`.
    pub fn start(target: Target, specs: Vec<ThresholdSpec>, options: SessionOptions) -> Self {
        Self {
            target,
            options,
            started_at: SystemTime::now(),
            started: Instant::now(),
            prev: None,
            series: model::Series::with_max_points(options.max_points),
            thresholds: ThresholdMonitor::new(specs),
            events: Vec::new(),
            anon_peak_bytes: None,
            last: None,
            included: Vec::new(),
            marks: Marks::default(),
        }
    }

    /// Whether the front end should tick every [`SessionOptions::interval`].
    pub fn samples(&self) -> bool {
        self.options.sampling
    }

    /// The time between ticks.
    pub fn interval(&self) -> Duration {
        self.options.interval
    }

    /// ns since the session started.
    pub fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records an event the front end raised (a limit applied, a timeout).
    pub fn record(&mut self, event: Event) {
        self.events.push(event);
    }

    /// Takes a sample now: records the interval since the last one and checks thresholds.
    pub fn tick(&mut self, probes: &Probes) -> Result<Tick, Error> {
        let ids = self.probed_ids(probes)?;
        // The probes first, then the live threads: a thread exiting in between is missed by this
        // sample only (never counted twice), and the next one has it.
        let counted = probes.counters(&ids)?;
        Ok(self.tick_counted(counted))
    }

    /// Starts phase `name` now (ending the one before): what the probes counted for the target
    /// so far is its start. Gives when, in ns since the session started.
    pub fn mark(&mut self, probes: &Probes, name: &str) -> Result<u64, MarkFailed> {
        check_name(name)?;
        let ids = self.probed_ids(probes)?;
        let counted = probes.counters(&ids).map_err(Error::from)?;
        let t_ns = self.elapsed_ns();
        let sample = Sample {
            counted,
            cpu: None,
            memory: None,
            max_rss_bytes: None,
            live_io: self.live_io_now(),
            anon_peak_bytes: None,
        };
        self.marks.mark(name, t_ns, sample.counters())?;
        Ok(t_ns)
    }

    /// The storage I/O of the target's live threads, when the session reads it while running.
    fn live_io_now(&self) -> crate::cgroupfs::taskio::TaskIo {
        if self.options.live_io {
            self.target.live_io()
        } else {
            Default::default()
        }
    }

    /// Counts cgroup `root` and its subtree as part of the target from now on (the kernel's
    /// counts from its making on): a container the target's command started elsewhere. The
    /// target's own cgroupfs figures (memory, `cpu.stat`) stay the target's alone.
    pub fn include(&mut self, root: u64) {
        if root != self.target.id && !self.included.contains(&root) {
            self.included.push(root);
        }
    }

    /// The target's subtree and every included one's, as the probes' record has them.
    fn probed_ids(&self, probes: &Probes) -> Result<BTreeSet<u64>, Error> {
        let mut roots = vec![self.target.id];
        roots.extend(&self.included);
        Ok(probes.subtrees(&roots)?.into_iter().flatten().collect())
    }

    /// [`Session::tick`] with what the probes counted for the target's subtree read already,
    /// just now (a front end measuring many targets reads them all in one pass).
    pub fn tick_counted(&mut self, counted: Counted) -> Tick {
        let memory = if self.options.memory {
            self.target.memory()
        } else {
            None
        };
        if let Some(anon) = memory.and_then(|m| m.anon_bytes) {
            self.anon_peak_bytes = Some(self.anon_peak_bytes.map_or(anon, |p| p.max(anon)));
        }
        let sample = Sample {
            counted,
            cpu: Default::default(),
            memory,
            max_rss_bytes: None,
            live_io: self.live_io_now(),
            anon_peak_bytes: self.anon_peak_bytes,
        };
        let reading = Reading {
            t_ns: self.elapsed_ns(),
            counters: sample.counters(),
            memory_current_bytes: sample.memory.map(|m| m.current_bytes),
        };
        let mut tick = Tick::default();
        if let Some(point) = self
            .prev
            .as_ref()
            .and_then(|prev| model::interval(prev, &reading))
        {
            if !self.thresholds.is_empty() {
                let mut values = point.values.clone();
                values.insert("wall_time".into(), reading.t_ns as f64);
                if let Some(w) = reading.counters.get("io_write_bytes") {
                    values.insert("io_write_bytes".into(), *w as f64);
                }
                tick.events = self.observe(reading.t_ns, &values);
            }
            self.series.push(point.clone());
            tick.point = Some(point);
        }
        self.prev = Some(reading);
        self.last = Some(sample);
        tick
    }

    /// The last tick's sample: what was counted until then, for a live view.
    pub fn last_sample(&self) -> Option<&Sample> {
        self.last.as_ref()
    }

    /// How many intervals the series has had.
    pub fn intervals(&self) -> u64 {
        self.series.intervals()
    }

    /// The last interval's point, if there was one.
    pub fn last_point(&self) -> Option<SeriesPoint> {
        self.series.last()
    }

    /// The target measured.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// When the session started.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// The events so far.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The last, partial interval when what is measured ends: taken only if it is at least half
    /// an interval long. CPU time is charged in scheduler ticks, so a rate over a sliver of time
    /// (a tick's 4 ms over 1 ms of wall time is "400%") would say nothing true.
    pub fn last_tick(&mut self, probes: &Probes) -> Result<Tick, Error> {
        let since = self
            .prev
            .as_ref()
            .map_or(u64::MAX, |p| self.elapsed_ns().saturating_sub(p.t_ns));
        if u128::from(since) * 2 >= self.options.interval.as_nanos() {
            self.tick(probes)
        } else {
            Ok(Tick::default())
        }
    }

    /// Ends the session: reads everything counted for the target's subtree (the probes', then
    /// the live threads' I/O), then forgets the subtree in the probes' maps. A front end that
    /// wants a task's last scheduler tick charged ends the target's processes first, as
    /// `cleanroom run` does.
    pub fn finish(self, probes: &mut Probes, end: End) -> Result<Figures, Error> {
        // Sub-cgroups still there, and those the kernel saw made (and maybe removed) meanwhile.
        let mut ids: BTreeSet<u64> = self.target.subtree_ids()?.into_iter().collect();
        ids.extend(self.probed_ids(probes)?);
        let counted = probes.counted(&ids)?;
        let drops = probes.drops()?;
        let unavailable = probes.unavailable();
        probes.forget(&ids)?;
        let cost = probes.cost_of(&counted);
        let mut figures = self.conclude(counted, &unavailable, drops, end);
        figures.probes = Some(cost);
        Ok(figures)
    }

    /// [`Session::finish`] with the target's subtree read already: `counted` (histograms
    /// included), the metrics whose hooks are missing, the drops so far. The target may be gone
    /// (the agent finishing a removed cgroup): then the kernel's own figures are left out.
    pub fn conclude(
        mut self,
        counted: Counted,
        hook_unavailable: &BTreeSet<AnyMetric>,
        drops: Drops,
        end: End,
    ) -> Figures {
        let memory = self.target.memory();
        let sample = Sample {
            counted,
            cpu: self.target.cpu().ok(),
            memory,
            max_rss_bytes: end.max_rss_bytes,
            live_io: self.target.live_io(),
            // Sampled: only a session that lasted at least one interval has a sample taken
            // while it ran.
            anon_peak_bytes: self
                .anon_peak_bytes
                .filter(|_| u128::from(end.wall_time_ns) >= self.options.interval.as_nanos()),
        };
        let (totals, unavailable) = sample.totals(hook_unavailable);
        let end_events = self.events.len();
        if let Some(event) = self.oom_event(end.wall_time_ns) {
            self.events.push(event);
        }
        let phases = self
            .marks
            .phases(end.wall_time_ns, &sample.counters())
            .into_iter()
            .map(|mut p| {
                // Only what the run's totals have: a metric this host cannot measure is
                // not a phase's either.
                p.totals
                    .retain(|k, _| matches!(totals.get(k), Some(Total::Value(_))));
                p
            })
            .collect();
        let finals = final_values(&sample, end.wall_time_ns);
        let end_breaches = self.thresholds.observe_final(end.wall_time_ns, &finals);
        self.events.extend(end_breaches);
        // The series is kept packed: made whole once, for the analysis and the report.
        let points = self.series.points();
        let (anomalies, anomalies_found) = analyze::keep_strongest(analyze::anomalies(&points));
        Figures {
            started_at: self.started_at,
            wall_time_ns: end.wall_time_ns,
            block_devices: sample.block_devices(),
            kernel: sample.kernel(),
            drops,
            memory: sample.memory,
            anon_peak_bytes: sample.anon_peak_bytes,
            writeback: self.target.writeback_attributed(),
            aggregates: model::aggregate(&points),
            anomalies,
            anomalies_found,
            series_resolution: self.options.sampling.then(|| self.series.resolution()),
            series: points,
            thresholds: self.thresholds.results(),
            events: self.events,
            phases,
            end_events,
            totals,
            unavailable,
            probes: None,
        }
    }

    /// Checks thresholds against `values`; records and returns the events it raises.
    fn observe(&mut self, t_ns: u64, values: &BTreeMap<String, f64>) -> Vec<Event> {
        let events = self.thresholds.observe(t_ns, values);
        self.events.extend(events.iter().cloned());
        events
    }

    /// The event for the kernel's OOM kills in the target, if there were any.
    fn oom_event(&self, t_ns: u64) -> Option<Event> {
        let kills = self.target.oom_kills().filter(|k| *k > 0)?;
        let limit = self.options.memory_limit;
        Some(Event {
            t_ns,
            kind: EventKind::OomKill,
            subject: "memory".into(),
            value: Some(kills as f64),
            limit: limit.map(|l| l as f64),
            message: match limit {
                Some(l) => format!(
                    "the memory limit ({}) was reached: the kernel's OOM killer killed {kills} \
                     process(es) of the run",
                    human_bytes(l)
                ),
                None => format!("the kernel's OOM killer killed {kills} process(es) of the run"),
            },
        })
    }
}

/// The cumulative figures judged at the end: wall time, the peak memory charge (which can
/// exceed every sample), bytes written; and rates over the whole session, never above the
/// busiest interval and the only figure a session shorter than one interval has.
fn final_values(sample: &Sample, wall_time_ns: u64) -> BTreeMap<String, f64> {
    let totals_now = sample.counters();
    let written = totals_now.get("io_write_bytes").copied();
    let whole = model::interval(
        &Reading {
            t_ns: 0,
            counters: totals_now.keys().map(|k| (k.clone(), 0)).collect(),
            memory_current_bytes: None,
        },
        &Reading {
            t_ns: wall_time_ns,
            counters: totals_now,
            memory_current_bytes: None,
        },
    );
    let mut finals = whole.map(|p| p.values).unwrap_or_default();
    finals.insert("wall_time".to_owned(), wall_time_ns as f64);
    // The kernel's peak, or where it keeps none (v2 before 5.19) the charge now: an
    // observation like any sample's.
    if let Some(m) = sample.memory {
        finals.insert(
            "memory_current_bytes".into(),
            m.peak_bytes.unwrap_or(m.current_bytes) as f64,
        );
    }
    if let Some(w) = written {
        finals.insert("io_write_bytes".into(), w as f64);
    }
    finals
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cgroupfs::cgroup::CpuStat, cgroupfs::taskio::TaskIo};

    fn sample(peak_bytes: Option<u64>) -> Sample {
        let mut counted = Counted::default();
        counted.stats.cpu_time_ns = 1_000_000_000;
        counted.stats.io_write_bytes = 4096;
        Sample {
            counted,
            cpu: Some(CpuStat::default()),
            memory: Some(MemoryStat {
                current_bytes: 10,
                peak_bytes,
                ..MemoryStat::default()
            }),
            max_rss_bytes: None,
            live_io: TaskIo::default(),
            anon_peak_bytes: None,
        }
    }

    #[test]
    fn the_end_judges_wall_time_the_memory_peak_bytes_written_and_whole_session_rates() {
        let finals = final_values(&sample(Some(500)), 2_000_000_000);
        assert_eq!(finals["wall_time"], 2e9, "{finals:?}");
        assert_eq!(finals["memory_current_bytes"], 500.0, "the kernel's peak");
        assert_eq!(finals["io_write_bytes"], 4096.0, "{finals:?}");
        assert_eq!(finals["io_write_bytes_per_sec"], 2048.0, "{finals:?}");
        assert_eq!(finals["cpu_percent"], 50.0, "one second of CPU over two");
        assert_eq!(
            final_values(&sample(None), 2_000_000_000)["memory_current_bytes"],
            10.0,
            "without a kernel peak, the charge now"
        );
    }

    #[test]
    fn a_session_of_no_measurable_length_has_no_rates_but_its_wall_time() {
        let finals = final_values(&sample(None), 0);
        assert_eq!(finals.get("cpu_percent"), None, "{finals:?}");
        assert_eq!(finals["wall_time"], 0.0);
    }
}
