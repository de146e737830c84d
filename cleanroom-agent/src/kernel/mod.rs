//! The kernel side, from user space: loading and attaching the BPF programs and reading what they
//! count. `probe` loads, attaches, reads and frees the maps; `btf` finds struct offsets in the
//! kernel's BTF; `meter` measures what each program costs per event and `cost` turns that
//! into what the probes cost a run (pure); `tally` sums map entries into groups of cgroups (pure); `attach` is
//! `cleanroom attach`, the probes alone, for the benchmark.

pub mod attach;
pub mod btf;
pub mod cost;
pub mod meter;
pub mod pending;
pub mod probe;
pub mod tally;
