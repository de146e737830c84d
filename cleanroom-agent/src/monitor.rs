//! Live monitoring of a run: a sample every `metrics_interval`, turned into the time series,
//! checked against thresholds (breaches reported at once on stderr), and a status line on a
//! terminal.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{IsTerminal as _, Write as _},
    time::Instant,
};

use crate::{
    Error,
    analyze::{ThresholdMonitor, ThresholdSpec},
    cgroup::RunCgroup,
    model::{self, Reading, SeriesPoint},
    probe::Probes,
    units::{human_bytes, human_duration_ns},
    verdict::{Event, EventKind},
};

/// The state of a run's monitoring.
pub struct Monitor {
    started: Instant,
    memory: bool,
    prev: Option<Reading>,
    /// The time series so far, bounded.
    pub series: model::Series,
    /// Thresholds being watched.
    pub thresholds: ThresholdMonitor,
    /// Events so far.
    pub events: Vec<Event>,
    /// Highest anonymous memory of the run in any sample so far (when memory is sampled).
    pub anon_peak_bytes: Option<u64>,
    status_line: bool,
    line_shown: bool,
}

impl Monitor {
    /// Starts monitoring a run that started at `started`. `memory`: sample memory too.
    /// `status_line`: draw a live line on stderr (only when it is a terminal).
    pub fn new(
        started: Instant,
        specs: Vec<ThresholdSpec>,
        memory: bool,
        status_line: bool,
    ) -> Self {
        Self {
            started,
            memory,
            prev: None,
            series: model::Series::default(),
            thresholds: ThresholdMonitor::new(specs),
            events: Vec::new(),
            anon_peak_bytes: None,
            status_line: status_line && std::io::stderr().is_terminal(),
            line_shown: false,
        }
    }

    /// ns since the command started.
    pub fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The last, partial interval when the command ends: taken only if it is at least half an
    /// interval long. CPU time is charged in scheduler ticks, so a rate over a sliver of time
    /// (a tick's 4 ms over 1 ms of wall time is "400%") would say nothing true.
    pub fn final_sample(
        &mut self,
        probes: &Probes,
        cgroup: &RunCgroup,
        interval: std::time::Duration,
    ) -> Result<(), Error> {
        let since = self
            .prev
            .as_ref()
            .map_or(u64::MAX, |p| self.elapsed_ns().saturating_sub(p.t_ns));
        if u128::from(since) * 2 >= interval.as_nanos() {
            self.sample(probes, cgroup)?;
        }
        Ok(())
    }

    /// Takes a sample now; records the interval since the last one and checks thresholds.
    pub fn sample(&mut self, probes: &Probes, cgroup: &RunCgroup) -> Result<(), Error> {
        // Every sub-cgroup of a run is made after the probes are loaded, so the kernel's record
        // of made cgroups finds them all; no directory walk per sample.
        let ids: BTreeSet<u64> = probes.descendants(cgroup.id())?;
        // The probes first, then the live threads: a thread exiting in between is missed by this
        // sample only (never counted twice), and the next one has it.
        let counted = probes.counters(&ids)?;
        let memory = if self.memory { cgroup.memory() } else { None };
        if let Some(anon) = memory.and_then(|m| m.anon_bytes) {
            self.anon_peak_bytes = Some(self.anon_peak_bytes.map_or(anon, |p| p.max(anon)));
        }
        let sample = crate::collect::Sample {
            counted,
            cpu: Default::default(),
            memory,
            max_rss_bytes: None,
            live_io: cgroup.live_io(),
            anon_peak_bytes: self.anon_peak_bytes,
        };
        let reading = Reading {
            t_ns: self.elapsed_ns(),
            counters: sample.counters(),
            memory_current_bytes: sample.memory.map(|m| m.current_bytes),
        };
        if let Some(point) = self
            .prev
            .as_ref()
            .and_then(|prev| model::interval(prev, &reading))
        {
            let mut values = point.values.clone();
            values.insert("wall_time".into(), reading.t_ns as f64);
            if let Some(w) = reading.counters.get("io_write_bytes") {
                values.insert("io_write_bytes".into(), *w as f64);
            }
            self.observe(reading.t_ns, &values);
            self.draw(&point);
            self.series.push(point);
        }
        self.prev = Some(reading);
        Ok(())
    }

    /// Checks thresholds against `values` (also used for the final, cumulative figures).
    pub fn observe(&mut self, t_ns: u64, values: &BTreeMap<String, f64>) {
        for event in self.thresholds.observe(t_ns, values) {
            self.clear_line();
            let verb = if event.kind == EventKind::ThresholdBreached {
                "breached"
            } else {
                "cleared"
            };
            eprintln!("cleanroom: threshold {verb}: {}", event.message);
            self.events.push(event);
        }
    }

    /// Records an event and says it on stderr.
    pub fn event(&mut self, event: Event) {
        self.clear_line();
        eprintln!("cleanroom: {}", event.message);
        self.events.push(event);
    }

    fn draw(&mut self, p: &SeriesPoint) {
        if !self.status_line {
            return;
        }
        let v = |k: &str| p.values.get(k).copied().unwrap_or(0.0);
        let rate = |k: &str| format!("{}/s", human_bytes(v(k) as u64));
        let line = format!(
            "{} | CPU {:.0}% | mem {} | disk r {} w {} | net rx {} tx {}",
            human_duration_ns(p.t_ns),
            v("cpu_percent"),
            p.values
                .get("memory_current_bytes")
                .map_or_else(|| "?".into(), |m| human_bytes(*m as u64)),
            rate("block_read_bytes_per_sec"),
            rate("io_write_bytes_per_sec"),
            rate("net_rx_bytes_per_sec"),
            rate("net_tx_bytes_per_sec"),
        );
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
        self.line_shown = true;
    }

    /// Erases the status line, if one is shown.
    pub fn clear_line(&mut self) {
        if self.line_shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.line_shown = false;
        }
    }
}
