//! The CPU profile of a run: where its tasks were when sampled.
//!
//! The data path: the kernel's `profile_cpu` samples each watched task on each CPU and sends
//! its kernel stack, user registers and the top of its user stack ([`StackSample`]); a thread
//! here ([`Sampler`]) takes them as they come, while the processes still live, and unwinds
//! each user stack with the mapped files' `.eh_frame` ([`unwind`], [`mappings`], [`modules`]);
//! equal stacks are counted together ([`Collector`]). At the end the distinct frames are named
//! ([`symbols`]) and the report gets its [`Profile`]: the top functions and the folded stacks a
//! flame graph is drawn from.

//! The profiles of a run: where its tasks were when on a CPU, where they waited when off it,
//! where they took their page faults and submitted their block I/O.
//!
//! The data path: the kernel's programs (`profile_cpu`, `profile_switch`, `profile_fault`,
//! `profile_block`) send each sampled task's kernel stack, user registers and the top of its
//! user stack ([`StackSample`]), and for a wait its time once it ends ([`OffCpuEnd`]); a thread
//! here ([`Sampler`]) takes them as they come, while the processes still live, and unwinds
//! each user stack with the mapped files' `.eh_frame` ([`unwind`], [`mappings`], [`modules`]);
//! equal stacks are counted together, weighted by what each sample stands for ([`Collector`]).
//! At the end the distinct frames are named ([`symbols`]), waits are told apart by kind
//! ([`waits`]), and the report gets its [`Profile`]: top functions and folded stacks a flame
//! graph is drawn from, for each kind of profile.

pub mod collect;
pub mod mappings;
pub mod model;
pub mod modules;
pub mod sideband;
pub mod spaces;
pub mod symbols;
pub mod unwind;
pub mod waits;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    os::fd::AsFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

pub use self::{
    collect::Collector,
    model::{
        FoldedStack, FunctionShare, KindTotal, Profile, ProfileKind, Unwinding, View,
        WeightedProfile, top_functions,
    },
};
use self::{
    mappings::{Mapping, MappingSource, ProcMaps},
    sideband::Sideband,
    spaces::{AddressSpaces, SpaceEvent},
};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::kernel::probe::{Probes, ProfileRecord, ProfileSource, SamplingRates};

/// Samples a second on each CPU by default (not 100: not in step with timers).
pub const DEFAULT_FREQUENCY_HZ: u64 = 99;

/// User-mode page faults per fault sample by default: a sample costs about as much as 10 to
/// 20 faults, so profiling costs a fault-bound program a few percent.
pub const DEFAULT_FAULT_PERIOD: u64 = 256;

/// Bytes submitted to block devices per block sample by default.
pub const DEFAULT_BLOCK_PERIOD_BYTES: u64 = 1 << 20;

/// Taking samples as they come, on a thread of its own, while the runs go on: one
/// [`Collector`] per run (`cleanroom run` has one, the agent one per watched cgroup), each
/// taken out when its run ends ([`Sampler::take`]). Dropping it stops the thread.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    /// Wakes the thread at once (a request, or the stop) rather than at its next read.
    wake: Arc<EventFd>,
    requests: mpsc::Sender<Take>,
    thread: Option<JoinHandle<()>>,
    /// The event sampled.
    pub clock: &'static str,
    /// How often each profile samples.
    pub rates: SamplingRates,
    /// The kinds of profile the kernel could not take, with why.
    unavailable: Vec<(u32, String)>,
}

/// A request to the sampler's thread: a run's collector, taken out, sent back.
type Take = (u64, mpsc::Sender<Collector>);

/// Runs taken out that the thread remembers at most (to drop their late samples).
const MAX_TAKEN: usize = 4_096;

/// How long [`Sampler::take`] waits for the thread at most.
const TAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long samples wait in the buffer at most: the kernel's programs wake the thread only
/// once a batch is there (a wakeup per sample cost more than reading it), so at low rates the
/// thread reads at this pace.
const READ_EVERY: Duration = Duration::from_millis(100);

/// How much later than its time a sample may still be put in the buffer (its program took the
/// time, then copied the stacks): reported mappings older than the start of a read by more
/// than this are taken in even where no sample has gone past them.
const SAMPLE_LATENESS_NS: u64 = 10_000_000;

impl Sampler {
    /// Starts taking `source`'s samples.
    pub fn start(mut source: ProfileSource, rates: SamplingRates) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let clock = source.clock;
        let unavailable = source.unavailable.clone();
        let stopping = stop.clone();
        let (to_thread, requests) = mpsc::channel::<Take>();
        let wake = Arc::new(EventFd::from_value_and_flags(
            0,
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        let woken = wake.clone();
        let mut followed = Followed::start();
        let thread = std::thread::Builder::new()
            .name("cleanroom-sampler".into())
            .spawn(move || {
                let mut collectors: HashMap<u64, Collector> = HashMap::new();
                // Runs taken out: a sample of one that was under way as it ended is dropped,
                // not kept in a collector nobody takes. Cleared now and then, which costs
                // nothing but memory once no such sample can still arrive.
                let mut taken: HashSet<u64> = HashSet::new();
                let drain = |source: &mut ProfileSource,
                             followed: &mut Followed,
                             collectors: &mut HashMap<u64, Collector>,
                             taken: &HashSet<u64>| {
                    source.drain(|r| {
                        let run_id = r.run_id();
                        if taken.contains(&run_id) {
                            return;
                        }
                        if let ProfileRecord::Sample(sample) = &r {
                            followed.at(sample.time_ns);
                        }
                        collectors
                            .entry(run_id)
                            .or_insert_with(|| Collector::new(run_id))
                            .add(r, followed);
                    });
                };
                loop {
                    let last = stopping.load(Ordering::Relaxed);
                    if !last {
                        source.wait(READ_EVERY, woken.as_fd());
                        // Nothing to read if not woken by it: the value only says it was.
                        let _ = woken.read();
                    }
                    let began = monotonic_ns();
                    drain(&mut source, &mut followed, &mut collectors, &taken);
                    followed.end_round(began);
                    while let Ok((run_id, reply)) = requests.try_recv() {
                        let collector = collectors
                            .remove(&run_id)
                            .unwrap_or_else(|| Collector::new(run_id));
                        let _ = reply.send(collector);
                        if taken.len() >= MAX_TAKEN {
                            taken.clear();
                        }
                        taken.insert(run_id);
                    }
                    if last {
                        break;
                    }
                }
            })?;
        Ok(Self {
            stop,
            wake,
            requests: to_thread,
            thread: Some(thread),
            clock,
            rates,
            unavailable,
        })
    }

    /// Starts profiling with `probes` at `rates` (no cgroup is profiled yet: see
    /// [`Probes::profile_cgroups`]); a host that cannot is a note, not an error: the notes say
    /// what was not taken, and why.
    pub fn attach(probes: &mut Probes, rates: SamplingRates) -> (Option<Self>, Vec<String>) {
        let started = probes
            .start_profiling(rates)
            .map_err(|e| e.to_string())
            .and_then(|source| {
                let notes = source
                    .unavailable
                    .iter()
                    .map(|(_, why)| format!("a profile could not be taken: {why}"))
                    .collect();
                Self::start(source, rates)
                    .map(|s| (s, notes))
                    .map_err(|e| e.to_string())
            });
        match started {
            Ok((sampler, notes)) => (Some(sampler), notes),
            Err(e) => (None, vec![format!("no profile was taken: {e}")]),
        }
    }

    /// The profile of run `run_id`: every sample of it that arrived, taken out (`lost`:
    /// samples the kernel dropped, of every run). `None` if the thread is gone.
    pub fn take(&self, run_id: u64, lost: u64) -> Option<Profile> {
        let (reply, answer) = mpsc::channel();
        self.requests.send((run_id, reply)).ok()?;
        let _ = self.wake.write(1);
        let collector = answer.recv_timeout(TAKE_TIMEOUT).ok()?;
        Some(collector.finish(self.clock, self.rates, lost, &self.unavailable))
    }
}

/// Sampled processes' mappings: followed through the kernel's reports of each `exec`, `fork`
/// and `mmap` since profiling began ([`Sideband`], [`AddressSpaces`]), so that a process that
/// ended before its samples were read, or was first sampled in its loader, is unwound with the
/// mappings it had; read from `/proc` for a process not followed (started before).
///
/// Samples are read in batches, some time after they were taken: each report is taken in only
/// once the samples read have gone past its time ([`Self::at`]), so a sample taken before its
/// process's `exec` is unwound with the program it was in.
#[derive(Debug)]
struct Followed {
    sideband: Option<Sideband>,
    spaces: AddressSpaces,
    /// Reports read but not yet taken in (later than the samples read so far), oldest first.
    pending: VecDeque<(u64, SpaceEvent)>,
    /// The time reports are taken in up to: that of the latest sample read.
    now: u64,
    /// Processes that ended before the round of samples now being read began.
    ended: Vec<u32>,
}

impl Followed {
    /// Starts following; without the kernel's reports (a perf event refused), every process's
    /// mappings are read from `/proc`.
    fn start() -> Self {
        let sideband = aya::util::online_cpus()
            .map_err(|(what, e)| std::io::Error::other(format!("{what}: {e}")))
            .and_then(|cpus| Sideband::open(&cpus));
        let sideband = match sideband {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!(
                    "processes' mappings are read from /proc when first sampled (the kernel's \
                     mmap reports could not be had: {e}): a process that ends first is not \
                     unwound"
                );
                None
            }
        };
        Self {
            sideband,
            spaces: AddressSpaces::default(),
            pending: VecDeque::new(),
            now: 0,
            ended: Vec::new(),
        }
    }

    /// The sample about to be read was taken at `time_ns` (`CLOCK_MONOTONIC`).
    fn at(&mut self, time_ns: u64) {
        self.now = self.now.max(time_ns);
    }

    /// Reads what the kernel reported since the last call, and takes in what is not later
    /// than [`Self::now`].
    fn catch_up(&mut self) {
        if let Some(sideband) = &mut self.sideband {
            let pending = &mut self.pending;
            let mut unordered = false;
            sideband.drain(|time, event| {
                unordered |= pending.back().is_some_and(|(last, _)| *last > time);
                pending.push_back((time, event));
            });
            if unordered {
                pending.make_contiguous().sort_by_key(|(time, _)| *time);
            }
        }
        while let Some((_, event)) = self.pending.pop_front_if(|(time, _)| *time <= self.now) {
            self.spaces.apply(event);
        }
    }

    /// A round of reading samples, begun at `began` (`CLOCK_MONOTONIC` ns), ended: every
    /// sample taken well before then has been read, so what was reported before is taken in;
    /// processes that had ended before the round began are forgotten (every sample of theirs
    /// was sent before they ended, so it has been read).
    fn end_round(&mut self, began: u64) {
        self.at(began.saturating_sub(SAMPLE_LATENESS_NS));
        self.catch_up();
        let ended = self.spaces.take_exited();
        self.spaces
            .forget(&std::mem::replace(&mut self.ended, ended));
    }
}

/// `CLOCK_MONOTONIC` now, in ns: the clock of the samples' times.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

impl MappingSource for Followed {
    fn mappings(&mut self, tgid: u32) -> Option<(Option<u64>, Vec<Mapping>)> {
        self.catch_up();
        match self.spaces.get(tgid) {
            Some((version, mappings)) => Some((Some(version), mappings.to_vec())),
            None => ProcMaps.mappings(tgid),
        }
    }

    fn version(&mut self, tgid: u32) -> Option<u64> {
        self.catch_up();
        self.spaces.get(tgid).map(|(version, _)| version)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
