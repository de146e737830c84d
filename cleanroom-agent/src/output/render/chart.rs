//! Chart geometry shared by the HTML (SVG) and PDF renderers: which series go in which chart,
//! axis ranges with round numbers, and points mapped to a plot area.

use crate::{metric::Kind, output::report::Report};

/// A chart of the time series.
pub struct ChartSpec {
    /// Title.
    pub title: &'static str,
    /// Unit of the y axis.
    pub kind: Kind,
    /// (series name, label, colour as `#rrggbb`).
    pub lines: &'static [(&'static str, &'static str, &'static str)],
}

/// The charts of a report, in order.
pub const CHARTS: &[ChartSpec] = &[
    ChartSpec {
        title: "CPU (% of one core)",
        kind: Kind::Percent,
        lines: &[("cpu_percent", "CPU", "#2563eb")],
    },
    ChartSpec {
        title: "Memory charged",
        kind: Kind::Bytes,
        lines: &[("memory_current_bytes", "memory", "#7c3aed")],
    },
    ChartSpec {
        title: "Block I/O",
        kind: Kind::BytesPerSec,
        lines: &[
            ("block_read_bytes_per_sec", "read", "#059669"),
            ("block_write_bytes_per_sec", "write", "#d97706"),
        ],
    },
    ChartSpec {
        title: "Network",
        kind: Kind::BytesPerSec,
        lines: &[
            ("net_rx_bytes_per_sec", "received", "#0891b2"),
            ("net_tx_bytes_per_sec", "sent", "#db2777"),
        ],
    },
    ChartSpec {
        title: "Page faults",
        kind: Kind::PerSec,
        lines: &[
            ("page_faults_user_per_sec", "user", "#4b5563"),
            ("page_faults_kernel_per_sec", "kernel", "#dc2626"),
        ],
    },
];

/// A line of a chart: label, colour, and (seconds, value) points.
pub type Plotted<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// The lines of `spec` that have data in `report`.
pub fn plotted<'a>(report: &Report, spec: &'a ChartSpec) -> Vec<Plotted<'a>> {
    spec.lines
        .iter()
        .map(|(s, label, colour)| (*label, *colour, points(report, s)))
        .filter(|(_, _, p)| !p.is_empty())
        .collect()
}

/// A series as (seconds since start, value).
pub fn points(report: &Report, series: &str) -> Vec<(f64, f64)> {
    report
        .series
        .iter()
        .filter_map(|p| Some((p.t_ns as f64 / 1e9, *p.values.get(series)?)))
        .collect()
}

/// A round upper bound for an axis: 1, 2, 2.5 or 5 times a power of ten, at least `max`.
pub fn nice_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * p)
}

/// Maps data to a plot box: x in [0, x_max] → [left, right], y in [0, y_max] → [bottom, top].
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    /// Left edge.
    pub left: f64,
    /// Right edge.
    pub right: f64,
    /// Top edge (smaller y in SVG, larger in PDF).
    pub top: f64,
    /// Bottom edge.
    pub bottom: f64,
    /// Data x range end (seconds).
    pub x_max: f64,
    /// Data y range end.
    pub y_max: f64,
}

impl Frame {
    /// Where `(x, y)` goes.
    pub fn map(&self, x: f64, y: f64) -> (f64, f64) {
        let fx = if self.x_max > 0.0 {
            x / self.x_max
        } else {
            0.0
        };
        let fy = if self.y_max > 0.0 {
            y / self.y_max
        } else {
            0.0
        };
        (
            self.left + fx * (self.right - self.left),
            self.bottom + fy.clamp(0.0, 1.0) * (self.top - self.bottom),
        )
    }
}

/// Maximum x and y over the lines of a chart (y rounded up).
pub fn extent(report: &Report, spec: &ChartSpec) -> (f64, f64) {
    let mut x_max: f64 = report.wall_time_ns as f64 / 1e9;
    let mut y_max: f64 = 0.0;
    for (series, _, _) in spec.lines {
        for (x, y) in points(report, series) {
            x_max = x_max.max(x);
            y_max = y_max.max(y);
        }
    }
    let y_max = match spec.kind {
        Kind::Bytes | Kind::BytesPerSec => nice_max_binary(y_max),
        _ => nice_max(y_max),
    };
    (x_max.max(0.001), y_max)
}

/// A round upper bound for a byte axis: a power of two, so quarter ticks are round too.
pub fn nice_max_binary(max: f64) -> f64 {
    if max <= 1.0 || !max.is_finite() {
        return 1024.0;
    }
    2f64.powf(max.log2().ceil())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_maxima_are_round_and_cover() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(180.0), 200.0);
        assert_eq!(nice_max(210.0), 250.0);
        assert_eq!(nice_max(1e6), 1e6);
        assert_eq!(nice_max_binary(700_000.0), 1_048_576.0);
        assert_eq!(nice_max_binary(0.0), 1024.0);
        let f = Frame {
            left: 0.0,
            right: 100.0,
            top: 0.0,
            bottom: 50.0,
            x_max: 10.0,
            y_max: 2.0,
        };
        assert_eq!(f.map(5.0, 1.0), (50.0, 25.0));
    }
}
