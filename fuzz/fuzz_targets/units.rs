//! Durations, sizes and percentages, as written in configs, SLOs and on the command line.

#![no_main]

use cleanroom::units;
use libfuzzer_sys::fuzz_target;

cleanroom_fuzz::bounded_allocations!();

fuzz_target!(|text: &str| {
    let _ = units::parse_duration(text);
    let _ = units::parse_bytes(text);
    let _ = units::parse_percent(text);
});
