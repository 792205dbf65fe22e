#!/usr/bin/env bash
# Builds tollgate (release) and serves the shipped conf/ — or the directory given with
# --config — with the embedded store: no Redis needed. Extra arguments go to `tollgate serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked
exec target/release/tollgate serve "$@"
