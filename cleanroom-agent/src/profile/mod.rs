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
pub mod symbols;
pub mod unwind;
pub mod waits;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
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
use crate::kernel::probe::{ProfileSource, SamplingRates};

/// Samples a second on each CPU by default (not 100: not in step with timers).
pub const DEFAULT_FREQUENCY_HZ: u64 = 99;

/// User-mode page faults per fault sample by default: a sample costs about as much as 10 to
/// 20 faults, so profiling costs a fault-bound program a few percent.
pub const DEFAULT_FAULT_PERIOD: u64 = 256;

/// Bytes submitted to block devices per block sample by default.
pub const DEFAULT_BLOCK_PERIOD_BYTES: u64 = 1 << 20;

/// Taking samples as they come, on a thread of its own, while the run goes on.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Collector, ProfileSource)>,
    /// The event sampled.
    pub clock: &'static str,
    /// How often each profile samples.
    pub rates: SamplingRates,
}

impl Sampler {
    /// Starts taking `source`'s samples of run `run_id`.
    pub fn start(
        mut source: ProfileSource,
        run_id: u64,
        rates: SamplingRates,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let clock = source.clock;
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cleanroom-sampler".into())
            .spawn(move || {
                let mut collector = Collector::new(run_id);
                while !stopping.load(Ordering::Relaxed) {
                    source.wait(Duration::from_millis(20));
                    source.drain(|r| collector.add(r));
                }
                source.drain(|r| collector.add(r));
                (collector, source)
            })?;
        Ok(Self {
            stop,
            thread,
            clock,
            rates,
        })
    }

    /// Stops, takes what is left, and gives the profile (`lost`: samples the kernel dropped).
    pub fn finish(self, lost: u64) -> Option<Profile> {
        self.stop.store(true, Ordering::Relaxed);
        let (collector, source) = self.thread.join().ok()?;
        Some(collector.finish(self.clock, self.rates, lost, &source.unavailable))
    }
}
