//! Cleanroom: measures what a command or a cgroup costs the machine, with eBPF.
//!
//! Data flows `probe` (BPF) and `cgroup` (cgroupfs) → `report`; `run` drives one measured
//! command; `demo` and `doctor` are the commands a new user starts with.

pub mod btf;
pub mod cgroup;
pub mod collect;
pub mod demo;
pub mod doctor;
pub mod error;
pub mod host;
pub mod metric;
pub mod model;
pub mod probe;
pub mod report;
pub mod run;

pub use error::Error;
