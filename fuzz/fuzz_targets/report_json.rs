//! A JSON report read back from a file (`cleanroom report FILE`, `compare`, `--baseline`), then
//! rendered in every form a person or a CI job reads.

#![no_main]

use cleanroom::{
    render::{self, Format},
    report::Report,
};
use libfuzzer_sys::fuzz_target;

cleanroom_fuzz::bounded_allocations!();

fuzz_target!(|bytes: &[u8]| {
    let Ok(report) = serde_json::from_slice::<Report>(bytes) else {
        return;
    };
    for format in [
        Format::Json,
        Format::Csv,
        Format::CsvTotals,
        Format::Markdown,
        Format::Junit,
        Format::Html,
        Format::Pdf,
    ] {
        let _ = render::report(&report, format);
    }
});
