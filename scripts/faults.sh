#!/usr/bin/env bash
# The long fault pass: the tests that stop things under load, run ROUNDS times over (default 20,
# about 15 minutes on 2 cores), each round with fresh processes — Redis stopped and killed, an
# upstream killed and brought back, the gateway terminated (tests/faults.rs); upstreams dying,
# ejected and timing out (tests/upstreams.rs); reloads and a binary upgrade under load
# (tests/lifecycle.rs); the tile cache's upstream frozen and killed under load, a refresh slower
# than the cache lock (tests/cache, `stale::`). The test command runs each of them once.
#
#   scripts/faults.sh        # 20 rounds
#   scripts/faults.sh 100    # more
#
# Stops at the first round that fails, with that round's output.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-20}
scripts/install-deps.sh redis-server curl
scripts/install-test-servers.sh
# Each entry: a test binary and a filter ("" = all of it).
runs=("faults:" "upstreams:" "lifecycle:" "cache:stale::")
cargo test --locked --no-run --test faults --test upstreams --test lifecycle --test cache
start=$(date +%s)
for round in $(seq 1 "$rounds"); do
  for run in "${runs[@]}"; do
    binary=${run%%:*} filter=${run#*:}
    if ! out=$(cargo test --locked --test "$binary" -- ${filter:+"$filter"} 2>&1); then
      printf '%s\n' "$out"
      echo "faults: round $round of $rounds failed in tests/$binary ($(($(date +%s) - start)) s)" >&2
      exit 1
    fi
  done
  echo "faults: round $round of $rounds passed ($(($(date +%s) - start)) s)" >&2
done
echo "faults: $rounds rounds, every fault test passed in each" >&2
