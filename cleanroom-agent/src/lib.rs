//! Cleanroom: measures what a command or a cgroup costs the machine, with eBPF.
//!
//! Data flows `probe` (BPF, summed per group of cgroups by `tally`), `cgroup` (cgroupfs) and
//! `taskio` (/proc) → `collect` (a sample) → `model` (series,
//! aggregates, histograms) → `analyze` (thresholds, SLOs, anomalies, insights) → `report`.
//! `session` measures one target cgroup (a `cgroup::Target`, whoever made it): a sample per
//! tick, the figures at the end; it knows nothing of commands, signals or terminals. `run`
//! drives one measured command with a session over the cgroup it makes, `limits` enforcing
//! `config`, and `escape` noting processes that leave the run's cgroup; `demo` and `doctor` are
//! the commands a new user starts with. For the agent (being built): `watch` picks the cgroups
//! to watch (glob rules over the v2 hierarchy), `exposition` renders live per-cgroup
//! measurements in the Prometheus text format (`GET /metrics`), `serve` routes the HTTP
//! interface over what the agent shows (token, JSON errors), and `page` renders its front page
//! (`GET /`: the live cgroups and the recent runs with their verdicts, one HTML document
//! without scripts).
//!
//! Dependencies point one way. `units` (numbers as people write and read them), `metric` (what
//! is measured, in which unit; it uses `units`) and `verdict` (what judging a run produces; it
//! uses `metric`) are leaves that know nothing else of the crate. `report` depends on `verdict`,
//! never on `analyze`; `objective` measures a run's figures without knowing the report, so that
//! `config` parses each objective once, when it loads; `analyze` depends on `report` and
//! `config`.

pub mod agent;
pub mod analyze;
pub mod attach;
pub mod btf;
pub mod cgroup;
pub mod collect;
pub mod compare;
pub mod config;
pub mod deliver;
pub mod demo;
pub mod doctor;
pub mod error;
pub mod escape;
pub mod exposition;
pub mod files;
pub mod host;
pub mod limits;
pub mod metric;
pub mod model;
pub mod objective;
pub mod page;
pub mod probe;
pub mod render;
pub mod report;
pub mod run;
pub mod serve;
pub mod session;
pub mod store;
pub mod tally;
pub mod taskio;
pub mod units;
pub mod verdict;
pub mod watch;
pub mod watchdog;

pub use error::Error;
