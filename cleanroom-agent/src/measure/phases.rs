//! Phases inside a run: `cleanroom mark NAME` starts a named phase (ending the one before) and
//! each phase gets its own wall time and totals, the differences of the run's counters between
//! its mark and the next (or the run's end). The bookkeeping here is pure: the front end takes
//! the counters at each mark.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::measure::collect::Total;

/// Longest phase name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// Most phases a run keeps: a script that marks in a loop cannot grow the report without end.
pub const MAX_PHASES: usize = 1_000;

/// One phase of a run, as the report has it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// Its name, as marked.
    pub name: String,
    /// When it began, ns since the run started.
    pub start_ns: u64,
    /// When it ended (the next mark, or the run's end), ns since the run started.
    pub end_ns: u64,
    /// `end_ns - start_ns`.
    pub wall_time_ns: u64,
    /// The run's counters over the phase, named as the run's totals (levels and peaks, such
    /// as memory, and latencies are the run's alone).
    pub totals: BTreeMap<String, Total>,
}

/// Why a mark was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarkError {
    /// The name is empty, too long, or has control characters.
    #[error("a phase name is 1 to {MAX_NAME_BYTES} bytes without control characters, not {0:?}")]
    BadName(String),
    /// The run has as many phases as it keeps.
    #[error("the run has {MAX_PHASES} phases already; no more are kept")]
    TooMany,
}

/// Checks a phase name.
pub fn check_name(name: &str) -> Result<(), MarkError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        let shown: String = name.chars().take(MAX_NAME_BYTES).collect();
        return Err(MarkError::BadName(shown));
    }
    Ok(())
}

/// The marks of a run so far: each phase's name, start and the counters at its start.
#[derive(Debug, Default)]
pub struct Marks {
    marks: Vec<(String, u64, BTreeMap<String, u64>)>,
}

impl Marks {
    /// Starts phase `name` at `t_ns` with the run's `counters` then (ending the phase before).
    pub fn mark(
        &mut self,
        name: &str,
        t_ns: u64,
        counters: BTreeMap<String, u64>,
    ) -> Result<(), MarkError> {
        check_name(name)?;
        if self.marks.len() >= MAX_PHASES {
            return Err(MarkError::TooMany);
        }
        self.marks.push((name.to_owned(), t_ns, counters));
        Ok(())
    }

    /// The phases, the last ending at `end_ns` with the run's final `counters`. A counter
    /// missing at either end of a phase is left out of its totals.
    pub fn phases(&self, end_ns: u64, counters: &BTreeMap<String, u64>) -> Vec<Phase> {
        let ends = self
            .marks
            .iter()
            .skip(1)
            .map(|(_, t, c)| (*t, c))
            .chain(std::iter::once((end_ns, counters)));
        self.marks
            .iter()
            .zip(ends)
            .map(|((name, start, at_start), (end, at_end))| {
                let end = end.max(*start);
                Phase {
                    name: name.clone(),
                    start_ns: *start,
                    end_ns: end,
                    wall_time_ns: end - start,
                    totals: at_start
                        .iter()
                        .filter_map(|(metric, a)| {
                            let b = at_end.get(metric)?;
                            Some((metric.clone(), Total::Value(b.saturating_sub(*a))))
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(cpu: u64) -> BTreeMap<String, u64> {
        BTreeMap::from([("cpu_time_ns".to_owned(), cpu)])
    }

    #[test]
    fn each_phase_runs_to_the_next_mark_or_the_end() {
        let mut marks = Marks::default();
        marks.mark("build", 10, counters(100)).unwrap();
        marks.mark("test", 40, counters(400)).unwrap();
        let phases = marks.phases(100, &counters(1_000));
        assert_eq!(phases.len(), 2);
        assert_eq!(
            (phases[0].start_ns, phases[0].end_ns, phases[0].wall_time_ns),
            (10, 40, 30)
        );
        assert_eq!(phases[0].totals["cpu_time_ns"], Total::Value(300));
        assert_eq!(
            (phases[1].name.as_str(), phases[1].wall_time_ns),
            ("test", 60)
        );
        assert_eq!(phases[1].totals["cpu_time_ns"], Total::Value(600));
        assert!(Marks::default().phases(5, &counters(1)).is_empty());
    }

    #[test]
    fn bad_names_and_endless_marks_are_refused() {
        let mut marks = Marks::default();
        for bad in ["", "a\nb", &"x".repeat(65)] {
            assert!(matches!(
                marks.mark(bad, 0, BTreeMap::new()),
                Err(MarkError::BadName(_))
            ));
        }
        for i in 0..MAX_PHASES {
            marks.mark("loop", i as u64, BTreeMap::new()).unwrap();
        }
        assert_eq!(
            marks.mark("one more", 0, BTreeMap::new()),
            Err(MarkError::TooMany)
        );
    }
}
