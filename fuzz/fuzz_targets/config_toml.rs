//! The TOML config (`--config`, `--slo`): every section, `[[slos]]` and their objectives
//! included.

#![no_main]

use cleanroom::config::CleanroomConfig;
use libfuzzer_sys::fuzz_target;

cleanroom_fuzz::bounded_allocations!();

fuzz_target!(|text: &str| {
    let _ = CleanroomConfig::from_toml(text, "fuzz.toml");
});
