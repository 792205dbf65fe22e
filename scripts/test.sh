#!/usr/bin/env bash
# Installs what the tests need (redis-server; Express Gateway for the interoperability tests),
# then runs every test: unit tests and the integration tests, which start the real binary
# against real upstreams, a real redis-server and Express Gateway itself on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh redis-server
scripts/install-test-servers.sh
cargo test --locked --all-targets "$@"
