//! Markdown that fits a CI job summary (`$GITHUB_STEP_SUMMARY`): verdict first, SLO table,
//! totals, worst latencies, insights.

use std::fmt::Write as _;

use crate::{
    judge::compare::{Comparison, Trend},
    judge::verdict::{Status, Verdict},
    measure::collect::Total,
    metric::{Latency, Metric, human},
    output::report::Report,
    units::human_duration_ns,
};

fn mark(s: Status) -> &'static str {
    match s {
        Status::Pass => "✅ pass",
        Status::Fail => "❌ fail",
        Status::Unmeasured => "⚠️ unmeasured",
        Status::NotApplicable => "n/a",
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The summary of a run.
pub fn report(r: &Report) -> String {
    let mut out = String::new();
    let verdict = match r.verdict {
        Verdict::Pass => "✅ PASS",
        Verdict::Fail => "❌ FAIL",
        Verdict::None | Verdict::Other(_) => "ℹ️ measured",
    };
    let _ = writeln!(
        out,
        "## Cleanroom: {verdict} — `{}`\n",
        cell(&r.command_line())
    );
    let _ = writeln!(
        out,
        "Exit code {}{} after {}, started {}{}{}.\n",
        r.exit_code,
        r.interrupted
            .as_ref()
            .map(|i| format!(" (interrupted by {})", i.signal))
            .unwrap_or_default(),
        human_duration_ns(r.wall_time_ns),
        r.started_at,
        r.name
            .as_ref()
            .map(|n| format!(", run `{n}`"))
            .unwrap_or_default(),
        r.host
            .git_commit
            .as_ref()
            .map(|c| format!(", commit `{}`", &c[..c.len().min(12)]))
            .unwrap_or_default()
    );
    if let Some(probes) = &r.probes {
        let _ = writeln!(out, "Cleanroom's probes: {}.\n", cell(&probes.line()));
    }
    if !r.slos.is_empty() || !r.thresholds.is_empty() {
        let _ = writeln!(out, "| SLO / threshold | measured | objective | verdict |");
        let _ = writeln!(out, "| --- | ---: | --- | --- |");
        for s in &r.slos {
            let _ = writeln!(
                out,
                "| {}{} (`{}`) | {} | {} | {} |",
                cell(&s.name),
                s.phase
                    .as_ref()
                    .map(|p| format!(", phase `{}`", cell(p)))
                    .unwrap_or_default(),
                cell(&s.objective),
                cell(&s.measured_text),
                cell(&s.target_text),
                mark(s.status)
            );
        }
        for t in &r.thresholds {
            let _ = writeln!(
                out,
                "| `{}` | {} | <= {} | {} |",
                cell(&t.name),
                cell(&t.peak_text),
                cell(&t.limit_text),
                mark(t.status)
            );
        }
        out.push('\n');
    }
    let _ = writeln!(out, "| metric | value |");
    let _ = writeln!(out, "| --- | ---: |");
    for m in Metric::ALL {
        let v = match r.totals.get(m.name()) {
            Some(Total::Value(v)) => human(*v, m.unit()),
            _ => "unavailable".into(),
        };
        let _ = writeln!(out, "| `{}` | {v} |", m.name());
    }
    out.push('\n');
    let latencies: Vec<(&str, &crate::measure::model::LatencySummary)> = Latency::ALL
        .iter()
        .filter_map(|l| match r.totals.get(l.name()) {
            Some(Total::Latency(s)) if s.count > 0 => Some((l.name(), s)),
            _ => None,
        })
        .collect();
    if !latencies.is_empty() {
        let _ = writeln!(out, "| latency | count | p50 | p99 | max |");
        let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: |");
        for (name, s) in latencies {
            let _ = writeln!(
                out,
                "| `{name}` | {} | {} | {} | {} |",
                s.count,
                human_duration_ns(s.p50_ns),
                human_duration_ns(s.p99_ns),
                human_duration_ns(s.max_ns)
            );
        }
        out.push('\n');
    }
    if !r.phases.is_empty() {
        out.push_str(&phases(r));
    }
    if !r.containers.is_empty() {
        out.push_str(&containers(r));
    }
    if !r.connections.is_empty() {
        out.push_str(&connections(r));
    }
    if !r.processes.is_empty() {
        out.push_str(&processes(r));
    }
    if let Some(p) = &r.profile {
        out.push_str(&profile(p));
    }
    if let Some(c) = &r.comparison {
        let _ = writeln!(
            out,
            "**Against baseline `{}`** ({}): {}\n",
            cell(&c.base.label),
            c.base.started_at,
            if c.regressions == 0 {
                "no regression beyond tolerance".to_owned()
            } else {
                format!("❌ {} regression(s)", c.regressions)
            }
        );
        out.push_str(&comparison_table(c));
        out.push('\n');
    }
    if !r.insights.is_empty() {
        let _ = writeln!(out, "**Insights**\n");
        for i in &r.insights {
            let _ = writeln!(out, "- {}", i.text);
        }
        out.push('\n');
    }
    if !r.anomalies.is_empty() {
        let (listed, more) = r.listed_anomalies();
        let _ = writeln!(
            out,
            "**Anomalies** ({}, the strongest first): {}\n",
            r.anomaly_count(),
            r.anomaly_method
        );
        for line in listed {
            let _ = writeln!(out, "- {}", cell(&line));
        }
        if more > 0 {
            let _ = writeln!(out, "- … and {more} more");
        }
        out.push('\n');
    }
    if !r.unavailable.is_empty() {
        let _ = writeln!(
            out,
            "Not measured on this host: {}.\n",
            r.unavailable.join(", ")
        );
    }
    out
}

/// The phases marked in the run: when each began, how long it took, what it cost.
fn phases(r: &Report) -> String {
    let figures = [
        Metric::CpuTime,
        Metric::BlockReadBytes,
        Metric::BlockWriteBytes,
        Metric::NetTxBytes,
        Metric::NetRxBytes,
    ];
    let mut out = String::from("**Phases** (`cleanroom mark`)\n\n| phase | began | wall time |");
    for m in figures {
        let _ = write!(out, " `{}` |", m.name());
    }
    out.push_str("\n| --- | ---: | ---: |");
    out.push_str(&" ---: |".repeat(figures.len()));
    out.push('\n');
    for p in &r.phases {
        let _ = write!(
            out,
            "| {} | {} | {} |",
            cell(&p.name),
            human_duration_ns(p.start_ns),
            human_duration_ns(p.wall_time_ns)
        );
        for m in figures {
            let v = match p.totals.get(m.name()) {
                Some(Total::Value(v)) => human(*v, m.unit()),
                _ => "unavailable".into(),
            };
            let _ = write!(out, " {v} |");
        }
        out.push('\n');
    }
    out.push('\n');
    out
}

/// The containers the run started: start-up time and what each cost.
fn containers(r: &Report) -> String {
    use crate::units::human_bytes;
    let mut out = format!("**Containers** ({})\n\n", r.containers.len());
    let _ = writeln!(
        out,
        "| container | image | start-up | ran | CPU | read | written | exit |"
    );
    let _ = writeln!(
        out,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let dash = || "–".to_owned();
    for c in &r.containers {
        let _ = writeln!(
            out,
            "| `{}` | `{}` | {} | {} | {} | {} | {} | {} |",
            cell(&c.name),
            cell(&c.image),
            c.startup_text(),
            c.lifetime_ns().map_or_else(dash, human_duration_ns),
            c.value("cpu_time_ns").map_or_else(dash, human_duration_ns),
            c.value("block_read_bytes").map_or_else(dash, human_bytes),
            c.value("block_write_bytes").map_or_else(dash, human_bytes),
            c.exit_code.map_or_else(dash, |e| e.to_string())
        );
    }
    out.push('\n');
    out
}

/// The connections: the ten remote endpoints with the most bytes, then loopback apart.
fn connections(r: &Report) -> String {
    use crate::{measure::connections::talkers, units::human_bytes};
    let mut out = String::new();
    for (loopback, title) in [(false, "**Remote endpoints**"), (true, "Loopback")] {
        let all = talkers(&r.connections, loopback);
        if all.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{title} ({}): the most bytes\n", all.len());
        let _ = writeln!(
            out,
            "| endpoint | connections | sent | received | retransmits | connect (max) |"
        );
        let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
        for t in all.iter().take(10) {
            let _ = writeln!(
                out,
                "| `{} {}` | {} | {} | {} | {} | {} |",
                t.protocol,
                cell(&t.remote),
                t.connections,
                human_bytes(t.tx_bytes),
                human_bytes(t.rx_bytes),
                t.retransmits,
                t.connect_max_ns.map_or("–".to_owned(), human_duration_ns)
            );
        }
        out.push('\n');
    }
    out
}

/// The processes: the ten with the most CPU, the ten that lasted longest, and the commands
/// that cost most.
fn processes(r: &Report) -> String {
    use crate::measure::processes::{ProcessRecord, by_command, top_by_cpu, top_by_wall};
    let mut out = String::new();
    let table = |out: &mut String, title: &str, rows: Vec<&ProcessRecord>| {
        let _ = writeln!(out, "{title}\n");
        let _ = writeln!(out, "| pid | parent | command line | CPU | wall | exit |");
        let _ = writeln!(out, "| ---: | ---: | --- | ---: | ---: | ---: |");
        for p in rows {
            let _ = writeln!(
                out,
                "| {} | {} | `{}` | {} | {} | {} |",
                p.pid,
                p.ppid,
                cell(&p.brief(80)),
                human_duration_ns(p.cpu_time_ns),
                human_duration_ns(p.wall_time_ns()),
                p.exit_code
            );
        }
        out.push('\n');
    };
    let n = r.processes.len();
    table(
        &mut out,
        &format!("**Processes** ({n}): the most CPU"),
        top_by_cpu(&r.processes, 10),
    );
    table(&mut out, "The longest", top_by_wall(&r.processes, 10));
    let _ = writeln!(out, "By program\n");
    let _ = writeln!(
        out,
        "| program | processes | CPU | wall (added) | written | network |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for g in by_command(&r.processes).iter().take(10) {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} |",
            cell(&g.command),
            g.count,
            human_duration_ns(g.cpu_time_ns),
            human_duration_ns(g.wall_time_ns),
            crate::units::human_bytes(g.io_write_bytes),
            g.net_bytes
                .map_or("—".to_owned(), crate::units::human_bytes)
        );
    }
    out.push('\n');
    out
}

/// A comparison table, regressions first.
pub fn comparison(c: &Comparison) -> String {
    let mut out = String::new();
    let verdict = if c.regressions == 0 {
        "✅ no regression".to_owned()
    } else {
        format!("❌ {} regression(s)", c.regressions)
    };
    let _ = writeln!(out, "## Cleanroom comparison: {verdict}\n");
    let _ = writeln!(
        out,
        "Base `{}` ({}) → new `{}` ({}).\n",
        cell(&c.base.label),
        c.base.started_at,
        cell(&c.new.label),
        c.new.started_at
    );
    out.push_str(&comparison_table(c));
    out
}

/// The table of a comparison: regressions first, then every other figure.
fn comparison_table(c: &Comparison) -> String {
    let mut out = format!("{}.\n\n", c.tolerance_sources());
    let _ = writeln!(out, "| metric | base | new | change | tolerance | |");
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | --- |");
    let mut changes: Vec<_> = c.changes.iter().collect();
    changes.sort_by_key(|ch| !ch.regression);
    for ch in changes {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} |",
            ch.metric,
            ch.base_text,
            ch.new_text,
            ch.relative
                .map_or_else(|| "n/a".into(), |r| format!("{:+.1}%", r * 100.0)),
            ch.tolerance_text(),
            if ch.regression { "❌ regression" } else { "" }
        );
    }
    if !c.functions.is_empty() {
        let _ = writeln!(
            out,
            "\n**CPU profile: what moved** (each function's own share of the samples)\n\n\
             | function | base | new | change |\n| --- | ---: | ---: | ---: |"
        );
        for f in &c.functions {
            let _ = writeln!(
                out,
                "| `{}` | {:.1}% | {:.1}% | {:+.1} points |",
                cell(&crate::measure::processes::cut_to(&f.function, 80)),
                f.base_share * 100.0,
                f.new_share * 100.0,
                f.change_points()
            );
        }
    }
    out
}

/// A trend table.
pub fn trend(t: &Trend) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Cleanroom trend: `{}` over {} runs\n",
        cell(&t.name),
        t.runs.len()
    );
    let _ = writeln!(
        out,
        "| metric | first | last | slope per run | biggest change |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | --- |");
    for l in &t.lines {
        let kind = crate::judge::compare::figure_kind(&l.metric);
        let first = l.values.first().map_or(0.0, |v| v.1);
        let last = l.values.last().map_or(0.0, |v| v.1);
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} |",
            l.metric,
            kind.format(first),
            kind.format(last),
            kind.format_change(l.slope_per_run),
            l.biggest_change.map_or_else(String::new, |(id, r)| format!(
                "run {id}: {:+.1}%",
                r * 100.0
            ))
        );
    }
    out
}

/// The profiles: how each was taken, and its ten functions with the most of it their own.
fn profile(p: &crate::profile::Profile) -> String {
    let mut out = String::new();
    for view in p.views() {
        let _ = write!(
            out,
            "**{}**: {}\n\n",
            view.kind.title(),
            cell(&p.describe(view.kind))
        );
        if let Some(kinds) = view.kinds_line() {
            let _ = write!(out, "{}\n\n", cell(&kinds));
        }
        let mut top = view.own_top(10).peekable();
        if top.peek().is_none() {
            continue;
        }
        out.push_str("| function | self | total |\n| --- | ---: | ---: |\n");
        for f in top {
            let _ = writeln!(
                out,
                "| `{}` | {:.1}% | {:.1}% |",
                cell(&crate::measure::processes::cut_to(&f.function, 80)),
                f.self_share * 100.0,
                f.total_share * 100.0
            );
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_baseline_regression_is_a_row_with_its_reason() {
        let base = Report::example();
        let mut new = Report::example();
        new.totals.insert(
            "cpu_time_ns".into(),
            crate::measure::collect::Total::Value(9_000_000_000),
        );
        let c = crate::judge::compare::compare(
            ("run 6", &base),
            ("this run", &new),
            &Default::default(),
        );
        assert_eq!(c.regressions, 1);
        new.comparison = Some(c);
        let md = report(&new);
        assert!(md.contains("**Against baseline `run 6`**"), "{md}");
        let row = md
            .lines()
            .find(|l| l.starts_with("| `cpu_time_ns`") && l.contains("regression"))
            .unwrap_or_else(|| panic!("no regression row: {md}"));
        assert!(row.contains("+350.0%") && row.contains("+10%"), "{row}");
        let xml = crate::output::render::junit::report(&new);
        assert!(
            xml.contains("classname=\"cleanroom.compare\" name=\"cpu_time_ns\""),
            "{xml}"
        );
        assert!(xml.contains("failures=\"1\""), "{xml}");
    }

    #[test]
    fn an_interrupted_run_says_so() {
        let mut r = Report::example();
        assert!(!report(&r).contains("interrupted"));
        r.exit_code = 130;
        r.interrupted = Some(crate::output::report::Interruption {
            signal: "SIGINT".into(),
            killed_leftovers: 0,
        });
        let md = report(&r);
        assert!(
            md.contains("Exit code 130 (interrupted by SIGINT) after"),
            "{md}"
        );
    }

    #[test]
    fn anomalies_are_the_strongest_five_with_units() {
        let mut r = Report::example();
        r.anomalies = (0..12u64)
            .map(|i| crate::judge::verdict::Anomaly {
                t_ns: i * 1_000_000_000,
                metric: "memory_current_bytes".into(),
                value: 97_001_472.0,
                median: 84_754_432.0,
                score: 4.0 + i as f64,
            })
            .collect();
        r.anomalies_found = Some(175);
        for text in [report(&r), crate::output::render::html::report(&r)] {
            assert!(!text.contains("97001472"), "a raw float in:\n{text}");
            assert_eq!(
                text.matches("92.5 MiB vs median 80.8 MiB").count(),
                5,
                "{text}"
            );
            assert!(text.contains("at 11.0s: 92.5 MiB"), "the strongest: {text}");
            assert!(
                !text.contains("at 6.0s:"),
                "only the five strongest: {text}"
            );
            assert!(text.contains("… and 170 more"), "{text}");
        }
    }

    #[test]
    fn trends_read_in_each_figures_unit() {
        let runs: Vec<(i64, Report)> = [1u64, 2, 3, 10]
            .iter()
            .map(|s| {
                let mut r = Report::example();
                r.wall_time_ns = s * 1_500_000_000;
                r.totals.insert(
                    "cpu_time_ns".into(),
                    crate::measure::collect::Total::Value(s * 1_000_000_000),
                );
                r.totals.insert(
                    "block_write_bytes".into(),
                    crate::measure::collect::Total::Value(s << 20),
                );
                r.totals.insert(
                    "page_faults_user".into(),
                    crate::measure::collect::Total::Value(s * 100),
                );
                (*s as i64, r)
            })
            .collect();
        let md = trend(&crate::judge::compare::trend("suite", &runs));
        let row = |metric: &str| {
            md.lines()
                .find(|l| l.starts_with(&format!("| `{metric}`")))
                .unwrap_or_else(|| panic!("no {metric} row: {md}"))
                .to_owned()
        };
        assert!(
            row("cpu_time_ns").starts_with("| `cpu_time_ns` | 1.000 s | 10.000 s | +2.800 s |"),
            "{md}"
        );
        assert!(
            row("block_write_bytes").contains("| 1.0 MiB | 10.0 MiB | +2.8 MiB |"),
            "{md}"
        );
        assert!(
            row("page_faults_user").contains("| 100 | 1000 | +280.0 |"),
            "{md}"
        );
        assert!(row("wall_time").contains("| 1.500 s | 15.000 s |"), "{md}");
        let html =
            crate::output::render::html::trend(&crate::judge::compare::trend("suite", &runs));
        assert!(
            html.contains("+2.800 s") && html.contains("10.0 MiB"),
            "{html}"
        );
    }
}
