#!/usr/bin/env bash
# A scan of distinct tiles through the tile cache, against its memory budget: every request a
# 20 KiB tile never asked for before (cold.lua) through Kargo's pipeline with the cache
# (benches/load/kargo-cache, release build, in front of the peers' upstream), in rounds of wrk
# until TILES were asked for. After each round: the gateway's RSS, what the memory tier holds,
# its evictions. At the end the peak RSS (VmHWM) against the budget.
#
#   benches/load/scan.sh                                  # a million tiles, 64 MiB budget (~1 min)
#   TILES=200000 BUDGET_MIB=256 benches/load/scan.sh
#   BIN=/path/to/another/tollgate benches/load/scan.sh    # another build (default: target/release)
#
# Fails (exit 1) when a request is not answered 200, or when the peak RSS passes the budget
# plus OVERHEAD_MIB (default 64: the gateway's own ~25 MB at rest, and what the allocator keeps
# of the blocks evictions free). Results go to target/bench/scan-<timestamp>/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PEERS_DIR="${PEERS_DIR:-$ROOT/../shared/bench/peers}"
: "${TILES:=1000000}" "${BUDGET_MIB:=64}" "${OVERHEAD_MIB:=64}" "${ROUND:=5}" "${CONNS:=64}"
: "${UPSTREAM_PORT:=18080}" "${PORT:=18402}"
# shellcheck source=benches/load/setup.sh
. "$ROOT/benches/load/setup.sh"
bench_init scan
bench_setup nginx wrk curl python3

RUST_LOG=warn TOLLGATE_BENCH_PORT=$PORT TOLLGATE_BENCH_ADMIN_PORT=$((PORT + 1000)) UPSTREAM_PORT=$UPSTREAM_PORT \
  "${BIN:-$ROOT/target/release/tollgate}" serve --config "$ROOT/benches/load/kargo-cache" --data-dir "$OUT/data" \
  --populate "$ROOT/benches/load/kargo/consumers.config.json" --cache-memory "${BUDGET_MIB}MiB" \
  >"$OUT/tollgate.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; bench_cleanup' EXIT
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$PORT/wmts/warm.png?jwt=$TOKEN" && break; sleep 0.2; done
kb() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$PID/status"; }
cache() { curl -fs "http://127.0.0.1:$((PORT + 1000))/tollgate/cache"; }
field() { python3 -c "import json,sys; m=json.load(sys.stdin)['memory']; print(m['$1'])"; }

at_rest=$(kb VmRSS)
say "budget ${BUDGET_MIB} MiB, ${TILES} distinct tiles; RSS at rest $((at_rest / 1024)) MiB"
printf '%10s %9s %9s %10s %10s\n' tiles req/s rss_MiB stored_MiB evictions | tee "$OUT/summary.txt"
done_tiles=0
while ((done_tiles < TILES)); do
  wrk -t1 -c"$CONNS" -d"${ROUND}s" -s "$ROOT/benches/load/cold.lua" "http://127.0.0.1:$PORT" -- "?jwt=$TOKEN" >"$OUT/wrk.txt"
  cat "$OUT/wrk.txt" >>"$OUT/wrk-all.txt"
  if grep -q "Non-2xx\|Socket errors" "$OUT/wrk.txt"; then
    say "requests failed:"; cat "$OUT/wrk.txt" >&2; exit 1
  fi
  n=$(awk '/requests in/ {print $1}' "$OUT/wrk.txt")
  rps=$(awk '/Requests\/sec/ {printf "%d", $2}' "$OUT/wrk.txt")
  done_tiles=$((done_tiles + n))
  c=$(cache)
  printf '%10d %9d %9d %10d %10d\n' "$done_tiles" "$rps" $(($(kb VmRSS) / 1024)) \
    $(($(field bytes <<<"$c") >> 20)) "$(field evictions <<<"$c")" | tee -a "$OUT/summary.txt"
done
peak=$(kb VmHWM)
limit=$(((BUDGET_MIB + OVERHEAD_MIB) * 1024))
verdict="within"
((peak <= limit)) || verdict="PAST"
printf 'peak RSS %d MiB for a %d MiB budget: %s the budget + %d MiB (%d MiB at rest)\n' \
  $((peak / 1024)) "$BUDGET_MIB" "$verdict" "$OVERHEAD_MIB" $((at_rest / 1024)) | tee -a "$OUT/summary.txt"
say "results: $OUT"
[[ $verdict == within ]]
