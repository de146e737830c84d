//! The CPU profile of a run: where its tasks were when sampled.
//!
//! The data path: the kernel's `profile_cpu` samples each watched task on each CPU and sends
//! its kernel stack, user registers and the top of its user stack ([`StackSample`]); a thread
//! here ([`Sampler`]) takes them as they come, while the processes still live, and unwinds
//! each user stack with the mapped files' `.eh_frame` ([`unwind`], [`mappings`], [`modules`]);
//! equal stacks are counted together ([`Collector`]). At the end the distinct frames are named
//! ([`symbols`]) and the report gets its [`Profile`]: the top functions and the folded stacks a
//! flame graph is drawn from.

pub mod mappings;
pub mod modules;
pub mod symbols;
pub mod unwind;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use framehop::x86_64::CacheX86_64;
use serde::{Deserialize, Serialize};

use crate::{
    kernel::probe::{ProfileSource, StackSample},
    profile::{
        mappings::FileId,
        modules::ModuleFiles,
        symbols::Symbols,
        unwind::{ProcessUnwinder, Unwound, UserFrame},
    },
};

/// Samples a second on each CPU by default (not 100: not in step with timers).
pub const DEFAULT_FREQUENCY_HZ: u64 = 99;

/// Distinct stacks kept at most; samples of further ones are counted apart.
const MAX_STACKS: usize = 50_000;

/// One sampled stack as collected: the process name, its user frames and its kernel frames,
/// each innermost first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct StackKey {
    comm: [u8; 16],
    user: Vec<UserFrame>,
    kernel: Vec<u64>,
}

/// How the samples' stacks came out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unwinding {
    /// User stack unwound to its outermost frame.
    pub complete: u64,
    /// User stack unwound in part (the copy of the stack ended, or a frame had no unwind rule).
    pub truncated: u64,
    /// No user stack: a kernel thread, or a task whose user registers could not be read.
    pub kernel_only: u64,
    /// Not unwound: the process had ended before its mappings were read.
    pub process_gone: u64,
}

/// Counting the run's samples by stack, as they arrive.
pub struct Collector {
    run_id: u64,
    files: ModuleFiles,
    /// Each process's unwinder; `None` once it was found gone.
    processes: HashMap<u32, Option<ProcessUnwinder>>,
    cache: CacheX86_64,
    stacks: HashMap<StackKey, u64>,
    samples: u64,
    beyond: u64,
    unwinding: Unwinding,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("run_id", &self.run_id)
            .field("samples", &self.samples)
            .field("stacks", &self.stacks.len())
            .finish_non_exhaustive()
    }
}

impl Collector {
    /// Collecting the samples of run `run_id`.
    pub fn new(run_id: u64) -> Self {
        Self {
            run_id,
            files: ModuleFiles::default(),
            processes: HashMap::new(),
            cache: CacheX86_64::new(),
            stacks: HashMap::new(),
            samples: 0,
            beyond: 0,
            unwinding: Unwinding::default(),
        }
    }

    /// Counts one sample.
    pub fn add(&mut self, sample: &StackSample) {
        if sample.run_id != self.run_id {
            return;
        }
        self.samples += 1;
        let kernel_frames = (sample.kernel_stack_bytes as usize / 8).min(sample.kernel_stack.len());
        let kernel = sample.kernel_stack[..kernel_frames]
            .iter()
            .copied()
            .filter(|a| *a != 0)
            .collect();
        let user = if sample.user_sp == 0 {
            self.unwinding.kernel_only += 1;
            Vec::new()
        } else {
            let files = &mut self.files;
            let process = self
                .processes
                .entry(sample.tgid)
                .or_insert_with(|| ProcessUnwinder::new(sample.tgid, files));
            match process {
                None => {
                    self.unwinding.process_gone += 1;
                    Vec::new()
                }
                Some(p) => {
                    let len = (sample.user_stack_bytes as usize).min(sample.user_stack.len());
                    let (frames, outcome) = p.unwind(
                        files,
                        &mut self.cache,
                        (sample.user_ip, sample.user_sp, sample.user_bp),
                        &sample.user_stack[..len],
                    );
                    match outcome {
                        Unwound::Complete => self.unwinding.complete += 1,
                        Unwound::Truncated => self.unwinding.truncated += 1,
                        Unwound::NoMappings => self.unwinding.process_gone += 1,
                    }
                    frames
                }
            }
        };
        let key = StackKey {
            comm: sample.comm,
            user,
            kernel,
        };
        if let Some(n) = self.stacks.get_mut(&key) {
            *n += 1;
        } else if self.stacks.len() < MAX_STACKS {
            self.stacks.insert(key, 1);
        } else {
            self.beyond += 1;
        }
    }

    /// The profile: frames named, stacks folded, functions ranked. `lost` samples the kernel
    /// had no room for.
    pub fn finish(self, clock: &str, frequency_hz: u64, lost: u64) -> Profile {
        let mut user: BTreeMap<FileId, (String, BTreeSet<u64>)> = BTreeMap::new();
        let mut kernel = BTreeSet::new();
        let paths: HashMap<FileId, String> = self.files.paths();
        for key in self.stacks.keys() {
            for f in &key.user {
                if let UserFrame::InFile { file, svma } = f
                    && let Some(path) = paths.get(file)
                {
                    user.entry(*file)
                        .or_insert_with(|| (path.clone(), BTreeSet::new()))
                        .1
                        .insert(*svma);
                }
            }
            kernel.extend(key.kernel.iter().copied());
        }
        let symbols = Symbols::resolve(&user, &kernel);
        let mut folded: BTreeMap<String, u64> = BTreeMap::new();
        for (key, n) in &self.stacks {
            *folded.entry(fold(key, &symbols, &paths)).or_default() += n;
        }
        let mut stacks: Vec<FoldedStack> = folded
            .into_iter()
            .map(|(stack, samples)| FoldedStack { stack, samples })
            .collect();
        stacks.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.stack.cmp(&b.stack)));
        Profile {
            clock: clock.to_owned(),
            frequency_hz,
            samples: self.samples,
            lost,
            stacks_not_kept: self.beyond,
            unwinding: self.unwinding,
            top_functions: top_functions(&stacks, self.samples, TOP_FUNCTIONS),
            stacks,
        }
    }
}

/// Functions the report ranks.
const TOP_FUNCTIONS: usize = 50;

/// `key` as a folded stack: the process name, then each frame outermost first (a kernel
/// frame's name ends in `_[k]`), separated by `;`.
fn fold(key: &StackKey, symbols: &Symbols, paths: &HashMap<FileId, String>) -> String {
    let comm_len = key
        .comm
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(key.comm.len());
    let mut parts = vec![clean(&String::from_utf8_lossy(&key.comm[..comm_len]))];
    for f in key.user.iter().rev() {
        match f {
            UserFrame::InFile { file, svma } => match symbols.user(*file, *svma) {
                Some(names) => parts.extend(names.iter().map(|n| clean(n))),
                // No symbol (a stripped file): its file, so its frames add up together.
                None => {
                    let path = paths.get(file).map_or("?", String::as_str);
                    let name = path.rsplit('/').next().unwrap_or(path);
                    parts.push(format!("[{}]", clean(name)));
                }
            },
            // By address, each would be a stack of its own.
            UserFrame::Unknown(_) => parts.push("[unknown]".to_owned()),
        }
    }
    for address in key.kernel.iter().rev() {
        match symbols.kernel(*address) {
            Some(names) => parts.extend(names.iter().map(|n| format!("{}_[k]", clean(n)))),
            None => parts.push(format!("[kernel {address:#x}]_[k]")),
        }
    }
    parts.join(";")
}

/// A frame name as a folded stack can hold it: no `;`, no line breaks.
fn clean(name: &str) -> String {
    name.replace([';', '\n', '\r'], ":")
}

/// The functions with the most samples of their own (the leaf), with their share of all
/// samples, their own and with what they called.
pub fn top_functions(stacks: &[FoldedStack], samples: u64, n: usize) -> Vec<FunctionShare> {
    let mut own: HashMap<&str, u64> = HashMap::new();
    let mut total: HashMap<&str, u64> = HashMap::new();
    for s in stacks {
        let frames: Vec<&str> = s.stack.split(';').skip(1).collect();
        if let Some(leaf) = frames.last() {
            *own.entry(leaf).or_default() += s.samples;
        }
        let distinct: BTreeSet<&str> = frames.into_iter().collect();
        for f in distinct {
            *total.entry(f).or_default() += s.samples;
        }
    }
    let share = |x: u64| {
        if samples == 0 {
            0.0
        } else {
            x as f64 / samples as f64
        }
    };
    let mut out: Vec<FunctionShare> = total
        .iter()
        .map(|(f, t)| {
            let s = own.get(f).copied().unwrap_or(0);
            FunctionShare {
                function: (*f).to_owned(),
                self_samples: s,
                total_samples: *t,
                self_share: share(s),
                total_share: share(*t),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (b.self_samples, b.total_samples, &a.function).cmp(&(
            a.self_samples,
            a.total_samples,
            &b.function,
        ))
    });
    out.truncate(n);
    out
}

/// A run's CPU profile, as the report has it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// The event sampled: `cycles` (a PMU) or `cpu-clock`.
    pub clock: String,
    /// Samples a second on each CPU.
    pub frequency_hz: u64,
    /// Samples taken of the run's tasks.
    pub samples: u64,
    /// Samples lost: the kernel's buffer was full.
    pub lost: u64,
    /// Samples of stacks beyond the distinct stacks kept (in no stack below).
    #[serde(default)]
    pub stacks_not_kept: u64,
    /// How the user stacks came out.
    pub unwinding: Unwinding,
    /// The functions with the most samples of their own.
    pub top_functions: Vec<FunctionShare>,
    /// Every distinct stack, folded, the most samples first.
    pub stacks: Vec<FoldedStack>,
}

impl Profile {
    /// The share of samples whose user stack was unwound to its end, of those with one.
    pub fn unwound_share(&self) -> Option<f64> {
        let u = self.unwinding;
        let with_user = u.complete + u.truncated + u.process_gone;
        (with_user > 0).then(|| u.complete as f64 / with_user as f64)
    }

    /// The first `n` of the top functions with samples of their own (the list goes on with
    /// callers ranked by their totals).
    pub fn own_top(&self, n: usize) -> impl Iterator<Item = &FunctionShare> {
        self.top_functions
            .iter()
            .filter(|f| f.self_samples > 0)
            .take(n)
    }

    /// The stacks in the folded format flame graph tools read: one `frames count` per line.
    pub fn folded(&self) -> String {
        let mut out = String::new();
        for s in &self.stacks {
            out.push_str(&s.stack);
            out.push(' ');
            out.push_str(&s.samples.to_string());
            out.push('\n');
        }
        out
    }
}

/// One function's share of the samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionShare {
    /// Its name (demangled; a kernel function's ends in `_[k]`).
    pub function: String,
    /// Samples in it.
    pub self_samples: u64,
    /// Samples in it or in what it called.
    pub total_samples: u64,
    /// `self_samples` of all samples.
    pub self_share: f64,
    /// `total_samples` of all samples.
    pub total_share: f64,
}

/// A stack, folded (`process;outermost;…;innermost`), and its samples.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldedStack {
    /// The frames.
    pub stack: String,
    /// Samples of it.
    pub samples: u64,
}

/// Taking samples as they come, on a thread of its own, while the run goes on.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Collector, ProfileSource)>,
    /// The event sampled.
    pub clock: &'static str,
    /// Samples a second on each CPU.
    pub frequency_hz: u64,
}

impl Sampler {
    /// Starts taking `source`'s samples of run `run_id`.
    pub fn start(
        mut source: ProfileSource,
        run_id: u64,
        frequency_hz: u64,
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
                    source.drain(|s| collector.add(s));
                }
                source.drain(|s| collector.add(s));
                (collector, source)
            })?;
        Ok(Self {
            stop,
            thread,
            clock,
            frequency_hz,
        })
    }

    /// Stops, takes what is left, and gives the profile (`lost`: samples the kernel dropped).
    pub fn finish(self, lost: u64) -> Option<Profile> {
        self.stop.store(true, Ordering::Relaxed);
        let (collector, _source) = self.thread.join().ok()?;
        Some(collector.finish(self.clock, self.frequency_hz, lost))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_rank_by_their_own_samples() {
        let stacks = [
            FoldedStack {
                stack: "p;main;outer;hot_a".into(),
                samples: 70,
            },
            FoldedStack {
                stack: "p;main;outer;hot_b".into(),
                samples: 30,
            },
        ];
        let top = top_functions(&stacks, 100, 3);
        let names: Vec<&str> = top.iter().map(|f| f.function.as_str()).collect();
        assert_eq!(names, ["hot_a", "hot_b", "main"]);
        assert_eq!((top[0].self_samples, top[0].total_samples), (70, 70));
        assert_eq!(top[2].total_samples, 100);
        assert!((top[1].self_share - 0.3).abs() < 1e-9);
    }
}
