//! Measuring: `session` measures one target cgroup (a sample per tick, its figures at the end);
//! `collect` turns what was counted into metrics; `model` keeps series, aggregates and
//! histograms; `escape` notes processes that leave a run's cgroup; `processes` lists each
//! process of a run with its own figures; `connections` its traffic by remote endpoint;
//! `containers` the Docker containers it started; `phases` the phases marked inside it.

pub mod collect;
pub mod connections;
pub mod containers;
pub mod escape;
pub mod model;
pub mod phases;
pub mod processes;
pub mod session;
