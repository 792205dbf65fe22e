#!/usr/bin/env bash
# Runs every fuzz target of tests/fuzz.rs (proptest, stable Rust) for a million inputs each,
# in release mode. `scripts/fuzz.sh 10000` runs fewer; extra arguments go to the test binary
# (`scripts/fuzz.sh 1000000 config_text` runs one target). The test command runs a short pass
# of the same targets (1000 inputs each).
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-1000000}
shift || true
scripts/install-deps.sh
start=$(date +%s)
PROPTEST_CASES=$cases cargo test --release --locked --test fuzz -- --test-threads="$(nproc)" "$@"
echo "fuzz: $cases inputs per target, $(( $(date +%s) - start )) s, no panic" >&2
