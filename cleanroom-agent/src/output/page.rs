//! The agent's front page (`GET /`): the cgroups it watches now, with their figures so far, and
//! the runs stored most recently, with their verdicts.
//!
//! One self-contained HTML document, rendered from plain rows (the agent gathers them; this
//! module reads nothing): inline CSS, the look of a run's report ([`crate::output::render`]), no script
//! and nothing fetched from elsewhere. It reloads itself every [`REFRESH_SECS`] seconds. Its only
//! links are the agent's own paths: `/api/v1/cgroups/{id}` for a live cgroup, `/runs/{id}` for a
//! stored run. Every piece of text is escaped: cgroup paths, rule and run names and commands are
//! whatever their owners chose.

use std::fmt::Write as _;

use crate::{
    metric::{Metric, human},
    output::render::html::{STYLE, esc},
    store::RunRow,
    units::{group_thousands, human_duration_ns},
};

/// How often the page reloads itself, seconds.
pub const REFRESH_SECS: u32 = 5;

/// One live watched cgroup, as the front page lists it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct LiveRow {
    /// Its id (the cgroup's inode number), as `/api/v1/cgroups/{id}` takes it.
    pub id: u64,
    /// Path relative to the cgroup v2 mount.
    pub cgroup: String,
    /// The watch rule's name.
    pub rule: String,
    /// The container whose cgroup it is, `name (image)`, when it is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// When watching began (RFC 3339).
    pub started_at: String,
    /// How long it has been watched, ns.
    pub watched_ns: u64,
    /// CPU time so far, ns (None: unavailable on this host).
    pub cpu_time_ns: Option<u64>,
    /// CPU use over the last interval, percent of one CPU.
    pub cpu_percent: Option<f64>,
    /// Memory charged now.
    pub memory_current_bytes: Option<u64>,
    /// Block bytes read so far.
    pub block_read_bytes: Option<u64>,
    /// Block bytes written so far.
    pub block_write_bytes: Option<u64>,
    /// Network bytes received so far.
    pub net_rx_bytes: Option<u64>,
    /// Network bytes sent so far.
    pub net_tx_bytes: Option<u64>,
    /// Threshold breaches so far.
    pub breaches: usize,
}

/// The agent itself, as the page's header shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AgentLine {
    /// The host's name.
    pub host: String,
    /// When the agent started (RFC 3339).
    pub started_at: String,
    /// The sampling interval, ns.
    pub interval_ns: u64,
    /// Samples taken since it started.
    pub samples: u64,
    /// Events the kernel side dropped since it started (its buffers were full); above zero, the
    /// counts are low.
    pub dropped: u64,
    /// The address the HTTP interface listens on.
    pub listen: String,
}

/// Extra rules for this page, on top of the report's [`STYLE`].
const PAGE_STYLE: &str = r#"
header h1 .host { font-weight:400; color:#cbd5e1; }
.warnchip { background:#fef3c7; color:var(--warn); font-weight:700; padding:1px 6px; border-radius:4px; }
td.path { overflow-wrap:anywhere; }
td.path a, td a { color:#1d4ed8; text-decoration:none; } td a:hover { text-decoration:underline; }
td.fail { color:var(--fail); font-weight:700; }
td.na { color:var(--muted); }
td .badge { margin-right:0; font-size:12px; padding:2px 8px; }
th.num { text-align:right; } td.num, td.when { white-space:nowrap; }
td.cmd code { overflow-wrap:anywhere; }
"#;

/// The tooltip of a figure this host cannot measure.
const UNAVAILABLE: &str = "unavailable on this host";

/// A span of time for people: `250.0 ms`, `12.3 s`, `4 min 05 s`, `2 h 07 min`, `3 d 04 h`.
/// Unlike [`human_duration_ns`], an hour does not read as `3600.000 s`.
fn span(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    match secs {
        0 => human_duration_ns(ns),
        1..60 => format!("{:.1} s", ns as f64 / 1e9),
        60..3_600 => format!("{} min {:02} s", secs / 60, secs % 60),
        3_600..86_400 => format!("{} h {:02} min", secs / 3_600, secs % 3_600 / 60),
        _ => format!("{} d {:02} h", secs / 86_400, secs % 86_400 / 3_600),
    }
}

/// A number cell, or `n/a` with a tooltip when the host cannot measure it.
fn cell(value: Option<String>) -> String {
    match value {
        Some(v) => format!("<td class=\"num\">{}</td>", esc(&v)),
        None => format!("<td class=\"num na\" title=\"{UNAVAILABLE}\">n/a</td>"),
    }
}

/// A cell of a metric's value, in the metric's unit.
fn metric_cell(value: Option<u64>, metric: Metric) -> String {
    cell(value.map(|v| human(v, metric.unit())))
}

/// A column header, its metric's meaning as a tooltip.
fn metric_th(label: &str, metric: Metric) -> String {
    format!(
        "<th class=\"num\" title=\"{}\">{}</th>",
        esc(metric.description()),
        esc(label)
    )
}

/// A stored verdict (`pass`, `fail`, `none`, or one this build does not know) as a badge, the
/// way a run's report shows it.
fn verdict_badge(verdict: &str) -> String {
    match verdict {
        "pass" => "<span class=\"badge pass\">PASS</span>".into(),
        "fail" => "<span class=\"badge fail\">FAIL</span>".into(),
        "none" => "<span class=\"badge none\" title=\"nothing was judged\">MEASURED</span>".into(),
        other => format!(
            "<span class=\"badge none\" title=\"verdict: {}\">MEASURED</span>",
            esc(other)
        ),
    }
}

fn header(agent: &AgentLine) -> String {
    let dropped = if agent.dropped > 0 {
        format!(
            "<span class=\"warnchip\" title=\"the kernel's buffers were full: counts are low\">{} dropped events</span>",
            group_thousands(agent.dropped)
        )
    } else {
        "0 dropped events".into()
    };
    format!(
        "<h1>Cleanroom agent <span class=\"host\">on {}</span></h1>\
         <div class=\"meta\">since {} · a sample every {} · {} samples · {dropped} · listening on <code>{}</code> · \
         this page reloads every {REFRESH_SECS} s</div>",
        esc(&agent.host),
        esc(&agent.started_at),
        esc(&span(agent.interval_ns)),
        group_thousands(agent.samples),
        esc(&agent.listen)
    )
}

fn live_section(live: &[LiveRow]) -> String {
    let mut out = format!("<section><h2>Watched cgroups ({})</h2>", live.len());
    if live.is_empty() {
        out.push_str("<p class=\"muted\">No cgroup matches the watch rules yet.</p></section>");
        return out;
    }
    let _ = write!(
        out,
        "<table><tr><th>cgroup</th><th>rule</th><th class=\"num\">watched for</th>{}\
         <th class=\"num\" title=\"CPU use over the last interval, percent of one CPU\">CPU %</th>{}{}{}{}{}\
         <th class=\"num\" title=\"threshold breaches so far\">breaches</th></tr>",
        metric_th("CPU time", Metric::CpuTime),
        metric_th("memory", Metric::MemoryCurrentBytes),
        metric_th("block read", Metric::BlockReadBytes),
        metric_th("block written", Metric::BlockWriteBytes),
        metric_th("net rx", Metric::NetRxBytes),
        metric_th("net tx", Metric::NetTxBytes),
    );
    for r in live {
        let _ = write!(
            out,
            "<tr><td class=\"path\"><a href=\"/api/v1/cgroups/{}\" title=\"live figures (JSON)\"><code>{}</code></a>{}</td>\
             <td>{}</td><td class=\"num\" title=\"since {}\">{}</td>{}{}{}{}{}{}{}<td class=\"num{}\">{}</td></tr>",
            r.id,
            esc(&r.cgroup),
            r.container.as_ref().map_or_else(String::new, |c| format!(
                "<br><span class=\"small muted\">container {}</span>",
                esc(c)
            )),
            esc(&r.rule),
            esc(&r.started_at),
            esc(&span(r.watched_ns)),
            cell(r.cpu_time_ns.map(span)),
            cell(r.cpu_percent.map(|p| format!("{p:.1}%"))),
            metric_cell(r.memory_current_bytes, Metric::MemoryCurrentBytes),
            metric_cell(r.block_read_bytes, Metric::BlockReadBytes),
            metric_cell(r.block_write_bytes, Metric::BlockWriteBytes),
            metric_cell(r.net_rx_bytes, Metric::NetRxBytes),
            metric_cell(r.net_tx_bytes, Metric::NetTxBytes),
            if r.breaches > 0 { " fail" } else { "" },
            r.breaches
        );
    }
    out.push_str("</table></section>");
    out
}

fn runs_section(runs: &[RunRow]) -> String {
    let mut out = format!("<section><h2>Recent runs ({})</h2>", runs.len());
    if runs.is_empty() {
        out.push_str("<p class=\"muted\">No run stored yet.</p></section>");
        return out;
    }
    out.push_str(
        "<table><tr><th class=\"num\">id</th><th>name</th><th>cgroup / command</th><th>started</th>\
         <th class=\"num\">wall time</th><th>verdict</th><th class=\"num\">exit code</th></tr>",
    );
    for r in runs {
        let name = r
            .name
            .as_deref()
            .map_or_else(|| "<span class=\"muted\">–</span>".to_owned(), esc);
        let _ = write!(
            out,
            "<tr><td class=\"num\"><a href=\"/runs/{}\" title=\"the run's report\">#{}</a></td><td>{name}</td>\
             <td class=\"cmd\"><code>{}</code></td><td class=\"when\">{}</td><td class=\"num\">{}</td><td>{}</td>\
             <td class=\"num{}\">{}</td></tr>",
            r.id,
            r.id,
            esc(&r.command),
            esc(&r.started_at),
            esc(&span(r.wall_time_ns.max(0).unsigned_abs())),
            verdict_badge(&r.verdict),
            if r.exit_code != 0 { " fail" } else { "" },
            r.exit_code
        );
    }
    out.push_str("</table></section>");
    out
}

/// The front page: the agent's line, the live watched cgroups, the recent stored runs (newest
/// first, as given).
pub fn index(live: &[LiveRow], runs: &[RunRow], agent: &AgentLine) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\n\
         <title>Cleanroom agent: {}</title>\n<style>{STYLE}{PAGE_STYLE}</style>\n</head>\n<body>\n\
         <header>{}</header>\n<main>\n{}\n{}\n</main>\n</body>\n</html>\n",
        esc(&agent.host),
        header(agent),
        live_section(live),
        runs_section(runs)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> AgentLine {
        AgentLine {
            host: "build-7".into(),
            started_at: "2026-11-29T01:00:00Z".into(),
            interval_ns: 1_000_000_000,
            samples: 12_345,
            dropped: 0,
            listen: "127.0.0.1:9464".into(),
        }
    }

    fn live(id: u64, cgroup: &str) -> LiveRow {
        LiveRow {
            id,
            cgroup: cgroup.into(),
            rule: "ci".into(),
            container: None,
            started_at: "2026-11-29T01:02:03Z".into(),
            watched_ns: 3_723_000_000_000,
            cpu_time_ns: Some(81_500_000_000),
            cpu_percent: Some(142.25),
            memory_current_bytes: Some(512 << 20),
            block_read_bytes: Some(3 << 30),
            block_write_bytes: Some(70 << 10),
            net_rx_bytes: Some(12_000),
            net_tx_bytes: Some(900),
            breaches: 0,
        }
    }

    fn run(id: i64, verdict: &str) -> RunRow {
        RunRow {
            id,
            name: Some(format!("suite-{id}")),
            started_at: "2026-11-28T23:59:00Z".into(),
            command: "cargo test --release".into(),
            host: "build-7".into(),
            git_commit: None,
            git_branch: None,
            exit_code: i32::from(verdict == "fail"),
            verdict: verdict.into(),
            wall_time_ns: 95_250_000_000,
        }
    }

    /// Every `href` value of the page.
    fn hrefs(page: &str) -> Vec<&str> {
        page.split("href=\"")
            .skip(1)
            .map(|rest| &rest[..rest.find('"').unwrap()])
            .collect()
    }

    #[test]
    fn hostile_text_is_escaped() {
        let evil = "x</code><script>alert(\"x\")</script><img src=x onerror='y'>";
        let mut row = live(1, &format!("system.slice/{evil}"));
        row.rule = evil.into();
        let mut stored = run(2, evil);
        stored.name = Some(evil.into());
        stored.command = evil.into();
        stored.started_at = evil.into();
        let mut line = agent();
        line.host = evil.into();
        line.listen = evil.into();
        let page = index(&[row], &[stored], &line);
        let lower = page.to_lowercase();
        assert!(!lower.contains("<script"), "{page}");
        assert!(!lower.contains("<img"), "{page}");
        // Escaped, `src=` is only text: no tag carries it, and no quote ends an attribute early.
        assert!(!lower.contains("onerror='"), "{page}");
        assert!(!page.contains("alert(\"x"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"));
        assert!(page.contains("onerror=&#39;y&#39;"));
    }

    #[test]
    fn self_contained_and_links_only_to_the_agent() {
        let page = index(
            &[live(1, "a.slice/b.scope"), live(2, "c")],
            &[run(3, "pass"), run(4, "fail"), run(5, "none")],
            &agent(),
        );
        let lower = page.to_lowercase();
        for banned in ["http://", "https://", "<script", "src=", "@import", "url("] {
            assert!(!lower.contains(banned), "{banned} in {page}");
        }
        let links = hrefs(&page);
        assert_eq!(links.len(), 5);
        for href in links {
            assert!(href.starts_with('/') && !href.starts_with("//"), "{href}");
        }
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    }

    #[test]
    fn rows_link_to_their_pages_with_their_verdicts() {
        let page = index(
            &[live(4_026_531_835, "a.slice"), live(17, "b.slice")],
            &[
                run(9, "pass"),
                run(8, "fail"),
                run(7, "none"),
                run(6, "odd"),
            ],
            &agent(),
        );
        assert_eq!(
            hrefs(&page),
            [
                "/api/v1/cgroups/4026531835",
                "/api/v1/cgroups/17",
                "/runs/9",
                "/runs/8",
                "/runs/7",
                "/runs/6"
            ]
        );
        let row = |id: i64| {
            let start = page.find(&format!("href=\"/runs/{id}\"")).unwrap();
            &page[start..start + page[start..].find("</tr>").unwrap()]
        };
        assert!(row(9).contains("<span class=\"badge pass\">PASS</span>"));
        assert!(row(8).contains("<span class=\"badge fail\">FAIL</span>"));
        assert!(row(7).contains("class=\"badge none\""));
        assert!(row(6).contains("class=\"badge none\"") && row(6).contains("verdict: odd"));
        assert!(page.contains("Watched cgroups (2)") && page.contains("Recent runs (4)"));
        assert!(page.contains("<code>a.slice</code>"));
    }

    #[test]
    fn empty_states() {
        let page = index(&[], &[], &agent());
        assert!(page.contains("Watched cgroups (0)"));
        assert!(page.contains("<p class=\"muted\">No cgroup matches the watch rules yet.</p>"));
        assert!(page.contains("Recent runs (0)"));
        assert!(page.contains("<p class=\"muted\">No run stored yet.</p>"));
        assert!(!page.contains("<table>"));
    }

    #[test]
    fn unavailable_figures_read_n_a() {
        let row = LiveRow {
            id: 3,
            cgroup: "bare".into(),
            ..LiveRow::default()
        };
        let page = index(&[row], &[], &agent());
        let na = format!("<td class=\"num na\" title=\"{UNAVAILABLE}\">n/a</td>");
        assert_eq!(page.matches(&na).count(), 7, "{page}");
        let page = index(&[live(3, "full")], &[], &agent());
        assert!(!page.contains("n/a"));
        assert!(page.contains("142.2%") || page.contains("142.3%"));
        assert!(page.contains("512.0 MiB") && page.contains("3.00 GiB"));
    }

    #[test]
    fn breaches_and_dropped_events_stand_out() {
        let mut row = live(1, "a");
        assert!(index(&[row.clone()], &[], &agent()).contains("<td class=\"num\">0</td></tr>"));
        row.breaches = 3;
        assert!(index(&[row], &[], &agent()).contains("<td class=\"num fail\">3</td></tr>"));
        assert!(!index(&[], &[], &agent()).contains("warnchip\""));
        let mut line = agent();
        line.dropped = 1_024;
        assert!(index(&[], &[], &line).contains(">1,024 dropped events</span>"));
    }

    #[test]
    fn spans_read_like_people_say_them() {
        assert_eq!(span(250_000_000), "250.0 ms");
        assert_eq!(span(1_000_000_000), "1.0 s");
        assert_eq!(span(245_000_000_000), "4 min 05 s");
        assert_eq!(span(3_723_000_000_000), "1 h 02 min");
        assert_eq!(span(277_200_000_000_000), "3 d 05 h");
    }

    /// Writes a sample page to /tmp/agent-index.html, to look at:
    /// `cargo test --release -p cleanroom-agent --lib page::tests::sample -- --ignored`.
    #[test]
    #[ignore = "writes /tmp/agent-index.html"]
    fn sample() {
        let mut rows = vec![
            live(4_026_532_101, "system.slice/docker-3f2a9c1be07d.scope"),
            live(
                4_026_532_177,
                "ci.slice/runner-42.slice/job-1138-integration-tests-with-a-long-name.scope",
            ),
            LiveRow {
                id: 4_026_532_200,
                cgroup: "user.slice/user-1000.slice/<batch>.scope".into(),
                rule: "batch & cron".into(),
                started_at: "2026-11-29T01:39:00Z".into(),
                watched_ns: 42_300_000_000,
                cpu_time_ns: Some(1_200_000_000),
                cpu_percent: Some(3.5),
                memory_current_bytes: Some(48 << 20),
                ..LiveRow::default()
            },
        ];
        rows[1].breaches = 2;
        rows[1].rule = "ci-jobs".into();
        let mut runs = vec![
            run(41, "pass"),
            run(40, "fail"),
            run(39, "none"),
            run(38, "pass"),
        ];
        runs[1].command = "./bench.sh --iterations 1000 --warmup 50 /srv/data/corpus".into();
        runs[2].name = None;
        runs[3].wall_time_ns = 4_000_000_000_000;
        let mut line = agent();
        line.dropped = 17;
        std::fs::write("/tmp/agent-index.html", index(&rows, &runs, &line)).unwrap();
    }
}
