#!/bin/sh
# A CI script in phases. `cleanroom run` measures the whole of it; each `cleanroom mark NAME`
# starts a phase (ending the one before), which the report shows with its own wall time and
# totals, and which an SLO with `phase = "NAME"` judges (examples/slo.toml):
#
#   cleanroom run --slo examples/slo.toml --report report.html -- examples/ci-phases.sh
set -eu

cleanroom mark first_build
cargo build --release

# An edit, then the build again: what a developer waits for.
touch src/main.rs 2>/dev/null || true
cleanroom mark incremental_build
cargo build --release

cleanroom mark test
cargo test --release
