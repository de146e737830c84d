//! Every form a report leaves in, rendered from the JSON report (the source of truth), so any
//! saved run can be rendered again: CSV, Markdown, JUnit XML, HTML, PDF. Comparisons and trends
//! render the same way.

mod chart;
mod csv;
pub mod flame;
pub(crate) mod html;
mod junit;
mod markdown;
mod pdf;

use std::path::Path;

use crate::{
    judge::compare::{Comparison, Trend},
    output::report::Report,
    profile::ProfileKind,
};

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The JSON report (schema version 1).
    Json,
    /// The time series, one row per interval.
    Csv,
    /// The totals, one row per figure.
    CsvTotals,
    /// A compact summary for a CI job page.
    Markdown,
    /// JUnit XML: each SLO and threshold a test case.
    Junit,
    /// A self-contained page with charts.
    Html,
    /// The same content on real pages.
    Pdf,
    /// A profile's stacks, folded (`frames count` lines), for flame graph tools.
    Folded(ProfileKind),
    /// A profile as a flame graph (SVG).
    FlameSvg(ProfileKind),
}

/// A format that could not be told or produced.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Unknown format name or extension.
    #[error(
        "unknown report format `{0}`; use json, csv, csv-totals, md (markdown), xml (junit), html, pdf, folded (the profile's stacks) or svg (its flame graph)"
    )]
    UnknownFormat(String),
    /// A format only a run's report has.
    #[error("{0} are only written for a run (`cleanroom run --profile --report FILE.folded`)")]
    OnlyForRuns(&'static str),
    /// A flame graph of a run without that profile, or with no samples in it.
    #[error("no flame graph: the run has no {0} samples (take one with `cleanroom run --profile`)")]
    NoProfile(&'static str),
    /// The PDF library failed.
    #[error("rendering PDF: {0}")]
    Pdf(String),
    /// Writing failed.
    #[error(transparent)]
    Write(#[from] crate::files::FileError),
}

impl Format {
    /// By name: `json`, `csv`, `csv-totals`, `md`/`markdown`, `xml`/`junit`, `html`, `pdf`, `folded`, `svg`.
    pub fn from_name(name: &str) -> Result<Self, RenderError> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "json" => Format::Json,
            "csv" => Format::Csv,
            "csv-totals" | "totals.csv" | "totals" => Format::CsvTotals,
            "md" | "markdown" => Format::Markdown,
            "xml" | "junit" => Format::Junit,
            "html" | "htm" => Format::Html,
            "pdf" => Format::Pdf,
            "folded" => Format::Folded(ProfileKind::Cpu),
            "svg" => Format::FlameSvg(ProfileKind::Cpu),
            other => return Err(RenderError::UnknownFormat(other.to_owned())),
        })
    }

    /// By file name: `.json`, `.csv` (`.totals.csv` for totals), `.md`, `.xml`, `.html`, `.pdf`,
    /// `.folded`, `.svg` (a flame graph: of the off-CPU profile when the name says `offcpu`,
    /// of the faults' for `faults` or `memory`, of block I/O's for `block` or `disk`, else of
    /// the CPU's).
    pub fn from_path(path: &Path) -> Result<Self, RenderError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if name.ends_with(".totals.csv") {
            return Ok(Format::CsvTotals);
        }
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        let format = Self::from_name(&ext)
            .map_err(|_| RenderError::UnknownFormat(format!("{} (from {name})", ext)))?;
        Ok(match format {
            Format::Folded(_) => Format::Folded(ProfileKind::from_file_name(&name)),
            Format::FlameSvg(_) => Format::FlameSvg(ProfileKind::from_file_name(&name)),
            other => other,
        })
    }
}

/// Renders a run report.
pub fn report(report: &Report, format: Format) -> Result<Vec<u8>, RenderError> {
    Ok(match format {
        Format::Json => pretty_json(report),
        Format::Csv => csv::series(report).into_bytes(),
        Format::CsvTotals => csv::totals(report).into_bytes(),
        Format::Markdown => markdown::report(report).into_bytes(),
        Format::Junit => junit::report(report).into_bytes(),
        Format::Html => html::report(report).into_bytes(),
        Format::Pdf => pdf::report(report)?,
        Format::Folded(kind) => report
            .profile
            .as_ref()
            .and_then(|p| p.view(kind))
            .map(|v| v.folded())
            .unwrap_or_default()
            .into_bytes(),
        Format::FlameSvg(kind) => report
            .profile
            .as_ref()
            .and_then(|p| {
                let view = p.view(kind)?;
                flame::svg(
                    &view,
                    &format!("{} of `{}`", kind.title(), report.command_line()),
                    &p.describe(kind),
                    true,
                )
            })
            .ok_or(RenderError::NoProfile(kind.title()))?
            .into_bytes(),
    })
}

/// Renders a comparison of two runs.
pub fn comparison(c: &Comparison, format: Format) -> Result<Vec<u8>, RenderError> {
    Ok(match format {
        Format::Json => pretty_json(c),
        Format::Csv | Format::CsvTotals => csv::comparison(c).into_bytes(),
        Format::Markdown => markdown::comparison(c).into_bytes(),
        Format::Junit => junit::comparison(c).into_bytes(),
        Format::Html => html::comparison(c).into_bytes(),
        Format::Pdf => pdf::comparison(c)?,
        Format::Folded(ProfileKind::Cpu) => {
            flame::differential_folded(&c.stack_changes).into_bytes()
        }
        Format::FlameSvg(ProfileKind::Cpu) => flame::differential_svg(
            &c.stack_changes,
            &format!("CPU profile: {} against {}", c.new.command, c.base.command),
            true,
        )
        .ok_or(RenderError::NoProfile("CPU profile"))?
        .into_bytes(),
        Format::Folded(_) | Format::FlameSvg(_) => {
            return Err(RenderError::OnlyForRuns(
                "off-CPU, fault and block flame graphs",
            ));
        }
    })
}

/// Renders a trend over runs.
pub fn trend(t: &Trend, format: Format) -> Result<Vec<u8>, RenderError> {
    Ok(match format {
        Format::Json => pretty_json(t),
        Format::Csv | Format::CsvTotals => csv::trend(t).into_bytes(),
        Format::Markdown | Format::Junit => markdown::trend(t).into_bytes(),
        Format::Html => html::trend(t).into_bytes(),
        Format::Pdf => pdf::trend(t)?,
        Format::Folded(_) => return Err(RenderError::OnlyForRuns("folded stacks")),
        Format::FlameSvg(_) => return Err(RenderError::OnlyForRuns("flame graphs")),
    })
}

/// The JSON report, as `--report x.json` writes it.
pub fn report_json(report: &Report) -> Vec<u8> {
    pretty_json(report)
}

fn pretty_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut text = serde_json::to_vec_pretty(v).expect("reports always serialize");
    text.push(b'\n');
    text
}

/// Writes `bytes` to `path` atomically (a reader never sees half a file, a planted link is
/// replaced, never followed), mode 0644 less the umask.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), RenderError> {
    Ok(crate::files::write_atomic(
        path,
        bytes,
        crate::files::REPORT_MODE,
    )?)
}

/// Unit of a series name, for headers and axes.
pub fn series_unit(name: &str) -> &'static str {
    if name == "cpu_percent" {
        "%"
    } else if name.ends_with("_bytes_per_sec") {
        "B/s"
    } else if name.ends_with("_per_sec") {
        "1/s"
    } else if name.ends_with("_bytes") {
        "B"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_name_and_extension() {
        assert_eq!(
            Format::from_path(Path::new("r.json")).unwrap(),
            Format::Json
        );
        assert_eq!(
            Format::from_path(Path::new("out/r.CSV")).unwrap(),
            Format::Csv
        );
        assert_eq!(
            Format::from_path(Path::new("r.totals.csv")).unwrap(),
            Format::CsvTotals
        );
        assert_eq!(
            Format::from_path(Path::new("summary.md")).unwrap(),
            Format::Markdown
        );
        assert_eq!(
            Format::from_path(Path::new("junit.xml")).unwrap(),
            Format::Junit
        );
        assert_eq!(
            Format::from_path(Path::new("r.html")).unwrap(),
            Format::Html
        );
        assert_eq!(Format::from_path(Path::new("r.pdf")).unwrap(), Format::Pdf);
        assert!(Format::from_path(Path::new("r.docx")).is_err());
        assert!(Format::from_path(Path::new("noext")).is_err());
        assert_eq!(Format::from_name("junit").unwrap(), Format::Junit);
    }
}
