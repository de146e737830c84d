//! Cleanroom: measures what a command or a cgroup costs the machine, with eBPF.
//!
//! The folders follow the data path:
//!
//! - `kernel`: the BPF programs loaded and attached, their maps read (`probe`), summed per group
//!   of cgroups in one pass (`tally`);
//! - `cgroupfs`: the cgroup file system and `/proc` (`cgroup`, `limits`, `watchdog`, `taskio`,
//!   and `watch`, the agent's glob rules);
//! - `measure`: a `session` measures one target cgroup — a sample per tick (`collect`, `model`),
//!   the figures at the end — knowing nothing of commands, signals or terminals; `escape` notes
//!   processes that leave a run's cgroup;
//! - `judge`: thresholds, SLOs (`objective`, parsed once), anomalies and insights (`analyze`),
//!   comparisons with a baseline (`compare`), all producing the types of `verdict`;
//! - `output`: the `report` and its formats (`render`), written and stored (`deliver`), the
//!   Prometheus exposition, the agent's HTTP routes (`serve`) and front page (`page`);
//! - `profile`: the CPU profile — stack samples unwound with each binary's `.eh_frame`,
//!   counted by stack, named at the end;
//! - `store`: the history (SQLite);
//! - `docker`: the Docker engine's events and inspections, over its Unix socket;
//! - the front ends: `run` (one command in a cgroup of its own), `agent` (the sidecar watching
//!   cgroups others make), `demo` and `doctor` (where a new user starts).
//!
//! Dependencies point one way. `units` (numbers as people write and read them), `metric` (what
//! is measured, in which unit) and `judge::verdict` (what judging produces) are leaves;
//! `config` holds what a run is asked to do; `output::report` depends on `verdict`, never on
//! `analyze` or `compare`; `objective` measures a run's figures without knowing the report; the
//! kernel side imports nothing above it. The front ends compose the rest.

pub mod agent;
pub mod alerts;
pub mod cgroupfs;
pub mod config;
pub mod demo;
pub mod docker;
pub mod doctor;
pub mod error;
pub mod files;
pub mod host;
pub mod judge;
pub mod kernel;
pub mod mail;
pub mod measure;
pub mod metric;
pub mod output;
pub mod profile;
pub mod run;
pub mod store;
pub mod trust;
pub mod units;

pub use error::Error;
