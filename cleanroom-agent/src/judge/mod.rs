//! Judging: `verdict` holds what judging produces (a leaf: statuses, events, verdicts);
//! `objective` measures an SLO's objective on a run's figures; `analyze` checks thresholds and
//! SLOs, finds anomalies and insights and gives the verdict; `compare` sets a run against a
//! baseline and follows trends.

pub mod analyze;
pub mod compare;
pub mod objective;
pub mod verdict;
