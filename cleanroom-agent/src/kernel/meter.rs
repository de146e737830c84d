//! Measures what each attached program costs per event while the probes run, by the method of
//! `kernel::cost`: a thread switches the kernel's BPF run-time statistics on for short windows
//! (`BPF_ENABLE_STATS`; they go off when its descriptor closes) and reads the programs' run
//! time and count every 250 ms of a window.
//!
//! The statistics add two clock reads to every run of every BPF program on the host while they
//! are on: a few percent of the time, at the windows' duty cycle.

use std::{
    collections::BTreeMap,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
    time::Duration,
};

use aya::sys::{Stats, enable_stats};

use crate::kernel::cost::Calibration;

/// One reading between two snapshots.
const SUB_WINDOW: Duration = Duration::from_millis(250);
/// Sub-windows of the first window, when the probes have just been loaded.
const FIRST_SUB_WINDOWS: u32 = 4;
/// Sub-windows of each later window.
const LATER_SUB_WINDOWS: u32 = 2;
/// From the end of a window to the start of the next.
const BETWEEN_WINDOWS: Duration = Duration::from_secs(30);

/// Program id → (run time in ns, runs) at one moment.
type Snapshot = BTreeMap<u32, (u64, u64)>;

#[derive(Default)]
struct State {
    stop: bool,
    calibration: Calibration,
    /// When a window is open: the snapshot at the start of its current sub-window.
    open: Option<Snapshot>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps `d` unless stopped; whether to go on.
    fn sleep(&self, d: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .wake
            .wait_timeout_while(state, d, |s| !s.stop)
            .unwrap_or_else(|e| e.into_inner());
        !state.stop
    }
}

/// The measuring thread; stopped and joined on drop.
pub struct CostMeter {
    shared: Arc<Shared>,
    programs: Arc<BTreeMap<u32, String>>,
    thread: Option<JoinHandle<()>>,
}

impl CostMeter {
    /// Starts measuring `programs` (kernel program id → hook name).
    pub fn start(programs: BTreeMap<u32, String>) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let programs = Arc::new(programs);
        let thread = {
            let (shared, programs) = (shared.clone(), programs.clone());
            std::thread::Builder::new()
                .name("probe-costs".into())
                .spawn(move || measure(&shared, &programs))
                .map_err(|e| log::warn!("the probes' costs are not measured: {e}"))
                .ok()
        };
        if thread.is_none() {
            shared.lock().calibration.unavailable = Some("no thread to measure them".into());
        }
        Self {
            shared,
            programs,
            thread,
        }
    }

    /// What was measured so far; when no sub-window has ended yet, what the open one has seen.
    pub fn calibration(&self) -> Calibration {
        let (mut calibration, open) = {
            let state = self.shared.lock();
            (state.calibration.clone(), state.open.clone())
        };
        if calibration.sub_windows == 0
            && let Some(start) = open
        {
            let now = snapshot(&self.programs);
            calibration.add_sub_window(deltas(&self.programs, &start, &now));
        }
        calibration
    }
}

impl Drop for CostMeter {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread: windows until stopped.
fn measure(shared: &Shared, programs: &BTreeMap<u32, String>) {
    let mut sub_windows = FIRST_SUB_WINDOWS;
    loop {
        let stats = match enable_stats(Stats::RunTime) {
            Ok(fd) => Some(fd),
            // Someone has them on for good (sysctl kernel.bpf_stats_enabled): measure anyway.
            Err(_) if stats_on_already() => None,
            Err(e) => {
                shared.lock().calibration.unavailable = Some(format!(
                    "the kernel's BPF run-time statistics could not be switched on ({e})"
                ));
                return;
            }
        };
        let mut start = snapshot(programs);
        shared.lock().open = Some(start.clone());
        for _ in 0..sub_windows {
            if !shared.sleep(SUB_WINDOW) {
                return;
            }
            let now = snapshot(programs);
            let mut state = shared.lock();
            state
                .calibration
                .add_sub_window(deltas(programs, &start, &now));
            state.open = Some(now.clone());
            start = now;
        }
        shared.lock().open = None;
        drop(stats);
        sub_windows = LATER_SUB_WINDOWS;
        if !shared.sleep(BETWEEN_WINDOWS) {
            return;
        }
    }
}

fn stats_on_already() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}

/// Run time and runs of each of `programs` now (those that cannot be read are left out).
fn snapshot(programs: &BTreeMap<u32, String>) -> Snapshot {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| programs.contains_key(&p.id()))
        .map(|p| {
            (
                p.id(),
                (
                    u64::try_from(p.run_time().as_nanos()).unwrap_or(u64::MAX),
                    p.run_count(),
                ),
            )
        })
        .collect()
}

/// Each hook's run time and runs between two snapshots.
fn deltas<'a>(
    programs: &'a BTreeMap<u32, String>,
    start: &Snapshot,
    end: &Snapshot,
) -> Vec<(&'a str, u64, u64)> {
    programs
        .iter()
        .filter_map(|(id, hook)| {
            let (t0, n0) = start.get(id)?;
            let (t1, n1) = end.get(id)?;
            Some((
                hook.as_str(),
                t1.saturating_sub(*t0),
                n1.saturating_sub(*n0),
            ))
        })
        .collect()
}
