//! A run's profiles as the report has them: the CPU's, and the weighted ones (off CPU, page
//! faults, block I/O); their top functions, folded stacks, and the one view renderers draw
//! any of them from.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::{
    kernel::probe::sample_kind,
    metric::{Unit, human},
    profile::unwind::Unwound,
};

/// How the samples' stacks came out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unwinding {
    /// User stack unwound to its outermost frame.
    pub complete: u64,
    /// User stack unwound in part (the copy of the stack ended, or a frame had no unwind rule).
    pub truncated: u64,
    /// No user stack: a kernel thread, a task whose user registers could not be read, or a
    /// process in the middle of an `exec` (the old program unmapped, the new one not yet).
    pub kernel_only: u64,
    /// Not unwound: the process had ended before its mappings were read.
    pub process_gone: u64,
}

impl Unwinding {
    pub(super) fn note(&mut self, outcome: Option<Unwound>) {
        match outcome {
            None | Some(Unwound::InExec) => self.kernel_only += 1,
            Some(Unwound::Complete) => self.complete += 1,
            Some(Unwound::Truncated) => self.truncated += 1,
            Some(Unwound::NoMappings) => self.process_gone += 1,
        }
    }

    /// The share of samples whose user stack was unwound to its end, of those with one.
    pub fn complete_share(&self) -> Option<f64> {
        let with_user = self.complete + self.truncated + self.process_gone;
        (with_user > 0).then(|| self.complete as f64 / with_user as f64)
    }
}

/// The kinds of profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProfileKind {
    /// On CPU: samples at a frequency.
    Cpu,
    /// Off CPU: the time of each voluntary wait, by the stack it waited in.
    OffCpu,
    /// User-mode page faults, one sample per period.
    Faults,
    /// Block I/O bytes the run's tasks submitted, one sample per period.
    Block,
}

impl ProfileKind {
    /// Every kind, in report order.
    pub const ALL: [ProfileKind; 4] = [
        ProfileKind::Cpu,
        ProfileKind::OffCpu,
        ProfileKind::Faults,
        ProfileKind::Block,
    ];

    /// Its name in the JSON report and in `--report` file names (`offcpu.folded`).
    pub fn name(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "cpu",
            ProfileKind::OffCpu => "off_cpu",
            ProfileKind::Faults => "faults",
            ProfileKind::Block => "block",
        }
    }

    /// Its title in reports.
    pub fn title(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "CPU profile",
            ProfileKind::OffCpu => "Off-CPU profile",
            ProfileKind::Faults => "Page faults by stack",
            ProfileKind::Block => "Block I/O by stack",
        }
    }

    /// The unit its figures count.
    pub fn unit(self) -> Unit {
        match self {
            ProfileKind::Cpu | ProfileKind::Faults => Unit::Count,
            ProfileKind::OffCpu => Unit::Nanoseconds,
            ProfileKind::Block => Unit::Bytes,
        }
    }

    /// The kind a `--report` file is of, from the words of its name: `offcpu` (or `off-cpu`,
    /// `off_cpu`, `wait`, `waits`), `faults` (`fault`, `memory`, `mem`), `block` (`disk`,
    /// `io`); the CPU's otherwise.
    pub fn from_file_name(name: &str) -> Self {
        let name = name.to_ascii_lowercase();
        let words: Vec<&str> = name
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        let has = |w: &[&str]| words.iter().any(|x| w.contains(x));
        let off_cpu = words.windows(2).any(|p| p == ["off", "cpu"]);
        if off_cpu || has(&["offcpu", "wait", "waits"]) {
            ProfileKind::OffCpu
        } else if has(&["fault", "faults", "memory", "mem"]) {
            ProfileKind::Faults
        } else if has(&["block", "disk", "io"]) {
            ProfileKind::Block
        } else {
            ProfileKind::Cpu
        }
    }

    /// The kernel's [`sample_kind`] of it.
    pub(super) fn sample_kind(self) -> u32 {
        match self {
            ProfileKind::Cpu => sample_kind::CPU,
            ProfileKind::OffCpu => sample_kind::OFF_CPU,
            ProfileKind::Faults => sample_kind::FAULT,
            ProfileKind::Block => sample_kind::BLOCK,
        }
    }

    /// Frames before a stack's functions: the process name, then for off-CPU the kind of
    /// wait and for block I/O the direction.
    pub(super) fn lead(self) -> usize {
        match self {
            ProfileKind::Cpu | ProfileKind::Faults => 1,
            ProfileKind::OffCpu | ProfileKind::Block => 2,
        }
    }
}

/// `part` of `whole`, 0 when the whole is.
pub(super) fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The functions with the most samples of their own (the innermost frame), with their share
/// of all `samples`, their own and with what they called. A stack's first frame is the process
/// name.
pub fn top_functions(stacks: &[FoldedStack], samples: u64, n: usize) -> Vec<FunctionShare> {
    let mut own: HashMap<&str, u64> = HashMap::new();
    for s in stacks {
        if let Some(leaf) = s.stack.split(';').skip(1).last() {
            *own.entry(leaf).or_default() += s.samples;
        }
    }
    rank_functions(stacks, own, samples, n, 1)
}

/// The `n` functions with the most of `own`, with their share of `samples` (in the profile's
/// unit), their own and with what they called (from `stacks`, whose first `lead` frames are
/// not functions: the process name, a kind of wait).
pub(super) fn rank_functions(
    stacks: &[FoldedStack],
    own: HashMap<&str, u64>,
    samples: u64,
    n: usize,
    lead: usize,
) -> Vec<FunctionShare> {
    let mut total: HashMap<&str, u64> = HashMap::new();
    for s in stacks {
        let distinct: BTreeSet<&str> = s.stack.split(';').skip(lead).collect();
        for f in distinct {
            *total.entry(f).or_default() += s.samples;
        }
    }
    let share = |x: u64| share(x, samples);
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
    /// Bytes of the user stack each sample copied at most (0 in reports from before it was
    /// set): a stack deeper than that is unwound only as far as the copy goes.
    #[serde(default)]
    pub user_stack_bytes: u64,
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
    /// Off CPU: the time of each voluntary wait of the run's tasks (switch-out to switch-in,
    /// so a wait's run-queue time after its wakeup is in it), by the stack it waited in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off_cpu: Option<WeightedProfile>,
    /// The run's user-mode page faults by the stack that took them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<WeightedProfile>,
    /// Bytes the run's tasks submitted to block devices themselves, by stack (not writeback
    /// of their buffered writes, which kernel threads submit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<WeightedProfile>,
    /// Profiles this kernel could not take (`off_cpu`, `faults`, `block`), with why.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unavailable: BTreeMap<String, String>,
    /// The files the user frames of the stacks are in, with their build ids: which build of
    /// each was profiled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<Module>,
}

impl Profile {
    /// The share of samples whose user stack was unwound to its end, of those with one.
    pub fn unwound_share(&self) -> Option<f64> {
        self.unwinding.complete_share()
    }

    /// The first `n` of the top functions with samples of their own (the list goes on with
    /// callers ranked by their totals).
    pub fn own_top(&self, n: usize) -> impl Iterator<Item = &FunctionShare> {
        own_top(&self.top_functions, n)
    }

    /// The stacks in the folded format flame graph tools read: one `frames count` per line.
    pub fn folded(&self) -> String {
        folded(&self.stacks)
    }

    /// The profile of `kind` as renderers see them all, if it was taken.
    pub fn view(&self, kind: ProfileKind) -> Option<View<'_>> {
        if kind == ProfileKind::Cpu {
            return Some(View {
                kind,
                stacks: &self.stacks,
                top_functions: &self.top_functions,
                total: self.samples,
                by_kind: &[],
            });
        }
        let w = match kind {
            ProfileKind::OffCpu => self.off_cpu.as_ref(),
            ProfileKind::Faults => self.faults.as_ref(),
            ProfileKind::Block => self.block.as_ref(),
            ProfileKind::Cpu => None,
        }?;
        Some(View {
            kind,
            stacks: &w.stacks,
            top_functions: &w.top_functions,
            total: w.total,
            by_kind: &w.by_kind,
        })
    }

    /// Every profile taken, in report order.
    pub fn views(&self) -> impl Iterator<Item = View<'_>> {
        ProfileKind::ALL.into_iter().filter_map(|k| self.view(k))
    }

    /// How the profile of `kind` was taken and what it holds, in a line (no final stop).
    pub fn describe(&self, kind: ProfileKind) -> String {
        let weighted = match kind {
            ProfileKind::Cpu => {
                let unwound = self.unwound_share().map_or(String::new(), |s| {
                    format!("; {:.0}% of user stacks unwound to the end", s * 100.0)
                });
                let lost = if self.lost > 0 {
                    format!("; {} lost (the kernel's buffer was full)", self.lost)
                } else {
                    String::new()
                };
                return format!(
                    "{} samples, {} at {} Hz on each CPU{unwound}{lost}",
                    self.samples, self.clock, self.frequency_hz
                );
            }
            ProfileKind::OffCpu => self.off_cpu.as_ref(),
            ProfileKind::Faults => self.faults.as_ref(),
            ProfileKind::Block => self.block.as_ref(),
        };
        let Some(w) = weighted else {
            return self
                .unavailable
                .get(kind.name())
                .map_or_else(|| "not taken".to_owned(), |why| format!("not taken: {why}"));
        };
        let amount = human(w.total, kind.unit());
        let unwound = w.unwinding.complete_share().map_or(String::new(), |s| {
            format!("; {:.0}% of user stacks unwound to the end", s * 100.0)
        });
        match kind {
            ProfileKind::OffCpu => {
                let uncaptured = if w.not_captured > 0 {
                    format!(
                        "; {:.1}% of it without stacks (each task's copies are limited to about \
                         1,000 a second)",
                        share(w.not_captured, w.total) * 100.0
                    )
                } else {
                    String::new()
                };
                format!(
                    "{amount} off CPU in {} waits{uncaptured}{unwound}",
                    w.samples
                )
            }
            ProfileKind::Faults => format!(
                "{amount} user page faults in {} samples, one per {} faults on each CPU{unwound}",
                w.samples,
                w.sample_every.unwrap_or(1)
            ),
            _ => format!(
                "{amount} submitted by the run's tasks, in {} samples, one per {} on each CPU \
                 (writeback by kernel threads is not in it){unwound}",
                w.samples,
                human(w.sample_every.unwrap_or(1), Unit::Bytes)
            ),
        }
    }
}

/// The first `n` of `top` with samples of their own.
fn own_top(top: &[FunctionShare], n: usize) -> impl Iterator<Item = &FunctionShare> {
    top.iter().filter(|f| f.self_samples > 0).take(n)
}

/// `stacks` in the folded format: one `frames count` per line.
fn folded(stacks: &[FoldedStack]) -> String {
    let mut out = String::new();
    for s in stacks {
        out.push_str(&s.stack);
        out.push(' ');
        out.push_str(&s.samples.to_string());
        out.push('\n');
    }
    out
}

/// One profile of a run as renderers see any kind.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// Its kind.
    pub kind: ProfileKind,
    /// Its stacks, the most weight first.
    pub stacks: &'a [FoldedStack],
    /// Its top functions.
    pub top_functions: &'a [FunctionShare],
    /// The weight of all its samples, in its kind's unit.
    pub total: u64,
    /// The weight by kind of wait or direction (off-CPU, block I/O).
    pub by_kind: &'a [KindTotal],
}

impl View<'_> {
    /// A value of it for people: `1.2 s`, `64 MiB`, `51,200`.
    pub fn human(&self, value: u64) -> String {
        human(value, self.kind.unit())
    }

    /// The first `n` top functions with samples of their own.
    pub fn own_top(&self, n: usize) -> impl Iterator<Item = &FunctionShare> {
        own_top(self.top_functions, n)
    }

    /// Its stacks folded.
    pub fn folded(&self) -> String {
        folded(self.stacks)
    }

    /// Its weight by kind of wait or direction in a line (`sleep 300 ms (59%), ...`); `None`
    /// when it has no kinds.
    pub fn kinds_line(&self) -> Option<String> {
        let parts: Vec<String> = self
            .by_kind
            .iter()
            .map(|k| {
                format!(
                    "{} {} ({:.0}%)",
                    k.kind,
                    self.human(k.total),
                    k.share * 100.0
                )
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// A profile whose samples each stand for an amount (time off CPU, faults, bytes), as the
/// report has it. Every figure of it, stacks and functions included, is in its `unit`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightedProfile {
    /// What its figures count: `ns`, `count` (faults) or `bytes`.
    pub unit: String,
    /// One sample per this many faults or bytes on each CPU, weighted by them; absent for
    /// off-CPU, which sees every wait.
    pub sample_every: Option<u64>,
    /// Samples taken (waits, for off-CPU).
    pub samples: u64,
    /// Their weight in all.
    pub total: u64,
    /// Of `total`, what has no stack: off-CPU waits whose stacks were not copied (a task's
    /// budget of copies spent, or the kernel's buffer half full).
    pub not_captured: u64,
    /// Of `total`, what is in stacks beyond the distinct stacks kept.
    pub stacks_not_kept: u64,
    /// `total` by kind of wait (off-CPU) or by direction (block I/O).
    pub by_kind: Vec<KindTotal>,
    /// How the user stacks came out.
    pub unwinding: Unwinding,
    /// The functions with the most of it their own (the innermost user frame).
    pub top_functions: Vec<FunctionShare>,
    /// Every distinct stack, folded, the most first.
    pub stacks: Vec<FoldedStack>,
}

/// Part of a weighted profile: a kind of wait, or a direction of I/O.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KindTotal {
    /// The kind (`sleep`, `block I/O`, `lock/futex`, `pipe/socket`, `child process`, `other`;
    /// `read`, `write`).
    pub kind: String,
    /// Its weight.
    pub total: u64,
    /// Of the profile's total.
    pub share: f64,
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

/// A file that user frames of a profile are in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Module {
    /// Its path, as the processes that mapped it saw it.
    pub path: String,
    /// Its GNU build id in hex, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
}

/// A stack, folded (`process;outermost;…;innermost`), and its samples.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldedStack {
    /// The frames.
    pub stack: String,
    /// Samples of it.
    pub samples: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_file_names_its_profile() {
        for (name, kind) in [
            ("offcpu.folded", ProfileKind::OffCpu),
            ("off-cpu.svg", ProfileKind::OffCpu),
            ("build_off_cpu.svg", ProfileKind::OffCpu),
            ("faults.svg", ProfileKind::Faults),
            ("memory.folded", ProfileKind::Faults),
            ("block.svg", ProfileKind::Block),
            ("disk-io.folded", ProfileKind::Block),
            ("radio.svg", ProfileKind::Cpu),
            ("flame.svg", ProfileKind::Cpu),
            ("cpu.folded", ProfileKind::Cpu),
        ] {
            assert_eq!(ProfileKind::from_file_name(name), kind, "{name}");
        }
    }

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
