//! What the agent shows while it runs: a board the watch loop updates after each tick (every
//! live cgroup's figures, recent series and events, the agent's own figures) and the HTTP
//! interface reads ([`View`]); stored runs come from the history store.
//!
//! The watch loop owns the probes and the sessions; the board holds copies, so a request never
//! waits for the maps and a tick never waits for a slow client beyond the board's lock.

use std::{
    collections::{BTreeMap, VecDeque},
    path::PathBuf,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use serde_json::{Value, json};

use super::watched::{CgroupId, Watched};
use crate::{
    judge::verdict::{Event, EventKind},
    measure::model::{self, Series},
    metric::{Latency, Metric},
    output::exposition::{self, AgentFigures, CgroupSnapshot, Snapshot},
    output::page::{self, AgentLine, LiveRow},
    output::render,
    output::report::{HostInfo, Report},
    output::serve::View,
    store::{Store, StoreError, StoreLocation, spool},
};

/// Recent interval points kept per live cgroup for the API (older ones merged pairwise).
pub const RECENT_POINTS: usize = 20;
/// Recent events kept per live cgroup for the API.
pub const RECENT_EVENTS: usize = 50;
/// Stored runs listed by the API and the front page.
pub const RUNS_LISTED: usize = 100;

/// One live cgroup on the board.
#[derive(Clone, Debug)]
struct Live {
    row: LiveRow,
    snapshot: CgroupSnapshot,
    series: Series,
    events: VecDeque<Event>,
    tags: BTreeMap<String, String>,
}

/// The board's contents.
#[derive(Debug, Default)]
struct State {
    live: BTreeMap<CgroupId, Live>,
    agent: AgentFigures,
}

/// The agent's live state, shared by the watch loop and the HTTP interface.
pub struct Board {
    state: Mutex<State>,
    store: Option<Mutex<Store>>,
    host: HostInfo,
    started_at: SystemTime,
    interval: Duration,
    listen: String,
}

impl Board {
    /// An empty board; reports are read from `store` when there is one.
    pub fn new(store: Option<Store>, interval: Duration, listen: String) -> Self {
        Self {
            state: Mutex::default(),
            store: store.map(Mutex::new),
            host: HostInfo::current(),
            started_at: SystemTime::now(),
            interval,
            listen,
        }
    }

    /// The machine the agent runs on, as reports name it.
    pub fn host(&self) -> &HostInfo {
        &self.host
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: still worth showing.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores finished watches' reports, in one transaction; their ids in the store, or
    /// `None` without a store. Once a shared store takes them, the runs spooled for it while
    /// it was away go to it too ([`spool::flush`]).
    pub fn store(&self, reports: &[Report]) -> Result<Option<Vec<i64>>, StoreError> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
        let ids = store.insert_all(reports)?;
        if store.location().sqlite_path().is_none() {
            let flushed = spool::flush(&mut store);
            spool::say_flushed(store.location(), flushed);
        }
        Ok(Some(ids))
    }

    /// Where reports a shared store did not take are kept until it does: its spool
    /// ([`spool`]); `None` for a file store, or without a store.
    pub fn spool_for(&self) -> Option<StoreLocation> {
        let store = self.store.as_ref()?;
        let store = store.lock().unwrap_or_else(|e| e.into_inner());
        let location = store.location();
        location.sqlite_path().is_none().then(|| location.clone())
    }

    /// Replaces stored run `id`'s report with a later account of it ([`Store::replace_report`]).
    pub fn replace_report(&self, id: i64, report: &Report) -> Result<(), StoreError> {
        match &self.store {
            Some(store) => {
                let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
                store.replace_report(id, report)
            }
            None => Ok(()),
        }
    }

    /// Every live cgroup's figures now, as a scrape sees them.
    pub fn cgroup_snapshots(&self) -> Vec<CgroupSnapshot> {
        self.state()
            .live
            .values()
            .map(|l| l.snapshot.clone())
            .collect()
    }

    /// Where reports go that the store could not take: beside a SQLite store's file.
    pub fn unstored_dir(&self) -> Option<PathBuf> {
        let store = self.store.as_ref()?;
        let store = store.lock().unwrap_or_else(|e| e.into_inner());
        Some(store.location().sqlite_path()?.parent()?.join("unstored"))
    }

    /// Takes what the tick just read: every live watch's figures and its newest point and
    /// events; cgroups no longer watched leave the board.
    pub fn update(
        &self,
        watched: &Watched,
        drops: BTreeMap<&'static str, u64>,
        map_entries: BTreeMap<&'static str, u64>,
        took: Duration,
    ) {
        let mut state = self.state();
        state
            .live
            .retain(|id, _| watched.watches().contains_key(id));
        for (id, watch) in watched.watches() {
            let session = &watch.session;
            let cgroup = watch.relative.display().to_string();
            let entry = state.live.entry(*id).or_insert_with(|| Live {
                row: LiveRow {
                    id: id.0,
                    cgroup: cgroup.clone(),
                    rule: watch.rule.run_name().to_owned(),
                    container: watch.rule.tags.get("container").map(|name| {
                        match watch.rule.tags.get("image") {
                            Some(image) => format!("{name} ({image})"),
                            None => name.clone(),
                        }
                    }),
                    started_at: humantime::format_rfc3339_seconds(session.started_at()).to_string(),
                    ..LiveRow::default()
                },
                snapshot: CgroupSnapshot {
                    cgroup: cgroup.clone(),
                    rule: watch.rule.run_name().to_owned(),
                    totals: BTreeMap::new(),
                    latencies: BTreeMap::new(),
                },
                series: Series::with_max_points(RECENT_POINTS),
                events: VecDeque::new(),
                tags: watch.rule.tags.clone(),
            });
            entry.row.watched_ns = session.elapsed_ns();
            if let Some(sample) = session.last_sample() {
                entry.snapshot.totals = Metric::ALL
                    .iter()
                    .filter_map(|m| Some((*m, sample.value(*m)?)))
                    .collect();
                // Only what happened: an empty histogram is a family of zeros per cgroup.
                entry.snapshot.latencies = sample
                    .counted
                    .latencies
                    .iter()
                    .filter(|(_, h)| h.buckets.iter().any(|c| *c > 0))
                    .map(|(l, h)| (*l, *h))
                    .collect();
                let value = |m: Metric| entry.snapshot.totals.get(&m).copied();
                entry.row.cpu_time_ns = value(Metric::CpuTime);
                entry.row.memory_current_bytes = value(Metric::MemoryCurrentBytes);
                entry.row.block_read_bytes = value(Metric::BlockReadBytes);
                entry.row.block_write_bytes = value(Metric::BlockWriteBytes);
                entry.row.net_rx_bytes = value(Metric::NetRxBytes);
                entry.row.net_tx_bytes = value(Metric::NetTxBytes);
            }
            if session.intervals() > entry.series.intervals()
                && let Some(point) = session.last_point()
            {
                entry.row.cpu_percent = point.values.get("cpu_percent").copied();
                entry.series.push(point);
            }
            let seen = entry.events.back().map(|e| e.t_ns);
            for event in session
                .events()
                .iter()
                .filter(|e| seen.is_none_or(|t| e.t_ns > t))
            {
                entry.events.push_back(event.clone());
                if entry.events.len() > RECENT_EVENTS {
                    entry.events.pop_front();
                }
            }
            entry.row.breaches = session
                .events()
                .iter()
                .filter(|e| e.kind == EventKind::ThresholdBreached)
                .count();
        }
        state.agent.samples += 1;
        state.agent.last_sample_seconds = took.as_secs_f64();
        state.agent.dropped = drops;
        state.agent.map_entries = map_entries;
        state.agent.watched = watched.watches().len() as u64;
    }

    fn agent_line(&self, agent: &AgentFigures) -> AgentLine {
        AgentLine {
            host: self.host.hostname.clone(),
            started_at: humantime::format_rfc3339_seconds(self.started_at).to_string(),
            interval_ns: u64::try_from(self.interval.as_nanos()).unwrap_or(u64::MAX),
            samples: agent.samples,
            // A latency whose start came before the probes is a note in reports, not a loss.
            dropped: agent
                .dropped
                .iter()
                .filter(|(reason, _)| **reason != crate::kernel::probe::LATENCY_START_UNSEEN)
                .map(|(_, n)| n)
                .sum(),
            listen: self.listen.clone(),
        }
    }

    fn with_store<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, String> {
        match &self.store {
            Some(store) => {
                f(&mut store.lock().unwrap_or_else(|e| e.into_inner())).map_err(|e| e.to_string())
            }
            None => Err("the agent stores no reports (--no-store)".into()),
        }
    }

    fn report(&self, id: i64) -> Result<Option<Report>, String> {
        if self.store.is_none() {
            return Ok(None);
        }
        self.with_store(|s| match s.report(id) {
            Ok(r) => Ok(Some(r)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        })
    }
}

/// A latency histogram in the API: count and percentiles, ns.
fn latency_json(latency: Latency, h: &cleanroom_common::Histogram) -> (String, Value) {
    (
        latency.name().to_owned(),
        serde_json::to_value(model::summarize(h)).unwrap_or(Value::Null),
    )
}

impl View for Board {
    fn metrics(&self) -> Result<String, String> {
        let began = Instant::now();
        let snapshot = {
            let state = self.state();
            Snapshot {
                cgroups: state.live.values().map(|l| l.snapshot.clone()).collect(),
                agent: state.agent.clone(),
            }
        };
        let text = exposition::render(snapshot).map_err(|e| e.to_string())?;
        self.state().agent.last_scrape_seconds = began.elapsed().as_secs_f64();
        Ok(text)
    }

    fn cgroups(&self) -> Result<Value, String> {
        let state = self.state();
        let rows: Vec<&LiveRow> = state.live.values().map(|l| &l.row).collect();
        Ok(json!({ "cgroups": rows }))
    }

    fn cgroup(&self, id: u64) -> Result<Option<Value>, String> {
        let state = self.state();
        let Some(live) = state.live.get(&CgroupId(id)) else {
            return Ok(None);
        };
        let totals: BTreeMap<&str, u64> = live
            .snapshot
            .totals
            .iter()
            .map(|(m, v)| (m.name(), *v))
            .collect();
        let latencies: serde_json::Map<String, Value> = live
            .snapshot
            .latencies
            .iter()
            .map(|(l, h)| latency_json(*l, h))
            .collect();
        Ok(Some(json!({
            "cgroup": live.row,
            "tags": live.tags,
            "totals": totals,
            "latencies": latencies,
            "series": live.series.points(),
            "events": live.events,
        })))
    }

    fn runs(&self) -> Result<Value, String> {
        if self.store.is_none() {
            return Ok(json!({ "runs": [], "stored": false }));
        }
        let rows = self.with_store(|s| s.list(None, RUNS_LISTED))?;
        Ok(json!({ "runs": rows, "stored": true }))
    }

    fn run(&self, id: i64) -> Result<Option<Value>, String> {
        self.report(id)?
            .map(|r| serde_json::to_value(r).map_err(|e| e.to_string()))
            .transpose()
    }

    fn run_html(&self, id: i64) -> Result<Option<String>, String> {
        self.report(id)?
            .map(|r| {
                render::report(&r, render::Format::Html)
                    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                    .map_err(|e| e.to_string())
            })
            .transpose()
    }

    fn index_html(&self) -> Result<String, String> {
        let (rows, line) = {
            let state = self.state();
            let rows: Vec<LiveRow> = state.live.values().map(|l| l.row.clone()).collect();
            (rows, self.agent_line(&state.agent))
        };
        let runs = match &self.store {
            Some(_) => self.with_store(|s| s.list(None, RUNS_LISTED))?,
            None => Vec::new(),
        };
        Ok(page::index(&rows, &runs, &line))
    }
}
