//! Counting a run's samples by stack as they arrive, and naming them at the end.
//!
//! Each sample's user stack is unwound while its process still lives ([`super::unwind`]);
//! equal stacks are counted together, weighted by what each sample stands for, and an off-CPU
//! wait's stacks are joined with its end ([`Collector`]). At the end the distinct frames are
//! named ([`super::symbols`]), the tracing machinery's own kernel frames dropped, waits told
//! apart by kind ([`super::waits`]), and each stack's own function found ([`Namer`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, hash_map::Entry};

use framehop::x86_64::CacheX86_64;

use crate::{
    kernel::probe::{OffCpuEnd, ProfileRecord, SamplingRates, StackSample},
    metric::Unit,
    profile::{
        mappings::{FileId, MappingSource},
        model::{
            FoldedStack, KindTotal, Module, Profile, ProfileKind, Unwinding, WeightedProfile,
            rank_functions, share, top_functions,
        },
        modules::ModuleFiles,
        symbols::Symbols,
        unwind::{ProcessUnwinder, Unwound, UserFrame},
        waits,
    },
};

/// Distinct stacks kept at most, per profile; samples of further ones are counted apart.
const MAX_STACKS: usize = 50_000;

/// One sampled stack as collected: the process name, what the kernel said of the moment (an
/// off-CPU task's state, a bio's direction; 0 otherwise), its user frames and its kernel
/// frames, each innermost first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct StackKey {
    comm: [u8; 16],
    state: u32,
    user: Vec<UserFrame>,
    kernel: Vec<u64>,
}

/// Counting one kind of sample by stack, weighted.
#[derive(Debug, Default)]
struct Tally {
    stacks: HashMap<StackKey, u64>,
    /// Samples (waits, for off-CPU).
    events: u64,
    /// Their weight, stacks or not.
    total: u64,
    /// Weight without stacks (off-CPU waits whose stacks were not copied).
    not_captured: u64,
    /// Weight of stacks beyond [`MAX_STACKS`].
    beyond: u64,
    unwinding: Unwinding,
}

impl Tally {
    fn add(&mut self, key: StackKey, weight: u64) {
        self.events += 1;
        self.total += weight;
        if let Some(n) = self.stacks.get_mut(&key) {
            *n += weight;
        } else if self.stacks.len() < MAX_STACKS {
            self.stacks.insert(key, weight);
        } else {
            self.beyond += weight;
        }
    }

    fn add_without_stack(&mut self, weight: u64) {
        self.events += 1;
        self.total += weight;
        self.not_captured += weight;
    }
}

/// Counting the run's samples by stack, as they arrive.
pub struct Collector {
    run_id: u64,
    files: ModuleFiles,
    /// Each process's unwinder, with the address space it was read for (a new one from each
    /// exec); `None` once it was found gone.
    processes: HashMap<u32, (u64, Option<ProcessUnwinder>)>,
    cache: CacheX86_64,
    tallies: BTreeMap<ProfileKind, Tally>,
    /// Stacks of waits under way, by thread, with when each began.
    waiting: HashMap<u32, (StackKey, u64)>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("run_id", &self.run_id)
            .field("tallies", &self.tallies)
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
            tallies: ProfileKind::ALL
                .iter()
                .map(|k| (*k, Tally::default()))
                .collect(),
            waiting: HashMap::new(),
        }
    }

    /// Counts one record, its process's mappings found in `source`.
    pub fn add(&mut self, record: ProfileRecord<'_>, source: &mut dyn MappingSource) {
        match record {
            ProfileRecord::Sample(s) => self.add_sample(s, source),
            ProfileRecord::OffCpuEnd(e) => self.end_wait(&e),
        }
    }

    fn add_sample(&mut self, sample: &StackSample, source: &mut dyn MappingSource) {
        if sample.run_id != self.run_id {
            return;
        }
        let Some(kind) = ProfileKind::ALL
            .into_iter()
            .find(|k| k.sample_kind() == sample.kind)
        else {
            return;
        };
        let (key, outcome) = self.stack_of(sample, source);
        let tally = self.tallies.entry(kind).or_default();
        tally.unwinding.note(outcome);
        match kind {
            ProfileKind::Cpu => tally.add(key, 1),
            ProfileKind::OffCpu => {
                self.waiting.insert(sample.pid, (key, sample.time_ns));
            }
            ProfileKind::Faults | ProfileKind::Block => tally.add(key, sample.weight),
        }
    }

    /// A wait ended: its time to the stack it began in, when that was sent.
    fn end_wait(&mut self, end: &OffCpuEnd) {
        if end.run_id != self.run_id {
            return;
        }
        let ns = end.in_ns.saturating_sub(end.out_ns);
        let began = self
            .waiting
            .remove(&end.pid)
            .filter(|(_, out)| *out == end.out_ns && end.captured != 0);
        let tally = self.tallies.entry(ProfileKind::OffCpu).or_default();
        match began {
            Some((key, _)) => tally.add(key, ns),
            None => tally.add_without_stack(ns),
        }
    }

    /// A sample's stack, and how its user part was unwound (`None`: it has none).
    fn stack_of(
        &mut self,
        sample: &StackSample,
        source: &mut dyn MappingSource,
    ) -> (StackKey, Option<Unwound>) {
        let kernel_frames = (sample.kernel_stack_bytes as usize / 8).min(sample.kernel_stack.len());
        let kernel = sample.kernel_stack[..kernel_frames]
            .iter()
            .copied()
            .filter(|a| *a != 0)
            .collect();
        let (user, outcome) = if sample.user_sp == 0 {
            (Vec::new(), None)
        } else {
            let files = &mut self.files;
            let process = match self.processes.entry(sample.tgid) {
                // Read again after an exec: the new program's files may lie where the old's did.
                Entry::Occupied(mut e) if e.get().0 != sample.mm && sample.mm != 0 => {
                    e.insert((sample.mm, ProcessUnwinder::new(sample.tgid, files, source)));
                    e.into_mut()
                }
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    e.insert((sample.mm, ProcessUnwinder::new(sample.tgid, files, source)))
                }
            };
            match &mut process.1 {
                None => (Vec::new(), Some(Unwound::NoMappings)),
                Some(p) => {
                    let len = (sample.user_stack_bytes as usize).min(sample.user_stack.len());
                    let (frames, outcome) = p.unwind(
                        files,
                        source,
                        &mut self.cache,
                        (sample.user_ip, sample.user_sp, sample.user_bp),
                        &sample.user_stack[..len],
                    );
                    (frames, Some(outcome))
                }
            }
        };
        let key = StackKey {
            comm: sample.comm,
            state: sample.state,
            user,
            kernel,
        };
        (key, outcome)
    }

    /// The profiles: frames named, stacks folded, functions ranked. `lost`: samples the
    /// kernel had no room for; `unavailable`: kinds this kernel could not take, with why.
    pub fn finish(
        mut self,
        clock: &str,
        rates: SamplingRates,
        lost: u64,
        unavailable: &[(u32, String)],
    ) -> Profile {
        let mut user: BTreeMap<FileId, (String, BTreeSet<u64>)> = BTreeMap::new();
        let mut kernel = BTreeSet::new();
        let files = self.files.read_files();
        let paths: HashMap<FileId, String> =
            files.iter().map(|(id, f)| (*id, f.path.clone())).collect();
        for key in self.tallies.values().flat_map(|t| t.stacks.keys()) {
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
        let modules = user
            .keys()
            .filter_map(|id| files.get(id))
            .map(|f| Module {
                path: f.path.clone(),
                build_id: f.build_id.as_deref().map(hex),
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let symbols = Symbols::resolve(&user, &kernel);
        let namer = Namer {
            symbols: &symbols,
            paths: &paths,
        };
        let cpu = self.tallies.remove(&ProfileKind::Cpu).unwrap_or_default();
        let stacks = namer.named(&cpu, ProfileKind::Cpu).stacks;
        let mut profile = Profile {
            clock: clock.to_owned(),
            frequency_hz: rates.frequency_hz,
            user_stack_bytes: rates.stack_bytes,
            samples: cpu.events,
            lost,
            stacks_not_kept: cpu.beyond,
            unwinding: cpu.unwinding,
            top_functions: top_functions(&stacks, cpu.events, TOP_FUNCTIONS),
            stacks,
            off_cpu: None,
            faults: None,
            block: None,
            unavailable: BTreeMap::new(),
            modules,
        };
        for (kind, tally) in self.tallies {
            let why = unavailable
                .iter()
                .find(|(k, _)| *k == kind.sample_kind())
                .map(|(_, why)| why.clone());
            if let Some(why) = why {
                profile.unavailable.insert(kind.name().to_owned(), why);
                continue;
            }
            let named = namer.named(&tally, kind);
            let weighted = WeightedProfile {
                unit: unit_name(kind.unit()).to_owned(),
                sample_every: match kind {
                    ProfileKind::Faults => Some(rates.fault_period),
                    ProfileKind::Block => Some(rates.block_period_bytes),
                    _ => None,
                },
                samples: tally.events,
                total: tally.total,
                not_captured: tally.not_captured,
                stacks_not_kept: tally.beyond,
                by_kind: named
                    .kinds
                    .into_iter()
                    .map(|(kind, total)| KindTotal {
                        kind,
                        total,
                        share: share(total, tally.total),
                    })
                    .collect(),
                unwinding: tally.unwinding,
                top_functions: rank_functions(
                    &named.stacks,
                    named.own.iter().map(|(f, n)| (f.as_str(), *n)).collect(),
                    tally.total,
                    TOP_FUNCTIONS,
                    kind.lead(),
                ),
                stacks: named.stacks,
            };
            match kind {
                ProfileKind::OffCpu => profile.off_cpu = Some(weighted),
                ProfileKind::Faults => profile.faults = Some(weighted),
                ProfileKind::Block => profile.block = Some(weighted),
                ProfileKind::Cpu => {}
            }
        }
        profile
    }
}

/// `bytes` in lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A unit's name in the JSON report.
fn unit_name(unit: Unit) -> &'static str {
    match unit {
        Unit::Nanoseconds => "ns",
        Unit::Bytes => "bytes",
        Unit::Count => "count",
    }
}

/// Names stacks' frames.
struct Namer<'a> {
    symbols: &'a Symbols,
    paths: &'a HashMap<FileId, String>,
}

/// A tally's stacks as the report has them.
struct Named {
    /// Folded, the most weight first.
    stacks: Vec<FoldedStack>,
    /// Weight by kind of wait or direction, the most first.
    kinds: Vec<(String, u64)>,
    /// Weight by each stack's own function: its innermost user frame outside the C library.
    own: HashMap<String, u64>,
}

/// Kernel functions of the tracing machinery itself, innermost on the stacks that tracepoint
/// programs take: not where the task was.
const TRACING_FRAMES: &[&str] = &["bpf_prog_", "bpf_trace_run", "__traceiter_", "__bpf_trace_"];

/// Files of the C library and the dynamic loader, whose functions are the way into the kernel
/// (`read`, `nanosleep`), not what the program was doing: a weighted profile's own function
/// is the innermost frame outside them.
const C_LIBRARY_FILES: &[&str] = &[
    "libc.so",
    "libc-",
    "ld-linux",
    "libpthread",
    "librt",
    "libdl",
];

impl Namer<'_> {
    /// `tally`'s stacks named: folded, by kind of wait (off CPU) or direction (block I/O),
    /// and by own function.
    fn named(&self, tally: &Tally, kind: ProfileKind) -> Named {
        let mut folded: BTreeMap<String, u64> = BTreeMap::new();
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        let mut own: HashMap<String, u64> = HashMap::new();
        for (key, n) in &tally.stacks {
            // Each frame's names: the function, then those inlined in it, outermost first.
            let kernel: Vec<Vec<String>> = key
                .kernel
                .iter()
                .map(|a| match self.symbols.kernel(*a) {
                    Some(names) => names.iter().map(|n| clean(n)).collect(),
                    None => vec![format!("[kernel {a:#x}]")],
                })
                .skip_while(|names| {
                    names
                        .first()
                        .is_some_and(|n| TRACING_FRAMES.iter().any(|t| n.starts_with(t)))
                })
                .collect();
            let label = match kind {
                ProfileKind::OffCpu => Some(
                    waits::classify(
                        kernel
                            .iter()
                            .flat_map(|names| names.iter().rev())
                            .map(String::as_str),
                    )
                    .label(),
                ),
                ProfileKind::Block => Some(if key.state == 1 { "write" } else { "read" }),
                ProfileKind::Cpu | ProfileKind::Faults => None,
            };
            if let Some(label) = label {
                *kinds.entry(label.to_owned()).or_default() += n;
            }
            let (stack, own_function) = self.fold(key, label, &kernel);
            if let Some(f) = own_function {
                *own.entry(f).or_default() += n;
            }
            *folded.entry(stack).or_default() += n;
        }
        if tally.not_captured > 0 {
            *folded.entry(NOT_CAPTURED.to_owned()).or_default() += tally.not_captured;
            *kinds
                .entry("unknown (stack not copied)".to_owned())
                .or_default() += tally.not_captured;
        }
        let mut stacks: Vec<FoldedStack> = folded
            .into_iter()
            .map(|(stack, samples)| FoldedStack { stack, samples })
            .collect();
        stacks.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.stack.cmp(&b.stack)));
        let mut kinds: Vec<(String, u64)> = kinds.into_iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Named { stacks, kinds, own }
    }

    /// `key` as a folded stack: the process name, then `label` in brackets if any, then each
    /// frame outermost first (a kernel frame's names, from `kernel`, end in `_[k]`), separated
    /// by `;`. With it, its own function: the innermost user frame outside the C library (else
    /// the innermost user frame).
    fn fold(
        &self,
        key: &StackKey,
        label: Option<&str>,
        kernel: &[Vec<String>],
    ) -> (String, Option<String>) {
        let comm_len = key
            .comm
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(key.comm.len());
        let mut parts = vec![clean(&String::from_utf8_lossy(&key.comm[..comm_len]))];
        if let Some(label) = label {
            parts.push(format!("[{label}]"));
        }
        let mut own = None;
        let mut innermost_user = None;
        for f in key.user.iter().rev() {
            match f {
                UserFrame::InFile { file, svma } => {
                    let path = self.paths.get(file).map_or("?", String::as_str);
                    let file_name = path.rsplit('/').next().unwrap_or(path);
                    match self.symbols.user(*file, *svma) {
                        Some(names) => parts.extend(names.iter().map(|n| clean(n))),
                        // No symbol (a stripped file): its file, so its frames add up together.
                        None => parts.push(format!("[{}]", clean(file_name))),
                    }
                    if !C_LIBRARY_FILES.iter().any(|c| file_name.starts_with(c)) {
                        own = parts.last().cloned();
                    }
                }
                // By address, each would be a stack of its own.
                UserFrame::Unknown(_) => parts.push("[unknown]".to_owned()),
            }
            innermost_user = parts.last().cloned();
        }
        for names in kernel.iter().rev() {
            parts.extend(names.iter().map(|n| format!("{n}_[k]")));
        }
        (parts.join(";"), own.or(innermost_user))
    }
}

/// The folded stack of off-CPU time whose stacks were not copied.
pub const NOT_CAPTURED: &str = "[stack not copied];[stack not copied]";

/// Functions the report ranks.
const TOP_FUNCTIONS: usize = 50;

/// A frame name as a folded stack can hold it: no `;`, no line breaks.
fn clean(name: &str) -> String {
    name.replace([';', '\n', '\r'], ":")
}
