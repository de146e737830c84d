//! JUnit XML: each SLO and threshold a test case (failed ones carry the measured value and the
//! objective), so CI systems show them beside the tests.

use quick_xml::{
    Writer,
    events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event},
};

use crate::{judge::compare::Comparison, judge::verdict::Status, output::report::Report};

/// A test case: class, name, and `Some((message, detail))` when it failed, or skipped.
struct Case {
    class: &'static str,
    name: String,
    failure: Option<(String, String)>,
    skipped: Option<String>,
    /// Seconds it took, where that means something (a phase).
    time_s: Option<f64>,
}

fn document(suite: &str, time_s: f64, timestamp: &str, cases: &[Case]) -> String {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    let failures = cases.iter().filter(|c| c.failure.is_some()).count();
    let skipped = cases.iter().filter(|c| c.skipped.is_some()).count();
    let n = cases.len().to_string();
    let f = failures.to_string();
    let s = skipped.to_string();
    let t = format!("{time_s:.3}");
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .expect("in memory");
    w.write_event(Event::Start(BytesStart::new("testsuites").with_attributes(
        [
            ("name", "cleanroom"),
            ("tests", n.as_str()),
            ("failures", f.as_str()),
            ("skipped", s.as_str()),
            ("time", t.as_str()),
        ],
    )))
    .expect("in memory");
    w.write_event(Event::Start(BytesStart::new("testsuite").with_attributes(
        [
            ("name", suite),
            ("tests", n.as_str()),
            ("failures", f.as_str()),
            ("errors", "0"),
            ("skipped", s.as_str()),
            ("time", t.as_str()),
            ("timestamp", timestamp),
        ],
    )))
    .expect("in memory");
    for c in cases {
        let time = format!("{:.3}", c.time_s.unwrap_or(0.0));
        let start = BytesStart::new("testcase").with_attributes([
            ("classname", c.class),
            ("name", c.name.as_str()),
            ("time", time.as_str()),
        ]);
        if c.failure.is_none() && c.skipped.is_none() {
            w.write_event(Event::Empty(start)).expect("in memory");
            continue;
        }
        w.write_event(Event::Start(start)).expect("in memory");
        if let Some((message, detail)) = &c.failure {
            w.write_event(Event::Start(
                BytesStart::new("failure")
                    .with_attributes([("message", message.as_str()), ("type", c.class)]),
            ))
            .expect("in memory");
            w.write_event(Event::Text(BytesText::new(detail)))
                .expect("in memory");
            w.write_event(Event::End(BytesEnd::new("failure")))
                .expect("in memory");
        }
        if let Some(message) = &c.skipped {
            w.write_event(Event::Empty(
                BytesStart::new("skipped").with_attributes([("message", message.as_str())]),
            ))
            .expect("in memory");
        }
        w.write_event(Event::End(BytesEnd::new("testcase")))
            .expect("in memory");
    }
    w.write_event(Event::End(BytesEnd::new("testsuite")))
        .expect("in memory");
    w.write_event(Event::End(BytesEnd::new("testsuites")))
        .expect("in memory");
    let mut text = String::from_utf8(w.into_inner()).expect("XML is UTF-8");
    text.push('\n');
    text
}

/// Each SLO and threshold of a run.
pub fn report(r: &Report) -> String {
    // The command's own outcome is always a case, first: an interrupted or failed command
    // fails the suite whatever the SLOs say.
    let command = r.command_line();
    let mut cases = vec![Case {
        class: "cleanroom.run",
        name: command.clone(),
        failure: (r.exit_code != 0).then(|| {
            let how = match &r.interrupted {
                Some(i) => format!(" (interrupted by {})", i.signal),
                None => String::new(),
            };
            (
                format!("exit code {}{how}", r.exit_code),
                format!("`{command}` exited {}{how}", r.exit_code),
            )
        }),
        skipped: None,
        time_s: Some(r.wall_time_ns as f64 / 1e9),
    }];
    for s in &r.slos {
        let detail = format!("measured {}, objective {}", s.measured_text, s.objective);
        cases.push(Case {
            class: "cleanroom.slo",
            name: s.name.clone(),
            failure: matches!(s.status, Status::Fail | Status::Unmeasured).then(|| {
                (
                    format!("measured {}, objective {}", s.measured_text, s.target_text),
                    detail,
                )
            }),
            skipped: None,
            time_s: None,
        });
    }
    for t in &r.thresholds {
        cases.push(Case {
            class: "cleanroom.threshold",
            name: t.name.clone(),
            failure: matches!(t.status, Status::Fail | Status::Unmeasured).then(|| {
                (
                    format!("peak {}, limit {}", t.peak_text, t.limit_text),
                    format!(
                        "{} went over {} {} time(s); peak {}",
                        t.metric, t.limit_text, t.breaches, t.peak_text
                    ),
                )
            }),
            skipped: (t.status == Status::NotApplicable).then(|| "not applicable".to_owned()),
            time_s: None,
        });
    }
    // Each phase a case with its wall time (its SLOs are cases above).
    for p in &r.phases {
        cases.push(Case {
            class: "cleanroom.phase",
            name: p.name.clone(),
            failure: None,
            skipped: None,
            time_s: Some(p.wall_time_ns as f64 / 1e9),
        });
    }
    // Against `--baseline`: each figure a case, as `cleanroom compare` gives them.
    if let Some(c) = &r.comparison {
        cases.extend(comparison_cases(c));
    }
    document(
        &format!("cleanroom: {command}"),
        r.wall_time_ns as f64 / 1e9,
        &r.started_at,
        &cases,
    )
}

/// A case per compared figure, failed where it regressed.
fn comparison_cases(c: &Comparison) -> Vec<Case> {
    c.changes
        .iter()
        .map(|ch| Case {
            class: "cleanroom.compare",
            name: ch.metric.clone(),
            failure: ch.regression.then(|| {
                let rel = ch
                    .relative
                    .map_or_else(|| "n/a".into(), |r| format!("{:+.1}%", r * 100.0));
                (
                    format!(
                        "{} -> {} ({rel}), tolerance {}",
                        ch.base_text,
                        ch.new_text,
                        ch.tolerance_text()
                    ),
                    format!(
                        "base {} ({}), new {} ({})",
                        ch.base_text, c.base.label, ch.new_text, c.new.label
                    ),
                )
            }),
            skipped: None,
            time_s: None,
        })
        .collect()
}

/// Each figure of a comparison.
pub fn comparison(c: &Comparison) -> String {
    let cases = comparison_cases(c);
    document(
        &format!("cleanroom compare {} {}", c.base.label, c.new.label),
        0.0,
        &c.new.started_at,
        &cases,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{judge::verdict::SloResult, output::report::Interruption};

    #[test]
    fn the_commands_own_failure_is_a_case_even_beside_slos() {
        let mut r = Report::example();
        r.command = vec!["sh".into(), "-c".into(), "make test".into()];
        r.exit_code = 130;
        r.interrupted = Some(Interruption {
            signal: "SIGINT".into(),
            killed_leftovers: 0,
        });
        r.slos.push(SloResult {
            name: "fast".into(),
            objective: "wall_time <= 1h".into(),
            phase: None,
            measured: Some(1.0),
            measured_text: "1 ns".into(),
            target_text: "<= 1h".into(),
            status: Status::Pass,
        });
        let xml = report(&r);
        assert!(xml.contains("tests=\"2\""), "{xml}");
        assert!(xml.contains("failures=\"1\""), "{xml}");
        assert!(
            xml.contains("name=\"sh -c &apos;make test&apos;\""),
            "{xml}"
        );
        assert!(
            xml.contains("exit code 130 (interrupted by SIGINT)"),
            "{xml}"
        );
    }
}
