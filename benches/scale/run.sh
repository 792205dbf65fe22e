#!/usr/bin/env bash
# Scale runs: start-up time and RSS with 10k and 1M key-auth credentials, in the embedded store
# and in Redis; and the plain pipeline's throughput with 1 and 2 worker threads.
#   benches/scale/run.sh                # COUNTS="10000 1000000"
# Needs redis-server, nginx and wrk (the upstream comes from ../shared/bench/peers).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
: "${COUNTS:=10000 1000000}"
PEERS_DIR="${PEERS_DIR:-$ROOT/../shared/bench/peers}"
OUT="$ROOT/target/bench/scale-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
"$ROOT/scripts/install-deps.sh" redis-server nginx wrk curl python3
(cd "$ROOT" && cargo build --release --locked)
BIN="$ROOT/target/release/tollgate"
say() { printf '[scale] %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Writes N key-auth credentials of one app, in EG's layout: as Redis commands or as a snapshot
# of the embedded store.
generate() { # generate redis|embedded N
  python3 - "$1" "$2" <<'PY'
import json, sys
kind, n = sys.argv[1], int(sys.argv[2])
date = "Thu Nov 26 2026 10:39:09 GMT+0000 (Coordinated Universal Time)"
app = {"isActive": "true", "id": "app", "userId": "u", "name": "app", "scopes": "wmts", "createdAt": date, "updatedAt": date}
def cred(i):
    k = "key%07d" % i
    return k, {"isActive": "true", "createdAt": date, "updatedAt": date, "keyId": k, "keySecret": "s%021d" % i,
               "scopes": '["wmts"]', "consumerId": "app", "id": k}
out = sys.stdout.buffer
if kind == "redis":
    def cmd(*args):
        out.write(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args))
    cmd("HSET", "EG-application:app", *[x for kv in app.items() for x in kv])
    for i in range(n):
        k, h = cred(i)
        cmd("HSET", "EG-key-auth:" + k, *[x for kv in h.items() for x in kv])
else:
    out.write(b'{"EG-application:app":' + json.dumps({"hash": app}).encode())
    for i in range(n):
        k, h = cred(i)
        out.write(b',"EG-key-auth:' + k.encode() + b'":' + json.dumps({"hash": h}).encode())
    out.write(b"}")
PY
}

# Starts tollgate on CONFIG_DIR, prints "seconds-to-first-served-request rss-MB" once the cache
# holds N credentials, then stops it.
measure() { # measure CONFIG_DIR DATA_DIR N
  local dir=$1 data=$2 n=$3 port admin start pid t rss
  port=$(free_port); admin=$(free_port)
  start=$(date +%s%N)
  RUST_LOG=info TOLLGATE_BENCH_PORT=$port TOLLGATE_BENCH_ADMIN_PORT=$admin "$BIN" serve --config "$dir" --data-dir "$data" >"$OUT/run.log" 2>&1 &
  pid=$!
  until curl -s -o /dev/null -H "Authorization: apiKey key$(printf %07d $((n - 1))):s$(printf %021d $((n - 1)))" \
      -w '%{http_code}' "http://127.0.0.1:$port/wmts/x" 2>/dev/null | grep -q 200; do
    kill -0 $pid 2>/dev/null || { say "tollgate stopped: $(tail -3 "$OUT/run.log")"; return 1; }
    sleep 0.02
  done
  t=$(( ($(date +%s%N) - start) / 1000000 ))
  sleep 2
  rss=$(( $(awk '/VmRSS/{print $2}' /proc/$pid/status) / 1024 ))
  kill $pid; wait $pid 2>/dev/null || true
  echo "$t $rss"
}

"$PEERS_DIR/start.sh" upstream >/dev/null
UPSTREAM="http://127.0.0.1:$(. "$PEERS_DIR/peers.env"; echo "$UPSTREAM_PORT")"
printf 'store\tcredentials\tfirst_request_ms\trss_mb\n' | tee "$OUT/startup.tsv"
for n in $COUNTS; do
  for store in embedded redis; do
    dir="$OUT/$store-$n"; mkdir -p "$dir/data"
    sed "s|http://127.0.0.1:\${UPSTREAM_PORT:-18080}|$UPSTREAM|" "$ROOT/benches/load/plain/gateway.config.yml" > "$dir/gateway.config.yml"
    python3 - "$dir/gateway.config.yml" <<'PY'
import sys
p = sys.argv[1]; s = open(p).read()
s = s.replace("policies:\n  - cors\n  - proxy", "policies:\n  - cors\n  - key-auth\n  - proxy")
s = s.replace("      - proxy:\n          - action:\n              serviceEndpoint: wmtsService", "      - key-auth:\n      - proxy:\n          - action:\n              serviceEndpoint: wmtsService")
s = s.replace("paths: '/wmts/*'", "paths: '/wmts/*'\n    scopes: [wmts]")
open(p, "w").write(s)
PY
    if [[ $store == redis ]]; then
      rport=$(free_port)
      redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
      sleep 0.5
      generate redis "$n" | redis-cli -p "$rport" --pipe >/dev/null
      printf 'db:\n  redis:\n    emulate: false\n    port: %s\n' "$rport" > "$dir/system.config.yml"
    else
      generate embedded "$n" > "$dir/data/store.snapshot.json"
      printf 'db:\n  redis:\n    emulate: true\n' > "$dir/system.config.yml"
    fi
    read -r ms rss < <(measure "$dir" "$dir/data" "$n")
    printf '%s\t%s\t%s\t%s\n' "$store" "$n" "$ms" "$rss" | tee -a "$OUT/startup.tsv"
    [[ $store == redis ]] && kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
  done
done

# Throughput of the plain pipeline with 1 and 2 worker threads.
printf 'threads\trps\tp99\n' | tee "$OUT/threads.tsv"
for threads in 1 2; do
  port=$(free_port); admin=$(free_port)
  RUST_LOG=warn TOLLGATE_BENCH_PORT=$port TOLLGATE_BENCH_ADMIN_PORT=$admin "$BIN" serve --config "$ROOT/benches/load/plain" \
    --data-dir "$OUT/threads-$threads" --threads "$threads" >/dev/null 2>&1 &
  pid=$!
  sleep 1
  wrk -t1 -c64 -d3s "http://127.0.0.1:$port/wmts/1/2/3.png" >/dev/null
  r=$(wrk -t1 -c64 -d10s --latency "http://127.0.0.1:$port/wmts/1/2/3.png")
  printf '%s\t%s\t%s\n' "$threads" "$(echo "$r" | awk '/Requests\/sec/{print $2}')" "$(echo "$r" | awk '$1=="99%"{print $2}')" | tee -a "$OUT/threads.tsv"
  kill $pid; wait $pid 2>/dev/null || true
done
say "results: $OUT"
