#!/usr/bin/env bash
# Instructions per request, counted by callgrind on a fixed number of requests: a measure that
# does not drift with the machine's load, for judging a change to the request path.
#
#   benches/load/callgrind.sh            # 2000 requests per case, about 3 minutes
#   N=5000 CASES="plain-fast plain-general" benches/load/callgrind.sh
#   CASES="cache-miss kargo-distinct" benches/load/callgrind.sh   # what a miss adds
#   BIN=/path/to/other/tollgate benches/load/callgrind.sh   # another build (default target/release)
#   CALLGRIND_ARGS=--dump-instr=yes CASES=cache-declined benches/load/callgrind.sh  # costs per instruction
#
# Each case starts the release build under `valgrind --tool=callgrind` with one worker thread
# in front of the benchmark's upstream (started with ../shared/bench/peers when it is not
# running), sends 300 requests to warm it, zeroes the counters, sends N requests one after
# another on one keep-alive connection (benches/load/fixed.py) and dumps the counters: the
# instructions of the serving thread divided by N. Cases: plain-fast and plain-general (the
# `cors + proxy` pipeline on the fast path and on Pingora's general proxy path), kargo-fast and
# kargo-general (Kargo's tile pipeline), cache-hit (Kargo's pipeline with the tile cache, every
# request a hit), cache-miss (the same, every request a tile not asked for before, stored),
# healthcheck (the gateway's own health check: a reply made by the gateway, no pipeline),
# refused (Kargo's pipeline with the cache, no token: every request a 401),
# cache-declined (the same with a 4 MiB memory tier the warm-up filled: every miss declined by
# admission, not stored) with kargo-distinct (those tiles through Kargo's pipeline without the
# cache), nginx-static (the upstream's own nginx serving the tile file: what a hit is measured
# against), cache-hit-browser and nginx-static-browser (the same two with the 12 headers Chrome
# sends with a tile image: FIXED_HEADERS=browser in benches/load/fixed.py), and nginx (the peers' reverse-proxy config, one worker, no master process,
# under callgrind the same way). Results go to target/bench/callgrind-<timestamp>/ (summary.txt and the
# callgrind files, for callgrind_annotate).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PEERS_DIR="${PEERS_DIR:-$ROOT/../shared/bench/peers}"
: "${N:=2000}" "${CASES:=nginx plain-fast plain-general kargo-fast kargo-general cache-hit}"
: "${UPSTREAM_PORT:=18080}" "${PORT:=18401}"
# shellcheck source=benches/load/setup.sh
. "$ROOT/benches/load/setup.sh"
bench_init callgrind
bench_setup valgrind nginx curl python3
trap bench_cleanup EXIT
BIN="${BIN:-$ROOT/target/release/tollgate}"

# Warms the server that runs as PID, counts N requests to PATH and prints the instructions
# per request.
count() { # CASE PID PORT PATH
  local case=$1 pid=$2 port=$3 path=$4
  local up=0
  for _ in $(seq 120); do [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port${path//\{i\}/warm}")" != 000 ]] && { up=1; break; }; sleep 1; done
  ((up)) || { say "$case did not answer (see $OUT/$case.log)"; kill "$pid" 2>/dev/null; return 1; }
  python3 "$ROOT/benches/load/fixed.py" 127.0.0.1 "$port" "$path" 300 >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local ok
  ok="$(python3 "$ROOT/benches/load/fixed.py" 127.0.0.1 "$port" "$path" "$N")"
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  # The dump of the thread that served holds the most instructions.
  local ir
  ir="$(for f in "$OUT/$case.$pid"*; do grep -E '^(summary|totals):' "$f" | head -1 | awk '{print $2}'; done | sort -n | tail -1)"
  printf '%-14s %6d of %d answered 200  %12d Ir  %8d Ir/request\n' "$case" "$ok" "$N" "$ir" $((ir / N)) | tee -a "$OUT/summary.txt"
}

measure() { # CASE CONFIG PATH [serve args]
  local case=$1 conf=$2 path=$3; shift 3
  RUST_LOG=warn TOLLGATE_BENCH_PORT=$PORT TOLLGATE_BENCH_ADMIN_PORT=$((PORT + 1000)) UPSTREAM_PORT=$UPSTREAM_PORT \
    valgrind --tool=callgrind --callgrind-out-file="$OUT/$case.%p" ${CALLGRIND_ARGS:-} \
    "$BIN" serve --config "$ROOT/benches/load/$conf" --data-dir "$OUT/$case-data" --threads 1 \
    --populate "$ROOT/benches/load/kargo/consumers.config.json" "$@" >"$OUT/$case.log" 2>&1 &
  count "$case" $! "$PORT" "$path"
}

# nginx with the peers' reverse-proxy config, one worker, no master process.
measure_nginx() {
  sed -e "s|@RUN_DIR@|$OUT|; s|@UPSTREAM_PORT@|$UPSTREAM_PORT|; s|@NGINX_PORT@|$((PORT + 10))|" \
    -e "s|^worker_processes @NGINX_WORKERS@;|worker_processes 1; master_process off; daemon off;|" \
    -e "s|^pid .*|pid $OUT/nginx.pid;|; s|^error_log .*|error_log $OUT/nginx.error.log warn;|" \
    "$PEERS_DIR/conf/proxy.nginx.conf" >"$OUT/nginx.conf"
  mkdir -p "$OUT/logs" "$OUT/tmp"
  valgrind --tool=callgrind --callgrind-out-file="$OUT/nginx.%p" \
    nginx -p "$OUT/" -e "$OUT/nginx.error.log" -c "$OUT/nginx.conf" >"$OUT/nginx.log" 2>&1 &
  count nginx $! $((PORT + 10)) /wmts/1/2/3.png
}

# nginx serving the tile itself (the upstream's config: the file by sendfile), one worker.
measure_nginx_static() { # [CASE]
  local case=${1:-nginx-static}
  mkdir -p "$OUT/static/logs" "$OUT/static/tmp" "$OUT/static/www"
  cp "${RUN_DIR:-${PEERS_ROOT:-/tmp/peers}/run}/www/tile.png" "$OUT/static/www/"  # the upstream's (bench_setup started it)
  sed -e "s|@UPSTREAM_WORKERS@|1|; s|@UPSTREAM_PORT@|$((PORT + 20))|" \
    -e "s|^pid .*|pid $OUT/static/nginx.pid; daemon off; master_process off;|" \
    -e "s|^error_log .*|error_log $OUT/static/nginx.error.log warn;|" \
    "$PEERS_DIR/conf/upstream.nginx.conf" >"$OUT/static/nginx.conf"
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$case.%p" \
    nginx -p "$OUT/static/" -e "$OUT/static/nginx.error.log" -c "$OUT/static/nginx.conf" >"$OUT/$case.log" 2>&1 &
  count "$case" $! $((PORT + 20)) /wmts/1/2/3.png
}

for c in $CASES; do
  case $c in
    plain-fast) measure "$c" plain /wmts/1/2/3.png ;;
    plain-general) measure "$c" plain /wmts/1/2/3.png --fast-path off ;;
    kargo-fast) measure "$c" kargo "/wmts/1/2/3.png?jwt=$TOKEN" ;;
    kargo-general) measure "$c" kargo "/wmts/1/2/3.png?jwt=$TOKEN" --fast-path off ;;
    cache-hit) measure "$c" kargo-cache "/wmts/1/2/3.png?jwt=$TOKEN" ;;
    cache-hit-browser) FIXED_HEADERS=browser measure "$c" kargo-cache "/wmts/1/2/3.png?jwt=$TOKEN" ;;
    cache-miss) measure "$c" kargo-cache "/wmts/cold/{i}.png?jwt=$TOKEN" ;;
    cache-declined) measure "$c" kargo-cache "/wmts/cold/{i}.png?jwt=$TOKEN" --cache-memory 4MiB ;;
    kargo-distinct) measure "$c" kargo "/wmts/cold/{i}.png?jwt=$TOKEN" ;;
    healthcheck) measure "$c" kargo-cache /healthcheck ;;
    refused) measure "$c" kargo-cache /wmts/1/2/3.png ;;
    nginx) measure_nginx ;;
    nginx-static) measure_nginx_static ;;
    nginx-static-browser) FIXED_HEADERS=browser measure_nginx_static "$c" ;;
    *) say "unknown case $c"; exit 2 ;;
  esac
done
say "results: $OUT"
