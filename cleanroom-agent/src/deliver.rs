//! Where a finished run goes: the summary on stderr, report files in the formats their names
//! ask for, the history store, and a comparison with a baseline.

use std::path::{Path, PathBuf};

use crate::{
    Error,
    compare::{self, Comparison},
    render::{self, Format},
    report::Report,
    store::Store,
};

/// What to do with a finished run.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    /// Print the summary on stderr.
    pub summary: bool,
    /// Report files; the format comes from each name.
    pub reports: Vec<PathBuf>,
    /// The history store, or `None` not to store.
    pub store: Option<PathBuf>,
    /// A run (id in the store, or JSON file) to compare against.
    pub baseline: Option<String>,
    /// Tolerances overriding the defaults, by figure name.
    pub tolerances: std::collections::BTreeMap<String, f64>,
}

/// What happened to it.
#[derive(Clone, Debug, Default)]
pub struct Delivered {
    /// Its id in the store, if stored.
    pub stored_as: Option<i64>,
    /// The comparison with the baseline, if asked.
    pub comparison: Option<Comparison>,
}

/// Checks every report name before the run, so a typo does not cost a run.
pub fn check_outputs(outputs: &Outputs) -> Result<(), Error> {
    for path in &outputs.reports {
        Format::from_path(path)?;
    }
    Ok(())
}

/// A run by reference: an id in the store, or a JSON report file. Returns a label and the report.
pub fn load_run(reference: &str, store: &Path) -> Result<(String, Report), Error> {
    let path = Path::new(reference);
    if !path.exists()
        && let Ok(id) = reference.trim_start_matches('#').parse::<i64>()
    {
        let report = Store::open(store)?.report(id)?;
        return Ok((format!("run {id}"), report));
    }
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadReport {
        path: path.to_owned(),
        detail: source.to_string(),
    })?;
    let report = serde_json::from_str(&text).map_err(|e| Error::ReadReport {
        path: path.to_owned(),
        detail: format!("not a Cleanroom JSON report: {e}"),
    })?;
    Ok((reference.to_owned(), report))
}

/// Delivers a finished run. Regressions against the baseline turn the verdict to `fail`.
pub fn deliver(report: &mut Report, outputs: &Outputs) -> Result<Delivered, Error> {
    let mut delivered = Delivered::default();
    if let Some(base) = &outputs.baseline {
        let store = outputs
            .store
            .clone()
            .unwrap_or_else(crate::store::default_path);
        let (label, base_report) = load_run(base, &store)?;
        let c = compare::compare(
            (&label, &base_report),
            ("this run", report),
            &outputs.tolerances,
        );
        if c.regressions > 0 {
            report.verdict = "fail".into();
            report.notes.push(format!(
                "{} regression(s) against baseline {label}: {}",
                c.regressions,
                c.changes
                    .iter()
                    .filter(|ch| ch.regression)
                    .map(|ch| format!("{} {} -> {}", ch.metric, ch.base_text, ch.new_text))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        delivered.comparison = Some(c);
    }
    if outputs.summary {
        eprint!("{}", report.summary());
    }
    for path in &outputs.reports {
        let bytes = render::report(report, Format::from_path(path)?)?;
        render::write(path, &bytes)?;
    }
    if let Some(store) = &outputs.store {
        match Store::open(store).and_then(|mut s| s.insert(report)) {
            Ok(id) => {
                delivered.stored_as = Some(id);
                if outputs.summary {
                    eprintln!("  stored as run {id} in {}", store.display());
                }
            }
            // Losing the history entry must not lose the run's verdict or reports.
            Err(e) => log::warn!("{e}; the run was not stored"),
        }
    }
    Ok(delivered)
}
