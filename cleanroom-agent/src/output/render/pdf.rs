//! PDF, made without a browser: the HTML report's content on A4 pages (verdict, SLO table,
//! insights, charts of the time series, latencies, totals), in the PDF base fonts.

use printpdf::{
    BuiltinFont, Color, IndirectFontRef, Line, Mm, PdfDocument, PdfDocumentReference,
    PdfLayerReference, Point, Rgb,
};

use crate::{
    judge::compare::{Comparison, Trend},
    judge::verdict::{Status, Verdict},
    measure::collect::Total,
    metric::{Latency, Metric, human},
    output::report::Report,
    units::human_duration_ns,
};

use super::{
    RenderError,
    chart::{CHARTS, ChartSpec, Frame, extent, plotted},
};

const W: f64 = 210.0;
const H: f64 = 297.0;
const MARGIN: f64 = 16.0;

/// The base fonts speak WinAnsi; keep to ASCII and say the rest in words.
fn ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            'µ' => out.push('u'),
            '≤' => out.push_str("<="),
            '≥' => out.push_str(">="),
            '→' => out.push_str("->"),
            '–' | '—' | '·' => out.push('-'),
            '×' => out.push('x'),
            c if c.is_ascii() => out.push(c),
            _ => out.push('?'),
        }
    }
    out
}

fn rgb(hex: &str) -> Color {
    let v = u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap_or(0);
    let c = |shift: u32| ((v >> shift) & 0xff) as f32 / 255.0;
    Color::Rgb(Rgb::new(c(16), c(8), c(0), None))
}

/// A document being written top to bottom, page after page.
struct Writer {
    doc: PdfDocumentReference,
    layer: PdfLayerReference,
    font: IndirectFontRef,
    bold: IndirectFontRef,
    y: f64,
}

impl Writer {
    fn new(title: &str) -> Result<Self, RenderError> {
        let (doc, page, layer) = PdfDocument::new(ascii(title), Mm(W as f32), Mm(H as f32), "main");
        let font = doc
            .add_builtin_font(BuiltinFont::Helvetica)
            .map_err(|e| RenderError::Pdf(e.to_string()))?;
        let bold = doc
            .add_builtin_font(BuiltinFont::HelveticaBold)
            .map_err(|e| RenderError::Pdf(e.to_string()))?;
        let layer = doc.get_page(page).get_layer(layer);
        Ok(Self {
            doc,
            layer,
            font,
            bold,
            y: H - MARGIN,
        })
    }

    fn new_page(&mut self) {
        let (page, layer) = self.doc.add_page(Mm(W as f32), Mm(H as f32), "main");
        self.layer = self.doc.get_page(page).get_layer(layer);
        self.y = H - MARGIN;
    }

    /// Makes room for `height` mm, starting a page if needed.
    fn room(&mut self, height: f64) {
        if self.y - height < MARGIN {
            self.new_page();
        }
    }

    fn text_at(&self, text: &str, size: f64, x: f64, y: f64, bold: bool, colour: &str) {
        self.layer.set_fill_color(rgb(colour));
        let font = if bold { &self.bold } else { &self.font };
        self.layer
            .use_text(ascii(text), size as f32, Mm(x as f32), Mm(y as f32), font);
    }

    fn line(&mut self, text: &str, size: f64, bold: bool) {
        let height = size * 0.45;
        self.room(height);
        self.y -= height;
        self.text_at(text, size, MARGIN, self.y, bold, "#111827");
    }

    /// Words wrapped to the page width.
    fn paragraph(&mut self, text: &str, size: f64) {
        let per_line = ((W - 2.0 * MARGIN) / (size * 0.19)) as usize;
        let mut current = String::new();
        for word in text.split_whitespace() {
            if current.len() + word.len() + 1 > per_line && !current.is_empty() {
                self.line(&current, size, false);
                current.clear();
            }
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(word);
        }
        if !current.is_empty() {
            self.line(&current, size, false);
        }
    }

    fn gap(&mut self, mm: f64) {
        self.y -= mm;
    }

    /// A table row: cells at column positions (mm from the left margin).
    fn row(&mut self, cells: &[(&str, f64)], bold: bool, colour: &str) {
        self.room(5.0);
        self.y -= 4.6;
        for (text, x) in cells {
            self.text_at(text, 8.5, MARGIN + x, self.y, bold, colour);
        }
    }

    fn stroke(&self, points: &[(f64, f64)], colour: &str, width: f64) {
        self.layer.set_outline_color(rgb(colour));
        self.layer.set_outline_thickness(width as f32);
        self.layer.add_line(Line {
            points: points
                .iter()
                .map(|(x, y)| (Point::new(Mm(*x as f32), Mm(*y as f32)), false))
                .collect(),
            is_closed: false,
        });
    }

    fn chart(&mut self, r: &Report, spec: &ChartSpec) -> bool {
        let series = plotted(r, spec);
        if series.is_empty() {
            return false;
        }
        let height = 52.0;
        self.room(height + 8.0);
        let legend: Vec<String> = series.iter().map(|(l, _, _)| (*l).to_owned()).collect();
        self.line(
            &format!("{} ({})", spec.title, legend.join(", ")),
            10.0,
            true,
        );
        let (x_max, y_max) = extent(r, spec);
        let top = self.y - 3.0;
        let f = Frame {
            left: MARGIN + 22.0,
            right: W - MARGIN,
            top,
            bottom: top - height + 10.0,
            x_max,
            y_max,
        };
        for i in 0..=4 {
            let v = y_max * f64::from(i) / 4.0;
            let (_, y) = f.map(0.0, v);
            self.stroke(&[(f.left, y), (f.right, y)], "#e5e7eb", 0.5);
            self.text_at(&spec.kind.format(v), 6.5, MARGIN, y - 1.0, false, "#6b7280");
        }
        self.text_at(
            &format!("0 s .. {:.1} s", x_max),
            6.5,
            f.left,
            f.bottom - 5.0,
            false,
            "#6b7280",
        );
        for (_, colour, pts) in &series {
            let mapped: Vec<(f64, f64)> = pts.iter().map(|(x, y)| f.map(*x, *y)).collect();
            if mapped.len() == 1 {
                let (x, y) = mapped[0];
                self.stroke(&[(x - 1.0, y), (x + 1.0, y)], colour, 2.0);
            } else {
                self.stroke(&mapped, colour, 1.2);
            }
        }
        for a in r
            .anomalies
            .iter()
            .filter(|a| spec.lines.iter().any(|(s, _, _)| *s == a.metric))
        {
            let (x, y) = f.map(a.t_ns as f64 / 1e9, a.value);
            self.stroke(&[(x - 1.5, y - 1.5), (x + 1.5, y + 1.5)], "#dc2626", 1.0);
            self.stroke(&[(x - 1.5, y + 1.5), (x + 1.5, y - 1.5)], "#dc2626", 1.0);
        }
        self.stroke(&[(f.left, f.bottom), (f.right, f.bottom)], "#9ca3af", 0.6);
        self.y = f.bottom - 8.0;
        true
    }

    fn finish(self) -> Result<Vec<u8>, RenderError> {
        self.doc
            .save_to_bytes()
            .map_err(|e| RenderError::Pdf(e.to_string()))
    }
}

fn status_text(s: Status) -> (&'static str, &'static str) {
    match s {
        Status::Pass => ("pass", "#15803d"),
        Status::Fail => ("FAIL", "#b91c1c"),
        Status::Unmeasured => ("unmeasured", "#b45309"),
        Status::NotApplicable => ("n/a", "#6b7280"),
    }
}

/// The report of one run.
pub fn report(r: &Report) -> Result<Vec<u8>, RenderError> {
    let mut w = Writer::new(&format!("Cleanroom: {}", r.command_line()))?;
    let verdict = match r.verdict {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
        Verdict::None | Verdict::Other(_) => "MEASURED",
    };
    w.line(&format!("Cleanroom report - {verdict}"), 18.0, true);
    w.gap(2.0);
    w.paragraph(
        &format!(
            "{} - exit code {} after {}, started {} on {} ({}, {} CPUs){}",
            r.command_line(),
            r.exit_code,
            human_duration_ns(r.wall_time_ns),
            r.started_at,
            r.host.hostname,
            r.host.kernel,
            r.host.cpus,
            r.host
                .git_commit
                .as_ref()
                .map(|c| format!(", commit {}", &c[..c.len().min(12)]))
                .unwrap_or_default()
        ),
        9.0,
    );
    w.gap(3.0);
    if !r.slos.is_empty() || !r.thresholds.is_empty() {
        w.line("SLOs and thresholds", 12.0, true);
        w.row(
            &[
                ("name", 0.0),
                ("objective", 62.0),
                ("measured", 120.0),
                ("verdict", 158.0),
            ],
            true,
            "#6b7280",
        );
        for s in &r.slos {
            let (t, c) = status_text(s.status);
            w.row(
                &[
                    (&s.name, 0.0),
                    (&s.objective, 62.0),
                    (&s.measured_text, 120.0),
                ],
                false,
                "#111827",
            );
            w.text_at(t, 8.5, MARGIN + 158.0, w.y, true, c);
        }
        for th in &r.thresholds {
            let (t, c) = status_text(th.status);
            let name = th
                .name
                .strip_prefix("performance_monitoring.")
                .unwrap_or(&th.name);
            let objective = format!("{} <= {}", th.metric, th.limit_text);
            w.row(
                &[(name, 0.0), (&objective, 62.0), (&th.peak_text, 120.0)],
                false,
                "#111827",
            );
            w.text_at(t, 8.5, MARGIN + 158.0, w.y, true, c);
        }
        w.gap(4.0);
    }
    if !r.insights.is_empty() {
        w.line("Insights", 12.0, true);
        for i in &r.insights {
            w.paragraph(&format!("- {}", i.text), 9.0);
        }
        w.gap(4.0);
    }
    w.line("Totals", 12.0, true);
    for m in Metric::ALL {
        let v = match r.totals.get(m.name()) {
            Some(Total::Value(v)) => human(*v, m.unit()),
            _ => "unavailable".into(),
        };
        w.row(&[(m.name(), 0.0), (&v, 62.0)], false, "#111827");
    }
    w.gap(4.0);
    w.line("Latency", 12.0, true);
    w.row(
        &[
            ("latency", 0.0),
            ("count", 62.0),
            ("p50", 85.0),
            ("p90", 108.0),
            ("p99", 131.0),
            ("max", 154.0),
        ],
        true,
        "#6b7280",
    );
    for l in Latency::ALL {
        if let Some(Total::Latency(s)) = r.totals.get(l.name()) {
            let cells = [
                l.name().to_owned(),
                s.count.to_string(),
                human_duration_ns(s.p50_ns),
                human_duration_ns(s.p90_ns),
                human_duration_ns(s.p99_ns),
                human_duration_ns(s.max_ns),
            ];
            let xs = [0.0, 62.0, 85.0, 108.0, 131.0, 154.0];
            let row: Vec<(&str, f64)> = cells.iter().map(String::as_str).zip(xs).collect();
            w.row(&row, false, "#111827");
        }
    }
    w.paragraph("Percentiles are the upper bound of their histogram bucket: at most 12.5% above the true value.", 7.5);
    w.new_page();
    w.line("Over time", 14.0, true);
    w.gap(2.0);
    let mut any = false;
    for spec in CHARTS {
        any |= w.chart(r, spec);
    }
    if !any {
        w.paragraph(
            "No time series: the run was shorter than one interval, or monitoring was off.",
            9.0,
        );
    }
    if !r.anomalies.is_empty() {
        let (listed, more) = r.listed_anomalies();
        w.paragraph(
            &format!(
                "{} anomalous interval(s) in all, crossed in red where charted; the strongest:",
                r.anomaly_count()
            ),
            8.0,
        );
        for line in listed {
            w.paragraph(&format!("- {line}"), 8.0);
        }
        if more > 0 {
            w.paragraph(&format!("... and {more} more"), 8.0);
        }
        w.paragraph(&format!("Method: {}.", r.anomaly_method), 8.0);
    }
    if !r.events.is_empty() || !r.notes.is_empty() {
        w.gap(3.0);
        w.line("Events and notes", 12.0, true);
        for e in &r.events {
            w.paragraph(
                &format!("{:.2}s {}: {}", e.t_ns as f64 / 1e9, e.kind, e.message),
                8.5,
            );
        }
        for n in &r.notes {
            w.paragraph(n, 8.5);
        }
    }
    w.finish()
}

/// A comparison table.
pub fn comparison(c: &Comparison) -> Result<Vec<u8>, RenderError> {
    let mut w = Writer::new("Cleanroom comparison")?;
    w.line(
        &if c.regressions == 0 {
            "Cleanroom comparison - no regression".to_owned()
        } else {
            format!("Cleanroom comparison - {} regression(s)", c.regressions)
        },
        16.0,
        true,
    );
    w.paragraph(
        &format!(
            "base {} ({}) -> new {} ({})",
            c.base.label, c.base.started_at, c.new.label, c.new.started_at
        ),
        9.0,
    );
    w.gap(3.0);
    w.row(
        &[
            ("metric", 0.0),
            ("base", 70.0),
            ("new", 100.0),
            ("change", 130.0),
            ("verdict", 158.0),
        ],
        true,
        "#6b7280",
    );
    for ch in &c.changes {
        let rel = ch
            .relative
            .map_or_else(|| "n/a".into(), |r| format!("{:+.1}%", r * 100.0));
        let (t, colour) = if ch.regression {
            ("REGRESSION", "#b91c1c")
        } else {
            ("ok", "#15803d")
        };
        w.row(
            &[
                (&ch.metric, 0.0),
                (&ch.base_text, 70.0),
                (&ch.new_text, 100.0),
                (&rel, 130.0),
            ],
            false,
            "#111827",
        );
        w.text_at(t, 8.5, MARGIN + 158.0, w.y, true, colour);
    }
    w.finish()
}

/// A trend table.
pub fn trend(t: &Trend) -> Result<Vec<u8>, RenderError> {
    let mut w = Writer::new("Cleanroom trend")?;
    w.line(
        &format!("Cleanroom trend - {} ({} runs)", t.name, t.runs.len()),
        16.0,
        true,
    );
    w.gap(3.0);
    w.row(
        &[
            ("metric", 0.0),
            ("first", 70.0),
            ("last", 100.0),
            ("slope/run", 130.0),
        ],
        true,
        "#6b7280",
    );
    for l in &t.lines {
        let first = l.values.first().map_or(0.0, |v| v.1);
        let last = l.values.last().map_or(0.0, |v| v.1);
        let kind = crate::judge::compare::figure_kind(&l.metric);
        let cells = [
            l.metric.clone(),
            kind.format(first),
            kind.format(last),
            kind.format_change(l.slope_per_run),
        ];
        let row: Vec<(&str, f64)> = cells
            .iter()
            .map(String::as_str)
            .zip([0.0, 70.0, 100.0, 130.0])
            .collect();
        w.row(&row, false, "#111827");
    }
    w.finish()
}
