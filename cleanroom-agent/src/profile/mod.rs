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
    collections::{HashMap, HashSet},
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
    spaces::AddressSpaces,
};
use crate::kernel::probe::{Probes, ProfileSource, SamplingRates};

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

impl Sampler {
    /// Starts taking `source`'s samples.
    pub fn start(mut source: ProfileSource, rates: SamplingRates) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let clock = source.clock;
        let unavailable = source.unavailable.clone();
        let stopping = stop.clone();
        let (to_thread, requests) = mpsc::channel::<Take>();
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
                        collectors
                            .entry(run_id)
                            .or_insert_with(|| Collector::new(run_id))
                            .add(r, followed);
                    });
                    followed.end_round();
                };
                loop {
                    let last = stopping.load(Ordering::Relaxed);
                    if !last {
                        source.wait(Duration::from_millis(20));
                    }
                    drain(&mut source, &mut followed, &mut collectors, &taken);
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
        let collector = answer.recv_timeout(TAKE_TIMEOUT).ok()?;
        Some(collector.finish(self.clock, self.rates, lost, &self.unavailable))
    }
}

/// Sampled processes' mappings: followed through the kernel's reports of each `exec`, `fork`
/// and `mmap` since profiling began ([`Sideband`], [`AddressSpaces`]), so that a process that
/// ended before its samples were read, or was first sampled in its loader, is unwound with the
/// mappings it had; read from `/proc` for a process not followed (started before).
#[derive(Debug)]
struct Followed {
    sideband: Option<Sideband>,
    spaces: AddressSpaces,
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
            ended: Vec::new(),
        }
    }

    /// Takes in what the kernel reported since the last call.
    fn catch_up(&mut self) {
        if let Some(sideband) = &mut self.sideband {
            let spaces = &mut self.spaces;
            sideband.drain(|event| spaces.apply(event));
        }
    }

    /// A round of reading samples ended: processes that had ended before it began are
    /// forgotten (every sample of theirs was sent before they ended, so it has been read).
    fn end_round(&mut self) {
        self.catch_up();
        let ended = self.spaces.take_exited();
        self.spaces
            .forget(&std::mem::replace(&mut self.ended, ended));
    }
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
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
