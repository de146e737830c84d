//! Where a finished run goes: the summary on stderr, report files in the formats their names
//! ask for, the history store, and a comparison with a baseline.
//!
//! Nothing is lost to one failed output: report paths and the baseline are checked before the
//! command starts; afterwards every output is attempted, each failure is recorded and printed,
//! and when neither a JSON report nor the store holds the run, its JSON report is saved in the
//! temporary directory. [`Delivered::failures`] tells the binary to exit 2 when the command
//! itself succeeded.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use crate::{
    Error,
    alerts::{
        Alerting,
        config::{AlertKind, Severity},
        policy::Raised,
    },
    judge::compare::{self, Comparison, Spread, Tolerances},
    judge::verdict::Verdict,
    output::distribute::Destination,
    output::render::{self, Format},
    output::report::{Report, SCHEMA_VERSION},
    store::{RunQuery, Store, StoreLocation, spool},
};

/// What to do with a finished run.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    /// Print the summary on stderr.
    pub summary: bool,
    /// Report files; the format comes from each name.
    pub reports: Vec<PathBuf>,
    /// The history store, or `None` not to store.
    pub store: Option<StoreLocation>,
    /// The run to compare against, loaded before the command starts.
    pub baseline: Option<Baseline>,
    /// Tolerances overriding the static defaults: `--tolerance`, `[comparison]`, the history.
    pub tolerances: Tolerances,
    /// Where the report is sent beyond this machine (`[[distribute]]`), secrets read.
    pub distribute: Vec<Destination>,
    /// The OpenTelemetry collector the run's metrics go to (`[export.otlp]`).
    pub otlp: Option<crate::output::otlp::OtlpConfig>,
}

/// A past run to compare with: how to name it, and its report.
#[derive(Clone, Debug)]
pub struct Baseline {
    /// "run 7", the file name, or "unit-tests@main (run 12)".
    pub label: String,
    /// Its report (for a window of runs, their medians).
    pub report: Box<Report>,
    /// The stored runs it is from, when found by name.
    pub runs: Vec<i64>,
}

impl Baseline {
    /// Loads a baseline before the run it judges starts: by reference (see [`load_run`]), or
    /// `NAME@BRANCH`, the latest passing run of that name on that git branch from any host
    /// of the store, or with `window` > 1 the medians of the latest `window` such runs.
    pub fn load(reference: &str, store: &StoreLocation, window: usize) -> Result<Self, Error> {
        let by_name = (!Path::new(reference).exists())
            .then(|| reference.split_once('@'))
            .flatten();
        let Some((name, branch)) = by_name else {
            if window > 1 {
                return Err(Error::Baseline(format!(
                    "--baseline-window {window} needs a baseline by name (NAME@BRANCH), not \
                     `{reference}`"
                )));
            }
            let (label, report) = load_run(reference, store)?;
            return Ok(Self {
                label,
                report: Box::new(report),
                runs: Vec::new(),
            });
        };
        let mut s = Store::open(store)?;
        let rows = s.query(&RunQuery {
            name: Some(name),
            branch: Some(branch),
            passing: true,
            last: window.max(1),
        })?;
        if rows.is_empty() {
            return Err(Error::Baseline(format!(
                "no passing run named `{name}` on branch `{branch}` in {store} (`cleanroom \
                 history --name {name}` lists its runs)"
            )));
        }
        let runs: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let reports = runs
            .iter()
            .map(|id| s.report(*id))
            .collect::<Result<Vec<_>, _>>()?;
        let ids = runs
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let label = match runs.len() {
            1 if window <= 1 => format!("{reference} (run {ids})"),
            n if n == window => format!("{reference} (median of runs {ids})"),
            n => format!("{reference} (median of runs {ids}: {n} of the {window} asked)"),
        };
        let report = compare::median_report(&reports).expect("at least one report");
        Ok(Self {
            label,
            report: Box::new(report),
            runs,
        })
    }
}

/// The spread of each figure over the last runs named `name` in the history at `store`
/// (see [`compare::history_spread`]), for noise-aware default tolerances: up to
/// [`compare::HISTORY_MAX_RUNS`] runs, leaving out those whose command failed or was
/// interrupted (a crashed run is not a rerun). A store that does not exist is not made; one
/// that cannot be read costs the history only, with a warning.
pub fn history_spreads(store: &StoreLocation, name: &str) -> BTreeMap<String, Spread> {
    if !store.exists() {
        return BTreeMap::new();
    }
    match Store::open(store).and_then(|mut s| s.reports_named(name, compare::HISTORY_MAX_RUNS)) {
        Ok(runs) => {
            let steady: Vec<Report> = runs
                .into_iter()
                .map(|(_, r)| r)
                .filter(|r| r.exit_code == 0 && r.interrupted.is_none())
                .collect();
            compare::history_tolerances(&steady)
        }
        Err(e) => {
            log::warn!("default tolerances not widened by the history of `{name}`: {e}");
            BTreeMap::new()
        }
    }
}

/// What happened to it.
#[derive(Clone, Debug, Default)]
pub struct Delivered {
    /// Its id in the store, if stored.
    pub stored_as: Option<i64>,
    /// The comparison with the baseline, if asked.
    pub comparison: Option<Comparison>,
    /// Outputs that could not be written, one line each (already printed).
    pub failures: Vec<String>,
    /// Where the JSON report was saved because no asked-for output holds the run.
    pub rescued_to: Option<PathBuf>,
    /// Where the run was spooled because its shared store was out of reach.
    pub spooled_to: Option<PathBuf>,
}

/// Checks every report path before the run, so a typo or an unwritable place does not cost a
/// run: a known format, an existing writable directory, not a directory itself.
pub fn check_outputs(outputs: &Outputs) -> Result<(), Error> {
    for path in &outputs.reports {
        Format::from_path(path)?;
        crate::files::check_writable(path).map_err(crate::output::render::RenderError::from)?;
    }
    Ok(())
}

/// A run by reference: an id in the store, or a JSON report file (a regular file of at most
/// 16 MiB). Returns a label and the report. A report of a newer schema than this build knows
/// is read with a warning: the fields this build knows are rendered, the rest is ignored.
pub fn load_run(reference: &str, store: &StoreLocation) -> Result<(String, Report), Error> {
    let path = Path::new(reference);
    if !path.exists()
        && let Ok(id) = reference.trim_start_matches('#').parse::<i64>()
    {
        let report = Store::open(store)?.report(id)?;
        return Ok((format!("run {id}"), report));
    }
    let bytes = crate::files::read_bounded(path, crate::files::MAX_REPORT_BYTES, "a report")
        .map_err(|e| Error::ReadReport {
            path: path.to_owned(),
            detail: match e {
                crate::files::FileError::Io { source, .. } => source.to_string(),
                other => other.to_string(),
            },
        })?;
    let report: Report = serde_json::from_slice(&bytes).map_err(|e| Error::ReadReport {
        path: path.to_owned(),
        detail: format!(
            "not a Cleanroom JSON report: {}",
            crate::units::truncate_quote(&e.to_string(), 200).trim_matches('"')
        ),
    })?;
    if let Some(warning) = newer_schema_warning(&report) {
        log::warn!("{reference}: {warning}");
    }
    Ok((reference.to_owned(), report))
}

/// Pure: what to say about a report written by a newer Cleanroom, if it is one.
pub fn newer_schema_warning(report: &Report) -> Option<String> {
    (report.schema_version > SCHEMA_VERSION).then(|| {
        format!(
            "schema version {} is newer than this build's ({SCHEMA_VERSION}): showing the fields \
             this version knows, the rest is left out; a newer cleanroom shows all of it",
            report.schema_version
        )
    })
}

/// The alerts of a finished run's verdict: each SLO it failed, each figure that regressed
/// against the baseline, its anomalies (one alert, the strongest named) and its verdict. The
/// last two go only where a route names them ([`AlertKind::opt_in`]).
pub(crate) fn end_alerts(report: &Report, target: &str) -> Vec<Raised> {
    let t_ns = report.wall_time_ns;
    let raised = |kind, severity, rule: String, summary, value, limit| Raised {
        kind,
        severity,
        target: target.to_owned(),
        rule,
        summary,
        value,
        limit,
        t_ns,
    };
    let slos = report
        .slos
        .iter()
        .filter(|s| s.status == crate::judge::verdict::Status::Fail)
        .map(|s| {
            raised(
                AlertKind::SloFailed,
                Severity::Critical,
                s.name.clone(),
                format!(
                    "SLO {} failed: {} measured, target {}",
                    s.name, s.measured_text, s.target_text
                ),
                s.measured,
                None,
            )
        });
    let regressions = report
        .comparison
        .iter()
        .flat_map(|c| c.changes.iter())
        .filter(|ch| ch.regression)
        .map(|ch| {
            raised(
                AlertKind::Regression,
                Severity::Warning,
                ch.metric.clone(),
                format!(
                    "{} regressed against the baseline: {} -> {} (tolerance {})",
                    ch.metric,
                    ch.base_text,
                    ch.new_text,
                    ch.tolerance_text()
                ),
                Some(ch.new),
                Some(ch.base),
            )
        });
    let anomalies = (!report.anomalies.is_empty()).then(|| {
        let (listed, more) = report.listed_anomalies();
        let count = report.anomaly_count();
        raised(
            AlertKind::Anomaly,
            Severity::Info,
            "anomalies".into(),
            format!(
                "{count} anomalous interval(s), the strongest: {}{}",
                listed.join("; "),
                if more > 0 {
                    format!(" (and {more} more)")
                } else {
                    String::new()
                }
            ),
            Some(count as f64),
            None,
        )
    });
    let failed = report.verdict == Verdict::Fail;
    let verdict = raised(
        AlertKind::Verdict,
        if failed {
            Severity::Critical
        } else {
            Severity::Info
        },
        "verdict".into(),
        verdict_text(report),
        None,
        None,
    );
    slos.chain(regressions)
        .chain(anomalies)
        .chain(std::iter::once(verdict))
        .collect()
}

/// Pure: a finished run's verdict in one line, with what it rests on.
fn verdict_text(report: &Report) -> String {
    use crate::judge::verdict::Status;
    let failed_slos = report
        .slos
        .iter()
        .filter(|s| s.status == Status::Fail)
        .count();
    let breached = report.thresholds.iter().filter(|t| t.breaches > 0).count();
    let regressions = report.comparison.as_ref().map_or(0, |c| c.regressions);
    format!(
        "verdict {} after {:.1}s, exit code {}: {failed_slos} of {} SLO(s) failed, {breached} of \
         {} threshold(s) breached{}",
        report.verdict.as_str(),
        report.wall_time_ns as f64 / 1e9,
        report.exit_code,
        report.slos.len(),
        report.thresholds.len(),
        if report.comparison.is_some() {
            format!(", {regressions} regression(s) against the baseline")
        } else {
            String::new()
        }
    )
}

/// Delivers a finished run: every output is attempted; failures are printed and returned in
/// [`Delivered::failures`], never cut the rest short. Regressions against the baseline turn
/// the verdict to `fail`. With `alerts` (and the name they give the run), the verdict's
/// alerts (SLOs failed, regressions) are sent too, and the report gets what every alert of the
/// run became, after at most the flush timeout.
pub fn deliver(
    report: &mut Report,
    outputs: &Outputs,
    alerts: Option<(&Alerting, &str)>,
) -> Delivered {
    let mut delivered = Delivered::default();
    if let Some(base) = &outputs.baseline {
        let c = compare::compare(
            (&base.label, &base.report),
            ("this run", report),
            &outputs.tolerances,
        );
        if c.regressions > 0 {
            report.verdict = Verdict::Fail;
            report.notes.push(format!(
                "{} regression(s) against baseline {}: {}",
                c.regressions,
                base.label,
                c.changes
                    .iter()
                    .filter(|ch| ch.regression)
                    .map(|ch| format!(
                        "{} {} -> {} ({}, tolerance {})",
                        ch.metric,
                        ch.base_text,
                        ch.new_text,
                        ch.relative
                            .map_or_else(|| "n/a".into(), |r| format!("{:+.1}%", r * 100.0)),
                        ch.tolerance_text()
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if c.regressions == 0 && outputs.summary {
            eprintln!(
                "  compared with baseline {}: {} figures, no regression beyond tolerance ({})",
                base.label,
                c.changes.len(),
                c.tolerance_sources()
            );
        }
        let mut c = c;
        c.base.runs = base.runs.clone();
        report.comparison = Some(c.clone());
        delivered.comparison = Some(c);
    }
    if let Some((alerts, target)) = alerts {
        for alert in end_alerts(report, target) {
            alerts.raise_end(alert);
        }
        let sent = alerts.finish(report.wall_time_ns);
        if sent.undelivered > 0 {
            eprintln!(
                "cleanroom: {} alert notification(s) not delivered (each try is in the report's \
                 `alerts`); the run's exit code does not change for it",
                sent.undelivered
            );
        }
        report.alerts = Some(sent);
    }
    // Sent before the local copies are written, which then list how each went (the copies
    // sent do not).
    let mut distribution = Vec::new();
    for destination in &outputs.distribute {
        let sent = destination.send(report);
        if !sent.delivered {
            let failure = format!(
                "report not distributed ({} to {}): {}",
                sent.kind.as_str(),
                sent.to,
                sent.outcome
            );
            log::error!("{failure}");
            delivered.failures.push(failure);
        }
        distribution.push(sent);
    }
    report.distribution = distribution;
    if outputs.summary {
        eprint!("{}", report.summary());
    }
    let mut json_written = false;
    for path in &outputs.reports {
        let written = Format::from_path(path).and_then(|format| {
            render::write(path, &render::report(report, format)?)?;
            Ok(format)
        });
        match written {
            Ok(format) => json_written |= format == Format::Json,
            Err(e) => {
                log::error!("report not written: {e}");
                delivered.failures.push(format!("report not written: {e}"));
            }
        }
    }
    if let Some(store) = &outputs.store {
        store_run(store, report, outputs.summary, &mut delivered);
    }
    // Last, and never a failure: the run's record is safe already.
    if let Some(otlp) = &outputs.otlp
        && let Err(e) = crate::output::otlp::export(otlp, report)
    {
        log::warn!("the run's metrics were not exported to the OTLP collector: {e}");
    }
    if !delivered.failures.is_empty() && !json_written && delivered.stored_as.is_none() {
        delivered.rescued_to = rescue(report);
    }
    delivered
}

/// Stores `report` at `store`, then the runs spooled for it. A shared store (PostgreSQL) that
/// cannot take the run gets it spooled instead ([`spool`]), said, and not a failure: nothing
/// is lost. A file that cannot is a failure.
fn store_run(store: &StoreLocation, report: &Report, summary: bool, delivered: &mut Delivered) {
    let stored = Store::open(store).and_then(|mut s| {
        let id = s.insert(report)?;
        Ok((id, spool::flush(&mut s)))
    });
    match stored {
        Ok((id, flushed)) => {
            delivered.stored_as = Some(id);
            if summary {
                eprintln!("  stored as run {id} in {store}");
            }
            spool::say_flushed(store, flushed);
        }
        Err(e) if store.sqlite_path().is_none() => match spool::put(store, report) {
            Ok(path) => {
                log::warn!(
                    "run not stored ({e}); spooled in {}: it goes to the store with the next \
                     run that reaches it, or with `cleanroom store flush`",
                    path.display()
                );
                delivered.spooled_to = Some(path);
            }
            Err(spooling) => {
                log::error!("run not stored: {e}; nor spooled: {spooling}");
                delivered
                    .failures
                    .push(format!("run not stored: {e}; nor spooled: {spooling}"));
            }
        },
        Err(e) => {
            log::error!("run not stored: {e}");
            delivered.failures.push(format!("run not stored: {e}"));
        }
    }
}

/// Saves the JSON report in the temporary directory, when nothing else holds the run.
fn rescue(report: &Report) -> Option<PathBuf> {
    let path = std::env::temp_dir().join(format!(
        "cleanroom-run-{}-{}.json",
        report.started_at.replace(':', ""),
        std::process::id()
    ));
    let saved = render::report(report, Format::Json).and_then(|b| render::write(&path, &b));
    match saved {
        Ok(()) => {
            log::warn!(
                "the run's JSON report was saved to {} instead (render it with `cleanroom \
                 report {}`)",
                path.display(),
                path.display()
            );
            Some(path)
        }
        Err(e) => {
            log::error!("the run's report could not be saved anywhere: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_schemas_are_named() {
        let mut r = Report::example();
        assert_eq!(newer_schema_warning(&r), None);
        r.schema_version = SCHEMA_VERSION + 1;
        let w = newer_schema_warning(&r).unwrap();
        assert!(w.contains("schema version 2 is newer"), "{w}");
    }

    #[test]
    fn a_failed_report_leaves_the_others_and_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("r.md");
        let store = dir.path().join("h.db");
        let outputs = Outputs {
            summary: false,
            reports: vec![dir.path().join("missing/r.json"), good.clone()],
            store: Some(StoreLocation::Sqlite(store.clone())),
            baseline: None,
            tolerances: Tolerances::default(),
            distribute: Vec::new(),
            otlp: None,
        };
        let mut r = Report::example();
        let d = deliver(&mut r, &outputs, None);
        assert_eq!(d.failures.len(), 1, "{:?}", d.failures);
        assert!(good.exists(), "the Markdown report was not written");
        assert!(d.stored_as.is_some(), "the run was not stored");
        assert_eq!(d.rescued_to, None, "the store holds the run");
    }

    #[test]
    fn the_history_of_a_name_widens_default_tolerances() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.db");
        let location = StoreLocation::Sqlite(path.clone());
        assert!(history_spreads(&location, "suite").is_empty());
        assert!(!path.exists(), "reading the history made a store");
        let run = |name: &str, cpu: u64, exit_code: i32| {
            let mut r = Report::example();
            r.name = Some(name.into());
            r.exit_code = exit_code;
            r.totals.insert(
                "cpu_time_ns".into(),
                crate::measure::collect::Total::Value(cpu),
            );
            r
        };
        let mut store = Store::open(&location).unwrap();
        for (name, cpu, exit_code) in [
            ("suite", 1_000_000_000, 0),
            ("suite", 9_000_000_000, 1), // failed: not a rerun, left out
            ("other", 5_000_000_000, 0), // another name
            ("suite", 1_100_000_000, 0),
        ] {
            store.insert(&run(name, cpu, exit_code)).unwrap();
        }
        assert!(
            history_spreads(&location, "suite").is_empty(),
            "two good runs are too few"
        );
        store.insert(&run("suite", 1_168_000_000, 0)).unwrap();
        let spreads = history_spreads(&location, "suite");
        let cpu = spreads["cpu_time_ns"];
        assert_eq!(cpu.runs, 3, "{spreads:?}");
        assert!((cpu.spread - 0.168).abs() < 1e-9, "{cpu:?}");

        // +16.8% CPU: a regression against the static 10%, not against this history.
        let outputs = |history| Outputs {
            baseline: Some(Baseline {
                label: "run 1".into(),
                report: Box::new(run("suite", 1_000_000_000, 0)),
                runs: Vec::new(),
            }),
            tolerances: Tolerances {
                history,
                ..Tolerances::default()
            },
            ..Outputs::default()
        };
        let mut r = run("suite", 1_168_000_000, 0);
        let d = deliver(&mut r, &outputs(BTreeMap::new()), None);
        assert_eq!(d.comparison.unwrap().regressions, 1);
        let note = r.notes.join("\n");
        assert!(note.contains("+16.8%, tolerance +10% (default)"), "{note}");
        let mut r = run("suite", 1_168_000_000, 0);
        let c = deliver(&mut r, &outputs(spreads), None).comparison.unwrap();
        assert_eq!(c.regressions, 0, "{c:#?}");
        let cpu = c
            .changes
            .iter()
            .find(|ch| ch.metric == "cpu_time_ns")
            .unwrap();
        assert_eq!(cpu.tolerance_text(), "+17% (history of 3 runs)");
        assert_ne!(r.verdict, Verdict::Fail);
    }
}
