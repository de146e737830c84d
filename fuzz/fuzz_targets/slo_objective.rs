//! SLO objectives (`METRIC OP VALUE`), as written in `[[slos]]` and `--slo` files.

#![no_main]

use cleanroom::judge::objective::Objective;
use libfuzzer_sys::fuzz_target;

cleanroom_fuzz::bounded_allocations!();

fuzz_target!(|text: &str| {
    let _ = Objective::parse(text);
});
