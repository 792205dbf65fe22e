#!/usr/bin/env bash
# Installs what the tests need, then runs every test: unit tests and the integration tests,
# which start the real binary against real upstreams on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh redis-server
cargo test --locked --all-targets "$@"
