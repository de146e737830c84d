//! The kernel side, from user space: loading and attaching the BPF programs and reading what they
//! count. `probe` loads, attaches, reads and frees the maps; `btf` finds struct offsets in the
//! kernel's BTF; `tally` sums map entries into groups of cgroups (pure); `attach` is
//! `cleanroom attach`, the probes alone, for the benchmark.

pub mod attach;
pub mod btf;
pub mod probe;
pub mod tally;
