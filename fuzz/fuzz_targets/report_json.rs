//! A JSON report read back from a file (`cleanroom report FILE`, `compare A B`, `--baseline`),
//! then rendered in every form a person or a CI job reads: on its own, compared with a real run
//! both ways, and as the latest run of a trend.

#![no_main]

use std::sync::LazyLock;

use cleanroom::{
    judge::compare,
    output::render::{self, Format},
    output::report::Report,
};
use libfuzzer_sys::fuzz_target;

cleanroom_fuzz::bounded_allocations!();

const FORMATS: [Format; 7] = [
    Format::Json,
    Format::Csv,
    Format::CsvTotals,
    Format::Markdown,
    Format::Junit,
    Format::Html,
    Format::Pdf,
];

/// A report of a real run (the demo's), the other side of each comparison.
static REAL: LazyLock<Report> = LazyLock::new(|| {
    serde_json::from_slice(include_bytes!("../corpus/report_json/demo.json"))
        .expect("the demo report parses")
});

fuzz_target!(|bytes: &[u8]| {
    let Ok(report) = serde_json::from_slice::<Report>(bytes) else {
        return;
    };
    for format in FORMATS {
        let _ = render::report(&report, format);
    }
    // Tolerances widened by a history the fuzzed run is part of.
    let tolerances = compare::Tolerances {
        history: compare::history_tolerances(&[REAL.clone(), report.clone(), REAL.clone()]),
        ..compare::Tolerances::default()
    };
    for c in [
        compare::compare(("real", &REAL), ("fuzzed", &report), &tolerances),
        compare::compare(("fuzzed", &report), ("real", &REAL), &tolerances),
    ] {
        for format in FORMATS {
            let _ = render::comparison(&c, format);
        }
    }
    let trend = compare::trend("fuzzed", &[(1, REAL.clone()), (2, report)]);
    for format in FORMATS {
        let _ = render::trend(&trend, format);
    }
});
