//! One self-contained HTML page (inline CSS and SVG, no scripts, nothing fetched at view time;
//! tables sort by radio buttons and CSS):
//! verdict, SLO table, insights, a chart of every time series with anomalies marked, latency
//! histograms, totals, devices, events.

use std::fmt::Write as _;

use crate::{
    judge::compare::{Comparison, Trend},
    judge::verdict::{Status, Verdict},
    measure::collect::Total,
    measure::model::LatencySummary,
    measure::processes::ProcessRecord,
    metric::{Kind, Latency, Metric, human},
    output::report::Report,
    units::human_duration_ns,
};

use super::chart::{CHARTS, ChartSpec, Frame, extent, nice_max, plotted};

/// Escapes text for HTML.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The look every page shares: a run's report and its kin here, and the agent's front page
/// ([`crate::output::page`]).
pub(crate) const STYLE: &str = r#"
:root { --fg:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#f9fafb; --pass:#15803d; --fail:#b91c1c; --warn:#b45309; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color:var(--fg); background:var(--bg); }
header { background:#0f172a; color:#f8fafc; padding:20px 32px; }
header h1 { margin:0 0 6px; font-size:20px; font-weight:600; }
header code { background:#1e293b; padding:2px 6px; border-radius:4px; font-size:13px; }
header .meta { color:#cbd5e1; font-size:13px; }
main { padding:24px 32px; max-width:1280px; margin:0 auto; }
.badge { display:inline-block; padding:3px 10px; border-radius:999px; font-weight:700; font-size:13px; letter-spacing:.03em; margin-right:10px; }
.badge.pass { background:#dcfce7; color:var(--pass); } .badge.fail { background:#fee2e2; color:var(--fail); } .badge.none { background:#e5e7eb; color:#374151; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:16px 20px; margin-bottom:20px; }
section h2 { margin:0 0 12px; font-size:16px; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); }
th { color:var(--muted); font-weight:600; } td.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
.status.pass { color:var(--pass); font-weight:600; } .status.fail { color:var(--fail); font-weight:700; }
.status.unmeasured { color:var(--warn); font-weight:600; } .status.na { color:var(--muted); }
.grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(560px, 1fr)); gap:16px; }
.chart { border:1px solid var(--line); border-radius:8px; padding:8px 10px; background:#fff; }
.chart h3 { margin:2px 0 4px; font-size:13px; font-weight:600; }
.legend { font-size:12px; color:var(--muted); } .legend span { margin-right:12px; } .legend i { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:4px; vertical-align:-1px; }
ul.insights { margin:0; padding-left:20px; } ul.insights li { margin:4px 0; }
.muted { color:var(--muted); } .small { font-size:12px; }
.flame svg { width:100%; height:auto; }
svg text { font:11px -apple-system, "Segoe UI", Roboto, Arial, sans-serif; fill:#6b7280; }
.sortable > input { position:absolute; opacity:0; pointer-events:none; } .sortable tbody { display:none; }
.sortable label { cursor:pointer; text-decoration:underline dotted; }
#order-start:checked ~ table tbody.order-start, #order-cpu:checked ~ table tbody.order-cpu, #order-wall:checked ~ table tbody.order-wall,
#order-faults:checked ~ table tbody.order-faults, #order-read:checked ~ table tbody.order-read, #order-written:checked ~ table tbody.order-written,
#order-net:checked ~ table tbody.order-net { display:table-row-group; }
#order-start:checked ~ table label[for=order-start], #order-cpu:checked ~ table label[for=order-cpu], #order-wall:checked ~ table label[for=order-wall],
#order-faults:checked ~ table label[for=order-faults], #order-read:checked ~ table label[for=order-read], #order-written:checked ~ table label[for=order-written],
#order-net:checked ~ table label[for=order-net] { color:var(--fg); text-decoration:none; }
#order-start:checked ~ table label[for=order-start]::after { content:" ▴"; }
#order-cpu:checked ~ table label[for=order-cpu]::after, #order-wall:checked ~ table label[for=order-wall]::after, #order-faults:checked ~ table label[for=order-faults]::after,
#order-read:checked ~ table label[for=order-read]::after, #order-written:checked ~ table label[for=order-written]::after,
#order-net:checked ~ table label[for=order-net]::after { content:" ▾"; }
"#;

fn page(title: &str, header: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<header>{header}</header>\n<main>\n{body}</main>\n</body>\n</html>\n",
        esc(title)
    )
}

fn status_cell(s: Status) -> &'static str {
    match s {
        Status::Pass => "<td class=\"status pass\">pass</td>",
        Status::Fail => "<td class=\"status fail\">FAIL</td>",
        Status::Unmeasured => "<td class=\"status unmeasured\">unmeasured</td>",
        Status::NotApplicable => "<td class=\"status na\">n/a</td>",
    }
}

/// The containers the run started: start-up time and what each cost.
fn containers(r: &Report) -> String {
    let mut out = format!(
        "<section><h2>Containers ({})</h2><table><tr><th>container</th><th>image</th><th class=\"num\">start-up</th><th class=\"num\">ran</th><th class=\"num\">CPU</th><th class=\"num\">read</th><th class=\"num\">written</th><th class=\"num\">sent</th><th class=\"num\">received</th><th class=\"num\">exit</th></tr>",
        r.containers.len()
    );
    let dash = || "–".to_owned();
    let bytes = |v: Option<u64>| v.map_or_else(dash, |b| human(b, crate::metric::Unit::Bytes));
    for c in &r.containers {
        let _ = write!(
            out,
            "<tr><td><code title=\"{}\">{}</code></td><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&c.id),
            esc(&c.name),
            esc(&c.image),
            esc(&c.startup_text()),
            c.lifetime_ns().map_or_else(dash, human_duration_ns),
            c.value("cpu_time_ns").map_or_else(dash, human_duration_ns),
            bytes(c.value("block_read_bytes")),
            bytes(c.value("block_write_bytes")),
            bytes(c.value("net_tx_bytes")),
            bytes(c.value("net_rx_bytes")),
            c.exit_code.map_or_else(dash, |e| e.to_string())
        );
        if let Some(why) = &c.unmeasured {
            let _ = write!(
                out,
                "<tr><td colspan=\"10\" class=\"small muted\">not measured: {}</td></tr>",
                esc(why)
            );
        }
    }
    out.push_str("</table></section>");
    out
}

/// The connections: every one (the first [`PROCESS_ROWS`]), remote endpoints first, loopback
/// apart.
fn connections(r: &Report) -> String {
    let mut out = format!("<section><h2>Connections ({})</h2>", r.connections.len());
    for (loopback, title) in [(false, "Remote endpoints"), (true, "Loopback")] {
        let rows: Vec<_> = r
            .connections
            .iter()
            .filter(|c| c.loopback == loopback)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = write!(
            out,
            "<h3 class=\"small\">{title} ({})</h3><table><tr><th>protocol</th><th>remote</th><th class=\"num\">local port</th><th class=\"num\">sent</th><th class=\"num\">packets</th><th class=\"num\">received</th><th class=\"num\">packets</th><th class=\"num\">retransmits</th><th class=\"num\">connect (mean / max)</th></tr>",
            rows.len()
        );
        for c in rows.iter().take(PROCESS_ROWS) {
            let connect = match (c.connect_mean_ns, c.connect_max_ns) {
                (Some(mean), Some(max)) => {
                    format!("{} / {}", human_duration_ns(mean), human_duration_ns(max))
                }
                _ => "–".to_owned(),
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                c.protocol,
                esc(&c.remote()),
                c.local_port,
                human(c.tx_bytes, crate::metric::Unit::Bytes),
                c.tx_packets,
                human(c.rx_bytes, crate::metric::Unit::Bytes),
                c.rx_packets,
                c.retransmits,
                connect
            );
        }
        out.push_str("</table>");
        if rows.len() > PROCESS_ROWS {
            let _ = write!(
                out,
                "<p class=\"small muted\">The {PROCESS_ROWS} with the most bytes of {}; the report's JSON lists them all.</p>",
                rows.len()
            );
        }
    }
    out.push_str("</section>");
    out
}

/// The processes: a timeline of the longest, every process in a sortable table, the process
/// tree, and by program.
fn processes(r: &Report) -> String {
    use crate::measure::processes::{by_command, top_by_wall};
    let mut out = format!("<section><h2>Processes ({})</h2>", r.processes.len());
    // The timeline: one bar per process from its start to its end, the 20 longest, in the
    // order they started.
    let mut longest = top_by_wall(&r.processes, 20);
    longest.sort_by_key(|p| p.start_ns);
    let span = r
        .processes
        .iter()
        .map(|p| p.end_ns)
        .chain([r.wall_time_ns])
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (w, row, left) = (1180.0, 16.0, 240.0);
    let h = row * longest.len() as f64 + 24.0;
    let _ = write!(
        out,
        "<h3 class=\"small\">The {} longest, over the run's {}</h3><svg viewBox=\"0 0 {w} {h}\" width=\"100%\" role=\"img\" aria-label=\"process timeline\">",
        longest.len(),
        human_duration_ns(r.wall_time_ns)
    );
    for (i, p) in longest.iter().enumerate() {
        let y = i as f64 * row;
        let x0 = left + p.start_ns as f64 / span * (w - left - 10.0);
        let x1 = left + p.end_ns as f64 / span * (w - left - 10.0);
        let busy = if p.wall_time_ns() > 0 {
            (p.cpu_time_ns as f64 / p.wall_time_ns() as f64).min(1.0)
        } else {
            0.0
        };
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{} ({})</text>\
             <rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#2563eb\" fill-opacity=\"{:.2}\"><title>{} (pid {}): {} of CPU over {}</title></rect>",
            left - 6.0,
            y + 12.0,
            esc(&p.brief(26)),
            p.pid,
            y + 3.0,
            (x1 - x0).max(1.0),
            row - 5.0,
            0.25 + 0.75 * busy,
            esc(&p.shown(400)),
            p.pid,
            human_duration_ns(p.cpu_time_ns),
            human_duration_ns(p.wall_time_ns())
        );
    }
    let _ = write!(
        out,
        "<text x=\"{left}\" y=\"{:.1}\">0 s</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text></svg>\
         <p class=\"small muted\">A bar is darker the more of its time the process was on a CPU.</p>",
        h - 4.0,
        w - 10.0,
        h - 4.0,
        human_duration_ns(span as u64)
    );
    out.push_str(&process_table(&r.processes));
    out.push_str(&process_tree(&r.processes));
    out.push_str("<h3 class=\"small\">By program</h3><table><tr><th>program</th><th class=\"num\">processes</th><th class=\"num\">CPU</th><th class=\"num\">wall (added)</th><th class=\"num\">written</th><th class=\"num\">network</th></tr>");
    for g in by_command(&r.processes).iter().take(20) {
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&g.command),
            g.count,
            human_duration_ns(g.cpu_time_ns),
            human_duration_ns(g.wall_time_ns),
            human(g.io_write_bytes, crate::metric::Unit::Bytes),
            g.net_bytes
                .map_or("—".to_owned(), |b| human(b, crate::metric::Unit::Bytes))
        );
    }
    out.push_str("</table></section>");
    out
}

/// The profiles, each a section: how it was taken, its flame graph, its kinds of wait or
/// directions, and the functions with the most of it their own.
fn profile(p: &crate::profile::Profile, command: &str) -> String {
    let mut out = String::new();
    for view in p.views() {
        let title = view.kind.title();
        let _ = write!(
            out,
            "<section><h2>{title}</h2><p class=\"small muted\">{}.</p>",
            esc(&p.describe(view.kind))
        );
        if let Some(kinds) = view.kinds_line() {
            let _ = write!(out, "<p>{}</p>", esc(&kinds));
        }
        let subtitle = p.describe(view.kind);
        if let Some(svg) =
            super::flame::svg(&view, &format!("{title} of `{command}`"), &subtitle, false)
        {
            out.push_str("<div class=\"flame\">");
            out.push_str(&super::flame::inline(&svg));
            let _ = write!(
                out,
                "</div><p class=\"small muted\">Each box a function, as wide as its share of the {}, above the one that called it; hover for its name and figure.</p>",
                match view.kind {
                    crate::profile::ProfileKind::Cpu => "samples",
                    crate::profile::ProfileKind::OffCpu => "time off CPU",
                    crate::profile::ProfileKind::Faults => "faults",
                    crate::profile::ProfileKind::Block => "bytes",
                }
            );
        }
        let mut top = view.own_top(15).peekable();
        if top.peek().is_some() {
            out.push_str(
                "<table><tr><th>function</th><th class=\"num\">self</th><th class=\"num\">total</th></tr>",
            );
            for f in top {
                let _ = write!(
                    out,
                    "<tr><td><code>{}</code></td><td class=\"num\">{:.1}%</td><td class=\"num\">{:.1}%</td></tr>",
                    esc(&crate::measure::processes::cut_to(&f.function, 120)),
                    f.self_share * 100.0,
                    f.total_share * 100.0
                );
            }
            out.push_str("</table>");
        }
        out.push_str("</section>");
    }
    for (kind, why) in &p.unavailable {
        let _ = write!(
            out,
            "<p class=\"small muted\">The {} profile was not taken: {}.</p>",
            esc(kind),
            esc(why)
        );
    }
    out
}

/// Rows a process table or tree shows, in each order.
const PROCESS_ROWS: usize = 100;

/// The orders of [`process_table`]: id, heading, and the key (larger first, but for start).
type SortKey = fn(&ProcessRecord) -> u64;
const PROCESS_ORDERS: &[(&str, &str, SortKey)] = &[
    ("start", "start", |p| u64::MAX - p.start_ns),
    ("cpu", "CPU", |p| p.cpu_time_ns),
    ("wall", "wall", |p| p.wall_time_ns()),
    ("faults", "faults", |p| {
        p.page_faults_minor + p.page_faults_major
    }),
    ("read", "read", |p| p.io_read_bytes),
    ("written", "written", |p| p.io_write_bytes),
    ("net", "network", |p| p.net.map_or(0, |n| n.bytes())),
];

/// Every process (the first [`PROCESS_ROWS`] in each order), sortable by clicking a heading
/// without a script: one hidden radio button per order, each showing its own pre-sorted body.
fn process_table(processes: &[ProcessRecord]) -> String {
    let mut out = String::from("<h3 class=\"small\">Every process</h3><div class=\"sortable\">");
    for (i, (id, _, _)) in PROCESS_ORDERS.iter().enumerate() {
        let checked = if *id == "cpu" { " checked" } else { "" };
        let _ = write!(
            out,
            "<input type=\"radio\" name=\"process-order\" id=\"order-{id}\" aria-label=\"sort by {}\"{checked}>",
            PROCESS_ORDERS[i].1
        );
    }
    out.push_str("<table><thead><tr><th class=\"num\">pid</th><th class=\"num\">parent</th><th>command line</th>");
    for (id, heading, _) in PROCESS_ORDERS {
        let _ = write!(
            out,
            "<th class=\"num\"><label for=\"order-{id}\" title=\"sort by {heading}\">{heading}</label></th>"
        );
    }
    out.push_str("<th class=\"num\">exit</th></tr></thead>");
    for (id, _, key) in PROCESS_ORDERS {
        let mut sorted: Vec<&ProcessRecord> = processes.iter().collect();
        sorted.sort_by_key(|p| std::cmp::Reverse(key(p)));
        let _ = write!(out, "<tbody class=\"order-{id}\">");
        for p in sorted.into_iter().take(PROCESS_ROWS) {
            let _ = write!(
                out,
                "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td><code title=\"{}\">{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\" title=\"{}\">{}</td><td class=\"num\">{}</td></tr>",
                p.pid,
                p.ppid,
                esc(&p.shown(2_000)),
                esc(&p.brief(90)),
                human_duration_ns(p.start_ns),
                human_duration_ns(p.cpu_time_ns),
                human_duration_ns(p.wall_time_ns()),
                p.page_faults_minor + p.page_faults_major,
                human(p.io_read_bytes, crate::metric::Unit::Bytes),
                human(p.io_write_bytes, crate::metric::Unit::Bytes),
                p.net
                    .map_or("unknown on this kernel".to_owned(), |n| format!(
                        "sent {}, received {}",
                        human(n.tx_bytes, crate::metric::Unit::Bytes),
                        human(n.rx_bytes, crate::metric::Unit::Bytes)
                    )),
                p.net.map_or("—".to_owned(), |n| human(
                    n.bytes(),
                    crate::metric::Unit::Bytes
                )),
                p.exit_code
            );
        }
        out.push_str("</tbody>");
    }
    out.push_str("</table></div>");
    if processes.len() > PROCESS_ROWS {
        let _ = write!(
            out,
            "<p class=\"small muted\">The first {PROCESS_ROWS} of {} in each order; the report's JSON lists them all.</p>",
            processes.len()
        );
    }
    out
}

/// The processes as a tree (the first [`PROCESS_ROWS`], depth first), each with its own CPU
/// and its descendants'.
fn process_tree(processes: &[ProcessRecord]) -> String {
    let nodes = crate::measure::processes::tree(processes);
    let mut out = String::from(
        "<h3 class=\"small\">Process tree</h3><table><tr><th>process</th><th class=\"num\">pid</th><th class=\"num\">CPU</th><th class=\"num\">with descendants</th><th class=\"num\">descendants</th><th class=\"num\">wall</th></tr>",
    );
    for n in nodes.iter().take(PROCESS_ROWS) {
        let p = n.process;
        let _ = write!(
            out,
            "<tr><td style=\"padding-left:{}px\"><code title=\"{}\">{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            10 + 16 * n.depth.min(30),
            esc(&p.shown(2_000)),
            esc(&p.brief(70)),
            p.pid,
            human_duration_ns(p.cpu_time_ns),
            human_duration_ns(n.subtree_cpu_ns),
            n.descendants,
            human_duration_ns(p.wall_time_ns())
        );
    }
    out.push_str("</table>");
    if nodes.len() > PROCESS_ROWS {
        let _ = write!(
            out,
            "<p class=\"small muted\">The first {PROCESS_ROWS} of {} processes, depth first.</p>",
            nodes.len()
        );
    }
    out
}

/// The phases marked in the run as bands behind a chart's lines, every other one shaded, each
/// named at its top (hover: its wall time).
fn phase_bands(r: &Report, f: &Frame) -> String {
    let mut out = String::new();
    for (i, p) in r.phases.iter().enumerate() {
        let (x0, _) = f.map(p.start_ns as f64 / 1e9, 0.0);
        let (x1, _) = f.map(p.end_ns as f64 / 1e9, 0.0);
        let _ = write!(
            out,
            "<g class=\"phase\"><rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" \
             fill=\"#f59e0b\" fill-opacity=\"{}\" stroke=\"#f59e0b\" stroke-opacity=\"0.5\">\
             <title>phase {}: {}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#92400e\">{}</text></g>",
            f.top,
            (x1 - x0).max(0.5),
            f.bottom - f.top,
            if i % 2 == 0 { "0.10" } else { "0.04" },
            esc(&p.name),
            esc(&human_duration_ns(p.wall_time_ns)),
            x0 + 2.0,
            f.top + 10.0,
            esc(&p.name)
        );
    }
    out
}

/// An SVG line chart of some series of the report, anomalies marked in red.
fn line_chart(r: &Report, spec: &ChartSpec) -> Option<String> {
    let lines = plotted(r, spec);
    if lines.is_empty() {
        return None;
    }
    let (w, h) = (560.0, 200.0);
    let (x_max, y_max) = extent(r, spec);
    let f = Frame {
        left: 84.0, // room for "256.0 MiB/s" at 11 px
        right: w - 12.0,
        top: 12.0,
        bottom: h - 28.0,
        x_max,
        y_max,
    };
    let mut svg = format!(
        "<svg viewBox=\"0 0 {w} {h}\" width=\"100%\" role=\"img\" aria-label=\"{}\">",
        esc(spec.title)
    );
    for i in 0..=4 {
        let y = y_max * f64::from(i) / 4.0;
        let (_, py) = f.map(0.0, y);
        let _ = write!(
            svg,
            "<line x1=\"{}\" y1=\"{py:.1}\" x2=\"{}\" y2=\"{py:.1}\" stroke=\"#e5e7eb\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            f.left,
            f.right,
            f.left - 6.0,
            py + 4.0,
            esc(&axis_label(spec.kind, y))
        );
    }
    let step = nice_max(x_max / 6.0);
    let mut x = 0.0;
    while x <= x_max + 1e-9 {
        let (px, _) = f.map(x, 0.0);
        let _ = write!(
            svg,
            "<text x=\"{px:.1}\" y=\"{}\" text-anchor=\"middle\">{}s</text>",
            h - 10.0,
            trim_num(x)
        );
        x += step;
    }
    svg.push_str(&phase_bands(r, &f));
    for (label, colour, pts) in &lines {
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| {
                let (px, py) = f.map(*x, *y);
                format!("{px:.1},{py:.1}")
            })
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" stroke-linejoin=\"round\" points=\"{}\"><title>{}</title></polyline>",
            path.join(" "),
            esc(label)
        );
        if pts.len() == 1 {
            let (px, py) = f.map(pts[0].0, pts[0].1);
            let _ = write!(
                svg,
                "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"3\" fill=\"{colour}\"/>"
            );
        }
    }
    for a in r
        .anomalies
        .iter()
        .filter(|a| spec.lines.iter().any(|(s, _, _)| *s == a.metric))
    {
        let (px, py) = f.map(a.t_ns as f64 / 1e9, a.value);
        let _ = write!(
            svg,
            "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"6\" fill=\"none\" stroke=\"#dc2626\" stroke-width=\"2\">\
             <title>anomaly: {} = {} at {:.1}s (median {}, score {:.1})</title></circle>",
            esc(&a.metric),
            esc(&spec.kind.format(a.value)),
            a.t_ns as f64 / 1e9,
            esc(&spec.kind.format(a.median)),
            a.score
        );
    }
    let _ = write!(
        svg,
        "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"#9ca3af\"/></svg>",
        f.left, f.bottom, f.right
    );
    let legend: String = lines
        .iter()
        .map(|(label, colour, _)| {
            format!(
                "<span><i style=\"background:{colour}\"></i>{}</span>",
                esc(label)
            )
        })
        .collect();
    Some(format!(
        "<div class=\"chart\"><h3>{}</h3><div class=\"legend\">{legend}</div>{svg}</div>",
        esc(spec.title)
    ))
}

fn trim_num(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn axis_label(kind: Kind, v: f64) -> String {
    match kind {
        Kind::Percent => format!("{}%", trim_num(v)),
        Kind::PerSec => format!("{}/s", si(v)),
        _ => kind.format(v),
    }
}

fn si(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{}G", trim_num(v / 1e9)),
        v if v >= 1e6 => format!("{}M", trim_num(v / 1e6)),
        v if v >= 1e3 => format!("{}k", trim_num(v / 1e3)),
        v => trim_num(v),
    }
}

/// An SVG bar chart of a latency histogram, by power of two.
fn histogram(name: &str, s: &LatencySummary) -> String {
    // Group the fine buckets by octave so the bars stay readable.
    let mut octaves: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
    for b in &s.buckets {
        *octaves
            .entry(63 - b.ge_ns.max(1).leading_zeros())
            .or_default() += b.count;
    }
    let (lo, hi) = (
        *octaves.keys().next().unwrap_or(&0),
        *octaves.keys().last().unwrap_or(&0),
    );
    let n = (hi - lo + 1) as f64;
    let (w, h) = (560.0, 170.0);
    let max = octaves.values().copied().max().unwrap_or(1) as f64;
    let (left, right, top, bottom) = (40.0, w - 10.0, 10.0, h - 34.0);
    let bw = (right - left) / n;
    let mut svg = format!(
        "<svg viewBox=\"0 0 {w} {h}\" width=\"100%\" role=\"img\" aria-label=\"{}\">",
        esc(name)
    );
    for (e, c) in &octaves {
        let x = left + f64::from(e - lo) * bw;
        let bh = (*c as f64 / max) * (bottom - top);
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#6366f1\" rx=\"2\">\
             <title>{} – {}: {c}</title></rect>",
            x + 1.0,
            bottom - bh,
            (bw - 2.0).max(1.0),
            human_duration_ns(1u64 << e),
            human_duration_ns(1u64 << (e + 1))
        );
    }
    let label_every = ((n / 8.0).ceil() as u32).max(1);
    for e in (lo..=hi).step_by(label_every as usize) {
        let x = left + f64::from(e - lo) * bw + bw / 2.0;
        let _ = write!(
            svg,
            "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            h - 18.0,
            esc(&human_duration_ns(1u64 << e))
        );
    }
    let _ = write!(
        svg,
        "<line x1=\"{left}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" stroke=\"#9ca3af\"/>\
         <text x=\"{left}\" y=\"{}\">count per power of two (max {})</text></svg>",
        h - 2.0,
        max as u64
    );
    format!(
        "<div class=\"chart\"><h3>{}</h3><div class=\"legend\">n = {} · p50 {} · p90 {} · p99 {} · max {} \
         <span class=\"muted\">(percentiles ≤ {:.1}% above the truth)</span></div>{svg}</div>",
        esc(name),
        s.count,
        human_duration_ns(s.p50_ns),
        human_duration_ns(s.p90_ns),
        human_duration_ns(s.p99_ns),
        human_duration_ns(s.max_ns),
        s.relative_error * 100.0
    )
}

/// The page of one run.
pub fn report(r: &Report) -> String {
    let verdict_class = match r.verdict {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::None | Verdict::Other(_) => "none",
    };
    let verdict_text = match r.verdict {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
        Verdict::None | Verdict::Other(_) => "MEASURED",
    };
    let header = format!(
        "<h1><span class=\"badge {verdict_class}\">{verdict_text}</span>Cleanroom report{}</h1>\
         <div class=\"meta\"><code>{}</code> · exit code {} · wall time {} · started {} · {} ({}, {} CPUs){}</div>",
        r.name
            .as_ref()
            .map(|n| format!(": {}", esc(n)))
            .unwrap_or_default(),
        esc(&r.command_line()),
        r.exit_code,
        human_duration_ns(r.wall_time_ns),
        esc(&r.started_at),
        esc(&r.host.hostname),
        esc(&r.host.kernel),
        r.host.cpus,
        r.host
            .git_commit
            .as_ref()
            .map(|c| format!(" · commit <code>{}</code>", esc(&c[..c.len().min(12)])))
            .unwrap_or_default()
    );
    let mut body = String::new();

    if !r.slos.is_empty() || !r.thresholds.is_empty() {
        body.push_str("<section><h2>SLOs and thresholds</h2><table><tr><th>name</th><th>objective</th><th class=\"num\">measured</th><th>verdict</th></tr>");
        for s in &r.slos {
            let _ = write!(
                body,
                "<tr><td>{}</td><td><code>{}</code></td><td class=\"num\">{}</td>{}</tr>",
                esc(&s.name),
                esc(&s.objective),
                esc(&s.measured_text),
                status_cell(s.status)
            );
        }
        for t in &r.thresholds {
            let _ = write!(
                body,
                "<tr><td>{}</td><td><code>{} &lt;= {}</code></td><td class=\"num\">{}</td>{}</tr>",
                esc(&t.name),
                esc(&t.metric),
                esc(&t.limit_text),
                esc(&t.peak_text),
                status_cell(t.status)
            );
        }
        body.push_str("</table></section>");
    }

    if !r.insights.is_empty() {
        body.push_str("<section><h2>Insights</h2><ul class=\"insights\">");
        for i in &r.insights {
            let _ = write!(body, "<li>{}</li>", esc(&i.text));
        }
        body.push_str("</ul></section>");
    }

    let charts: Vec<String> = CHARTS.iter().filter_map(|c| line_chart(r, c)).collect();
    body.push_str("<section><h2>Over time</h2>");
    if charts.is_empty() {
        body.push_str("<p class=\"muted\">No time series: the run was shorter than one interval, or monitoring was off.</p>");
    } else {
        let _ = write!(body, "<div class=\"grid\">{}</div>", charts.join(""));
    }
    if !r.anomalies.is_empty() {
        let (listed, more) = r.listed_anomalies();
        let _ = write!(
            body,
            "<p class=\"small muted\">{} anomalous interval(s) in all, circled in red where charted; the strongest:</p><ul class=\"small\">",
            r.anomaly_count()
        );
        for line in listed {
            let _ = write!(body, "<li>{}</li>", esc(&line));
        }
        if more > 0 {
            let _ = write!(body, "<li>… and {more} more</li>");
        }
        let _ = write!(
            body,
            "</ul><p class=\"small muted\">Method: {}.</p>",
            esc(&r.anomaly_method)
        );
    }
    body.push_str("</section>");

    let hists: Vec<String> = Latency::ALL
        .iter()
        .filter_map(|l| match r.totals.get(l.name()) {
            Some(Total::Latency(s)) if s.count > 0 => Some(histogram(l.name(), s)),
            _ => None,
        })
        .collect();
    if !hists.is_empty() {
        let _ = write!(
            body,
            "<section><h2>Latency</h2><div class=\"grid\">{}</div></section>",
            hists.join("")
        );
    }

    if !r.containers.is_empty() {
        body.push_str(&containers(r));
    }
    if !r.connections.is_empty() {
        body.push_str(&connections(r));
    }
    if !r.processes.is_empty() {
        body.push_str(&processes(r));
    }
    if let Some(p) = &r.profile {
        body.push_str(&profile(p, &r.command_line()));
    }
    if let Some(c) = &r.comparison {
        body.push_str(&profile_changes(c));
    }

    body.push_str("<section><h2>Totals</h2><table><tr><th>metric</th><th class=\"num\">measured</th><th>meaning</th></tr>");
    for m in Metric::ALL {
        let v = match r.totals.get(m.name()) {
            Some(Total::Value(v)) => human(*v, m.unit()),
            _ => "unavailable".into(),
        };
        let _ = write!(
            body,
            "<tr><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"muted\">{}</td></tr>",
            m.name(),
            esc(&v),
            esc(m.description())
        );
    }
    body.push_str("</table>");
    if !r.kernel.is_empty() {
        let k: Vec<String> = r
            .kernel
            .iter()
            .map(|(k, v)| format!("{} = {v}", esc(k)))
            .collect();
        let _ = write!(
            body,
            "<p class=\"small muted\">The kernel's own figures: {}.</p>",
            k.join(", ")
        );
    }
    body.push_str("</section>");

    if !r.block_devices.is_empty() {
        body.push_str("<section><h2>Block devices</h2><table><tr><th>device</th><th class=\"num\">read</th><th class=\"num\">written</th><th class=\"num\">reads</th><th class=\"num\">writes</th><th class=\"num\">read p99</th><th class=\"num\">write p99</th></tr>");
        for d in &r.block_devices {
            let p99 = |l: &Option<LatencySummary>| {
                l.as_ref()
                    .map_or_else(|| "–".into(), |l| human_duration_ns(l.p99_ns))
            };
            let _ = write!(
                body,
                "<tr><td>{} ({})</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                esc(d.name.as_deref().unwrap_or("?")),
                esc(&d.device),
                crate::units::human_bytes(d.read_bytes),
                crate::units::human_bytes(d.write_bytes),
                d.read_ops,
                d.write_ops,
                p99(&d.read_latency),
                p99(&d.write_latency)
            );
        }
        body.push_str("</table></section>");
    }

    if !r.events.is_empty()
        || !r.notes.is_empty()
        || !r.unavailable.is_empty()
        || r.probes.is_some()
    {
        body.push_str("<section><h2>Events and notes</h2><ul class=\"insights\">");
        if let Some(probes) = &r.probes {
            let _ = write!(
                body,
                "<li>Cleanroom's probes: {}.</li>",
                esc(&probes.line())
            );
        }
        for e in &r.events {
            let _ = write!(
                body,
                "<li><span class=\"muted\">{:.2}s {}</span> {}</li>",
                e.t_ns as f64 / 1e9,
                esc(e.kind.as_str()),
                esc(&e.message)
            );
        }
        for n in &r.notes {
            let _ = write!(body, "<li>{}</li>", esc(n));
        }
        if !r.unavailable.is_empty() {
            let _ = write!(
                body,
                "<li>Not measured on this host: {}.</li>",
                esc(&r.unavailable.join(", "))
            );
        }
        body.push_str("</ul></section>");
    }
    page(&format!("Cleanroom: {}", r.command_line()), &header, &body)
}

/// The page of a comparison.
pub fn comparison(c: &Comparison) -> String {
    let (class, text) = if c.regressions == 0 {
        ("pass", "NO REGRESSION".to_owned())
    } else {
        ("fail", format!("{} REGRESSION(S)", c.regressions))
    };
    let header = format!(
        "<h1><span class=\"badge {class}\">{text}</span>Cleanroom comparison</h1>\
         <div class=\"meta\">base <code>{}</code> ({}) → new <code>{}</code> ({}); {}</div>",
        esc(&c.base.label),
        esc(&c.base.started_at),
        esc(&c.new.label),
        esc(&c.new.started_at),
        esc(&c.tolerance_sources())
    );
    let mut body = String::from(
        "<section><h2>Every figure</h2><table><tr><th>metric</th><th class=\"num\">base</th><th class=\"num\">new</th><th class=\"num\">change</th><th class=\"num\">tolerance</th><th></th><th>verdict</th></tr>",
    );
    for ch in &c.changes {
        let rel = ch.relative.unwrap_or(0.0);
        let width = (rel.abs() * 100.0).min(100.0);
        let colour = if ch.regression {
            "#dc2626"
        } else if rel < 0.0 {
            "#16a34a"
        } else {
            "#9ca3af"
        };
        let _ = write!(
            body,
            "<tr><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td><svg width=\"120\" height=\"10\"><rect x=\"0\" y=\"1\" width=\"{:.1}\" height=\"8\" fill=\"{colour}\" rx=\"2\"/></svg></td>{}</tr>",
            esc(&ch.metric),
            esc(&ch.base_text),
            esc(&ch.new_text),
            ch.relative
                .map_or_else(|| "n/a".into(), |r| format!("{:+.1}%", r * 100.0)),
            esc(&ch.tolerance_text()),
            width * 1.2,
            if ch.regression {
                status_cell(Status::Fail)
            } else {
                status_cell(Status::Pass)
            }
        );
    }
    body.push_str("</table></section>");
    body.push_str(&profile_changes(c));
    page("Cleanroom comparison", &header, &body)
}

/// What moved between two CPU profiles: the functions whose own share changed most, and the
/// differential flame graph; empty when the runs had no profiles.
fn profile_changes(c: &Comparison) -> String {
    let mut out = String::new();
    if c.functions.is_empty() && c.stack_changes.is_empty() {
        return out;
    }
    out.push_str("<section><h2>CPU profile: what moved</h2>");
    if let Some(svg) = super::flame::differential_svg(
        &c.stack_changes,
        &format!("{} against {}", c.new.command, c.base.command),
        false,
    ) {
        out.push_str("<div class=\"flame\">");
        out.push_str(&super::flame::inline(&svg));
        out.push_str("</div><p class=\"small muted\">Each box as wide as the function's samples in the new run; red where its share grew against the base, blue where it shrank, the deeper the more.</p>");
    }
    if !c.functions.is_empty() {
        out.push_str("<p class=\"small muted\">Each function's own share of the profile's samples, base and new; the ones that grew first.</p><table><tr><th>function</th><th class=\"num\">base</th><th class=\"num\">new</th><th class=\"num\">change</th></tr>");
        for f in &c.functions {
            let _ = write!(
                out,
                "<tr><td><code>{}</code></td><td class=\"num\">{:.1}%</td><td class=\"num\">{:.1}%</td><td class=\"num\">{:+.1} points</td></tr>",
                esc(&crate::measure::processes::cut_to(&f.function, 120)),
                f.base_share * 100.0,
                f.new_share * 100.0,
                f.change_points()
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</section>");
    out
}

/// The page of a trend.
pub fn trend(t: &Trend) -> String {
    let header = format!(
        "<h1><span class=\"badge none\">TREND</span>{}</h1><div class=\"meta\">{} runs: {}</div>",
        esc(&t.name),
        t.runs.len(),
        t.runs
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut body = String::from(
        "<section><h2>Each figure across runs</h2><table><tr><th>metric</th><th class=\"num\">first</th><th>runs</th><th class=\"num\">last</th><th class=\"num\">slope per run</th><th>biggest change</th></tr>",
    );
    for l in &t.lines {
        let kind = crate::judge::compare::figure_kind(&l.metric);
        let max = l
            .values
            .iter()
            .map(|v| v.1)
            .fold(0.0, f64::max)
            .max(f64::MIN_POSITIVE);
        let n = l.values.len().max(2) as f64 - 1.0;
        let pts: Vec<String> = l
            .values
            .iter()
            .enumerate()
            .map(|(i, (_, v))| {
                format!(
                    "{:.1},{:.1}",
                    4.0 + i as f64 / n * 152.0,
                    26.0 - v / max * 22.0
                )
            })
            .collect();
        let _ = write!(
            body,
            "<tr><td><code>{}</code></td><td class=\"num\">{}</td><td><svg width=\"160\" height=\"30\"><polyline fill=\"none\" stroke=\"#2563eb\" stroke-width=\"1.5\" points=\"{}\"/></svg></td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&l.metric),
            esc(&kind.format(l.values.first().map_or(0.0, |v| v.1))),
            pts.join(" "),
            esc(&kind.format(l.values.last().map_or(0.0, |v| v.1))),
            esc(&kind.format_change(l.slope_per_run)),
            l.biggest_change.map_or_else(String::new, |(id, r)| format!(
                "run {id}: {:+.1}%",
                r * 100.0
            ))
        );
    }
    body.push_str("</table></section>");
    page(&format!("Cleanroom trend: {}", t.name), &header, &body)
}
