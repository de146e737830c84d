//! CSV: the time series (one row per interval, units in the header), the totals, comparisons
//! and trends.

use std::collections::BTreeSet;

use crate::{
    judge::compare::{Comparison, Trend},
    measure::collect::Total,
    output::report::Report,
};

use super::series_unit;

fn finish(w: csv::Writer<Vec<u8>>) -> String {
    String::from_utf8(w.into_inner().expect("writing to memory cannot fail")).expect("CSV is UTF-8")
}

/// `t_s, interval_s, <series> (<unit>), ...`, one row per interval.
pub fn series(report: &Report) -> String {
    let names: BTreeSet<&String> = report.series.iter().flat_map(|p| p.values.keys()).collect();
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["t_s".to_owned(), "interval_s".to_owned()];
    header.extend(names.iter().map(|n| match series_unit(n) {
        "" => (*n).clone(),
        unit => format!("{n} ({unit})"),
    }));
    w.write_record(&header).expect("in memory");
    for p in &report.series {
        let mut row = vec![
            format!("{:.3}", p.t_ns as f64 / 1e9),
            format!("{:.3}", p.interval_ns as f64 / 1e9),
        ];
        row.extend(names.iter().map(|n| {
            p.values
                .get(*n)
                .map_or_else(String::new, |v| format!("{v:.3}"))
        }));
        w.write_record(&row).expect("in memory");
    }
    finish(w)
}

/// `metric, value, unit`: every total, latency percentiles spelled out.
pub fn totals(report: &Report) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["metric", "value", "unit"])
        .expect("in memory");
    w.write_record(["wall_time_ns", &report.wall_time_ns.to_string(), "ns"])
        .expect("in memory");
    for (name, total) in &report.totals {
        match total {
            Total::Value(v) => {
                let unit = if name.ends_with("_ns") {
                    "ns"
                } else if name.ends_with("_bytes") {
                    "bytes"
                } else {
                    "count"
                };
                w.write_record([name.as_str(), &v.to_string(), unit])
                    .expect("in memory");
            }
            Total::Latency(l) => {
                for (suffix, v, unit) in [
                    ("count", l.count, "count"),
                    ("p50_ns", l.p50_ns, "ns"),
                    ("p90_ns", l.p90_ns, "ns"),
                    ("p99_ns", l.p99_ns, "ns"),
                    ("max_ns", l.max_ns, "ns"),
                ] {
                    w.write_record([format!("{name}_{suffix}"), v.to_string(), unit.into()])
                        .expect("in memory");
                }
            }
        }
    }
    finish(w)
}

/// One row per figure compared.
pub fn comparison(c: &Comparison) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "metric",
        "base",
        "new",
        "absolute",
        "relative",
        "tolerance",
        "regression",
        "tolerance_source",
    ])
    .expect("in memory");
    for ch in &c.changes {
        w.write_record([
            ch.metric.clone(),
            ch.base.to_string(),
            ch.new.to_string(),
            ch.absolute.to_string(),
            ch.relative.map_or_else(String::new, |r| format!("{r:.6}")),
            ch.tolerance.to_string(),
            ch.regression.to_string(),
            ch.tolerance_source.name().to_owned(),
        ])
        .expect("in memory");
    }
    finish(w)
}

/// One row per figure, one column per run.
pub fn trend(t: &Trend) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["metric".to_owned()];
    header.extend(t.runs.iter().map(|id| format!("run {id}")));
    header.push("slope_per_run".into());
    w.write_record(&header).expect("in memory");
    for line in &t.lines {
        let mut row = vec![line.metric.clone()];
        row.extend(line.values.iter().map(|(_, v)| v.to_string()));
        row.push(line.slope_per_run.to_string());
        w.write_record(&row).expect("in memory");
    }
    finish(w)
}
