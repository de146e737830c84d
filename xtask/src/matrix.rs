//! The kernel matrix's results, read back from each guest: the test programs' logs and
//! `cleanroom doctor`'s output, printed as one table (kernel × check) with notes under it for
//! everything that is not plainly fine (a hook attached in an older form, a metric unavailable
//! and why, a test that did not finish).

use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path};

/// What became of one test in a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It passed.
    Pass,
    /// It failed.
    Fail,
    /// Its program stopped (or was stopped) before reporting it.
    Unfinished,
}

impl Outcome {
    fn cell(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "FAIL",
            Self::Unfinished => "DID NOT FINISH",
        }
    }
}

/// One kernel's column.
#[derive(Debug, Default)]
pub struct Column {
    /// The heading: matrix name and kernel release.
    pub label: String,
    /// Each test's outcome, `program::test`.
    pub tests: BTreeMap<String, Outcome>,
    /// `doctor`'s findings, row name → cell.
    pub doctor: BTreeMap<String, String>,
    /// What the cells do not say: older forms, reasons, a guest that stopped.
    pub notes: Vec<String>,
}

impl Column {
    /// The column of a guest whose results are in `results` (test logs `<program>.log`,
    /// `doctor.txt`), for the test programs named `programs`.
    pub fn read(label: String, results: &Path, programs: &[String]) -> Self {
        let mut column = Self {
            label,
            ..Self::default()
        };
        for program in programs {
            let log =
                fs::read_to_string(results.join(format!("{program}.log"))).unwrap_or_default();
            let parsed = parse_log(&log);
            if !log.contains("\ntest result:") {
                column
                    .tests
                    .insert(format!("{program}::*"), Outcome::Unfinished);
                let rc = fs::read_to_string(results.join(format!("{program}.rc")))
                    .map(|rc| rc.trim().to_owned())
                    .unwrap_or_default();
                column.notes.push(match rc.as_str() {
                    "" => format!("{program}: not run (the guest stopped first)"),
                    "124" | "137" => format!("{program}: stopped by its time limit"),
                    rc => format!("{program}: exited {rc} without a libtest summary"),
                });
            }
            for (test, outcome) in parsed {
                column.tests.insert(format!("{program}::{test}"), outcome);
            }
        }
        let doctor = fs::read_to_string(results.join("doctor.txt")).unwrap_or_default();
        if doctor.is_empty() {
            column.notes.push("doctor: no output".into());
        }
        for finding in parse_doctor(&doctor) {
            if let Some(note) = finding.note {
                column.notes.push(format!("{}: {note}", finding.row));
            }
            column.doctor.insert(finding.row, finding.cell);
        }
        column
    }

    /// Tests that did not pass.
    pub fn not_passed(&self) -> usize {
        self.tests.values().filter(|o| **o != Outcome::Pass).count()
    }
}

/// Each test of a libtest run: started by a `test NAME ... ` line (its result can land on a
/// later line when the test's own stderr is interleaved), failed when the closing `failures:`
/// list names it; in a log without libtest's summary (the program was stopped), a test without
/// its result did not finish. Ignored tests are left out.
pub fn parse_log(log: &str) -> Vec<(String, Outcome)> {
    let finished = log.contains("\ntest result:");
    let failed: Vec<&str> = log
        .rsplit_once("\nfailures:\n")
        .map(|(_, tail)| tail.lines().map_while(|l| l.strip_prefix("    ")).collect())
        .unwrap_or_default();
    log.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("test ")?.split_once(" ... ")?;
            let rest = rest.trim();
            if rest == "ignored" || name.contains(' ') {
                return None;
            }
            let outcome = if failed.contains(&name) || rest == "FAILED" {
                Outcome::Fail
            } else if finished || rest == "ok" {
                Outcome::Pass
            } else {
                Outcome::Unfinished
            };
            Some((name.to_owned(), outcome))
        })
        .collect()
}

/// One finding of `doctor` as a row of the table.
#[derive(Debug, PartialEq, Eq)]
pub struct Finding {
    /// `doctor: NAME`, `hook: ATTACH` or `metric: NAME`.
    pub row: String,
    /// Short: ok, note, FAIL, attached, older form, not attached, available, UNAVAILABLE.
    pub cell: String,
    /// The detail, when the cell alone does not say enough.
    pub note: Option<String>,
}

/// `doctor`'s lines (`[ok  ] name  detail`, then `metrics:` with `  name  available` or
/// `  name  UNAVAILABLE: why`) as findings; continuation lines (a verifier log) are left out.
pub fn parse_doctor(text: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut in_metrics = false;
    for line in text.lines() {
        if line == "metrics:" {
            in_metrics = true;
            continue;
        }
        if in_metrics {
            let Some(rest) = line.strip_prefix("  ") else {
                in_metrics = false;
                continue;
            };
            let (name, state) = rest.split_once(' ').unwrap_or((rest, ""));
            let state = state.trim();
            let (cell, note) = match state.strip_prefix("UNAVAILABLE: ") {
                Some(why) => ("UNAVAILABLE", Some(why.to_owned())),
                None => (state, None),
            };
            out.push(Finding {
                row: format!("metric: {name}"),
                cell: cell.to_owned(),
                note,
            });
            continue;
        }
        let Some((mark, rest)) = line.strip_prefix('[').and_then(|l| l.split_once("] ")) else {
            continue;
        };
        // The name is padded to 14 characters and may hold a space ("BPF object").
        let name = rest.get(..14).unwrap_or(rest).trim();
        let detail = rest.get(14..).unwrap_or("").trim();
        let finding = if name == "hook" {
            let (attach, how) = detail.split_once(' ').unwrap_or((detail, ""));
            let attach = attach.trim_end_matches(':');
            let (cell, note) = if let Some(older) = how.strip_prefix("attached (") {
                ("older form", Some(older.trim_end_matches(')').to_owned()))
            } else if how == "attached" {
                ("attached", None)
            } else {
                ("not attached", Some(how.to_owned()))
            };
            Finding {
                row: format!("hook: {attach}"),
                cell: cell.to_owned(),
                note,
            }
        } else {
            let mark = mark.trim();
            Finding {
                row: format!("doctor: {name}"),
                cell: mark.to_owned(),
                note: (mark != "ok").then(|| detail.to_owned()),
            }
        };
        out.push(finding);
    }
    out
}

/// The table: `doctor`'s rows, then one row per test, one column per kernel; then the notes.
pub fn render(columns: &[Column]) -> String {
    let mut doctor_rows: Vec<&String> = columns.iter().flat_map(|c| c.doctor.keys()).collect();
    doctor_rows.sort();
    doctor_rows.dedup();
    let mut test_rows: Vec<&String> = columns.iter().flat_map(|c| c.tests.keys()).collect();
    test_rows.sort();
    test_rows.dedup();
    let width = doctor_rows
        .iter()
        .chain(&test_rows)
        .map(|t| t.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let widths: Vec<usize> = columns.iter().map(|c| c.label.len().max(14)).collect();
    let mut s = String::new();
    let _ = write!(s, "\n{:width$}", "");
    for (c, w) in columns.iter().zip(&widths) {
        let _ = write!(s, "  {:w$}", c.label);
    }
    s.push('\n');
    let row = |s: &mut String, name: &str, cell: &dyn Fn(&Column) -> String| {
        let _ = write!(s, "{name:width$}");
        for (c, w) in columns.iter().zip(&widths) {
            let _ = write!(s, "  {:w$}", cell(c));
        }
        s.push('\n');
    };
    for name in &doctor_rows {
        row(&mut s, name, &|c: &Column| {
            c.doctor.get(*name).cloned().unwrap_or_else(|| "-".into())
        });
    }
    s.push('\n');
    for name in &test_rows {
        row(&mut s, name, &|c: &Column| {
            c.tests.get(*name).map_or("-", |o| o.cell()).to_owned()
        });
    }
    for c in columns.iter().filter(|c| !c.notes.is_empty()) {
        let _ = writeln!(s, "\n{}:", c.label);
        for note in &c.notes {
            let _ = writeln!(s, "  - {note}");
        }
    }
    s
}

/// `doctor`'s findings as a Markdown table for the README: every hook, and the checks and
/// metrics that are not plainly fine on some kernel; a closing line says the rest are.
pub fn doctor_markdown(columns: &[Column]) -> String {
    let plain = ["ok", "attached", "available"];
    let mut rows: Vec<&String> = columns.iter().flat_map(|c| c.doctor.keys()).collect();
    rows.sort();
    rows.dedup();
    let (shown, plain_rows): (Vec<&String>, Vec<&String>) = rows.into_iter().partition(|row| {
        row.starts_with("hook: ")
            || columns.iter().any(|c| {
                c.doctor
                    .get(*row)
                    .is_some_and(|v| !plain.contains(&v.as_str()))
            })
    });
    let mut s = String::from("| |");
    for c in columns {
        let _ = write!(s, " {} |", c.label);
    }
    s.push_str("\n| --- |");
    for _ in columns {
        s.push_str(" --- |");
    }
    s.push('\n');
    for row in &shown {
        let _ = write!(s, "| {} |", row.replace('|', "\\|"));
        for c in columns {
            let _ = write!(s, " {} |", c.doctor.get(*row).map_or("-", String::as_str));
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "\n{} other checks and metrics: ok and available on every kernel here.",
        plain_rows.len()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_lines_become_outcomes() {
        let log = "running 4 tests\ntest a_b ... ok\ntest c ... FAILED\ntest d ... ignored\n\
                   test e ... cleanroom: warning: noise\nmore noise\n\nfailures:\n\n\
                   ---- c stdout ----\npanicked\n\n---- e stdout ----\npanicked\n\n\
                   failures:\n    c\n    e\n\ntest result: FAILED.";
        assert_eq!(
            parse_log(log),
            vec![
                ("a_b".to_owned(), Outcome::Pass),
                ("c".to_owned(), Outcome::Fail),
                ("e".to_owned(), Outcome::Fail)
            ]
        );
    }

    #[test]
    fn a_stopped_program_leaves_its_running_test_unfinished() {
        let log = "running 3 tests\ntest a ... ok\ntest b ... FAILED\ntest c ... ";
        assert_eq!(
            parse_log(log),
            vec![
                ("a".to_owned(), Outcome::Pass),
                ("b".to_owned(), Outcome::Fail),
                ("c".to_owned(), Outcome::Unfinished)
            ]
        );
    }

    #[test]
    fn doctor_lines_become_rows_and_notes() {
        let text = "[ok  ] kernel         5.10.0-46-amd64\n\
                    [note] BPF object     loaded; 18 of 19 hooks attached\n\
                    [ok  ] hook           tp_btf/sched_switch attached\n\
                    [ok  ] hook           tp_btf/block_split attached (the form of 5.10)\n\
                    [note] hook           tp_btf/sched_process_fork: refused. Verifier output:\n\
                    0: (79) r9 = *(u64 *)(r1 +8)\n\
                    \nmetrics:\n  cpu_time_ns                    available\n\
                    \x20 processes_forked               UNAVAILABLE: no fork hook\n\
                    \ncleanroom can run on this host.\n";
        let rows: Vec<(String, String, Option<String>)> = parse_doctor(text)
            .into_iter()
            .map(|f| (f.row, f.cell, f.note))
            .collect();
        let row =
            |r: &str, c: &str, n: Option<&str>| (r.to_owned(), c.to_owned(), n.map(str::to_owned));
        assert_eq!(
            rows,
            vec![
                row("doctor: kernel", "ok", None),
                row(
                    "doctor: BPF object",
                    "note",
                    Some("loaded; 18 of 19 hooks attached")
                ),
                row("hook: tp_btf/sched_switch", "attached", None),
                row(
                    "hook: tp_btf/block_split",
                    "older form",
                    Some("the form of 5.10")
                ),
                row(
                    "hook: tp_btf/sched_process_fork",
                    "not attached",
                    Some("refused. Verifier output:")
                ),
                row("metric: cpu_time_ns", "available", None),
                row(
                    "metric: processes_forked",
                    "UNAVAILABLE",
                    Some("no fork hook")
                ),
            ]
        );
    }

    #[test]
    fn the_markdown_table_shows_hooks_and_what_differs() {
        let column = |label: &str, cells: &[(&str, &str)]| Column {
            label: label.to_owned(),
            doctor: cells
                .iter()
                .map(|(r, c)| ((*r).to_owned(), (*c).to_owned()))
                .collect(),
            ..Column::default()
        };
        let new = column(
            "new",
            &[
                ("hook: tp_btf/a", "attached"),
                ("metric: m", "available"),
                ("metric: n", "available"),
                ("doctor: kernel", "ok"),
            ],
        );
        let old = column(
            "old",
            &[
                ("hook: tp_btf/a", "older form"),
                ("metric: m", "UNAVAILABLE"),
                ("metric: n", "available"),
                ("doctor: kernel", "ok"),
            ],
        );
        let md = doctor_markdown(&[new, old]);
        assert!(
            md.starts_with("| | new | old |\n| --- | --- | --- |\n"),
            "{md}"
        );
        assert!(
            md.contains("| hook: tp_btf/a | attached | older form |\n"),
            "{md}"
        );
        assert!(
            md.contains("| metric: m | available | UNAVAILABLE |\n"),
            "{md}"
        );
        assert!(
            !md.contains("metric: n") && !md.contains("doctor: kernel"),
            "{md}"
        );
        assert!(md.contains("2 other checks and metrics"), "{md}");
    }
}
