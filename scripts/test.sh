#!/usr/bin/env bash
# Installs what the tests need (redis-server, Prometheus, Chromium and curl from Debian;
# Express Gateway, OpenLayers and playwright-core from npm; moto, PyJWT, websockets and hypercorn
# from PyPI), then runs every test: unit tests, the fuzz targets' short pass, and the
# integration tests, which start the real binary against real upstreams, a real redis-server,
# Express Gateway itself, a real Prometheus and a real browser on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh redis-server prometheus curl chromium
scripts/install-test-servers.sh
cargo test --locked --all-targets "$@"
# The container image's build, as CI runs it (it says so and skips where no Docker engine runs).
deploy/build-image.sh
# The load benchmark's smoke run (a few seconds, tollgate only), so the benchmark cannot rot.
if [[ -f ../shared/bench/peers/lib.sh || -n ${PEERS_DIR:-} ]]; then
  SMOKE=1 benches/load/run.sh
else
  echo "skipping the load benchmark smoke run: the benchmark peers (../shared/bench/peers) are not here" >&2
fi
