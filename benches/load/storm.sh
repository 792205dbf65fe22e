#!/usr/bin/env bash
# What other programs' writes to the consumers in Redis cost: a Redis with keyspace
# notifications (`KA`), USERS users with a jwt credential each, the release build in front of
# the peers' upstream following them (Kargo's pipeline, benches/load/kargo, its consumers in
# that Redis). Then:
#   - RATE writes a second for 5 s (an HSET of a random credential each, sent TICK seconds'
#     worth at a time): the gateway's and Redis' CPU, in ms per second;
#   - bursts of BURSTS writes in one pipeline each: the gateway's CPU for each and the full
#     reloads it caused (`tollgate_consumer_cache_full_loads_total`: none while the cache keeps
#     up, one when more came at once than may wait).
#
#   benches/load/storm.sh                               # 100,000 users, 10,000 writes a second (~1 min)
#   RATE=20000 TICK=0.001 benches/load/storm.sh
#   BIN=/path/to/another/tollgate benches/load/storm.sh # another build (default: target/release)
#
# Results go to target/bench/storm-<timestamp>/ (summary.txt).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PEERS_DIR="${PEERS_DIR:-$ROOT/../shared/bench/peers}"
: "${USERS:=100000}" "${RATE:=10000}" "${TICK:=0.01}" "${BURSTS:=5000 20000 50000}"
: "${UPSTREAM_PORT:=18080}" "${PORT:=18502}" "${REDIS_PORT:=18579}"
# shellcheck source=benches/load/setup.sh
. "$ROOT/benches/load/setup.sh"
bench_init storm
bench_setup redis-server curl python3
ADMIN=$((PORT + 1000))

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --notify-keyspace-events KA --dir "$OUT" >"$OUT/redis.log" 2>&1 &
REDIS=$!
PID= WRITER=
trap 'kill $WRITER $PID $REDIS 2>/dev/null || true; bench_cleanup' EXIT
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

# RESP for redis-cli --pipe: the users, their names and jwt credentials; the bursts.
python3 - "$OUT" "$USERS" "$BURSTS" <<'PY'
import sys
out, users, bursts = sys.argv[1], int(sys.argv[2]), [int(b) for b in sys.argv[3].split()]
def cmd(*a):
    s = f"*{len(a)}\r\n"
    for x in a:
        x = str(x); s += f"${len(x.encode())}\r\n{x}\r\n"
    return s
with open(f"{out}/seed.resp", "w") as f:
    for i in range(users):
        u = f"u{i:012d}"
        f.write(cmd("HSET", f"EG-user:{u}", "id", u, "username", f"name{i}", "isActive", "true"))
        f.write(cmd("SADD", f"EG-username:name{i}", u))
        f.write(cmd("HSET", f"EG-jwt:{i:012d}", "keyId", f"{i:012d}", "keySecret", "s",
                    "consumerId", u, "isActive", "true", "scopes", '["wmts"]'))
for n in bursts:
    with open(f"{out}/burst{n}.resp", "w") as f:
        for i in range(n):
            f.write(cmd("HSET", f"EG-jwt:{i % users:012d}", "isActive", "true"))
PY
redis-cli -p "$REDIS_PORT" --pipe <"$OUT/seed.resp" >/dev/null
mkdir -p "$OUT/conf"
cp "$ROOT/benches/load/kargo/gateway.config.yml" "$OUT/conf/"
printf 'db:\n  redis:\n    host: 127.0.0.1\n    port: %s\n    namespace: EG\n' "$REDIS_PORT" >"$OUT/conf/system.config.yml"

RUST_LOG=info TOLLGATE_BENCH_PORT=$PORT TOLLGATE_BENCH_ADMIN_PORT=$ADMIN UPSTREAM_PORT=$UPSTREAM_PORT \
  "${BIN:-$ROOT/target/release/tollgate}" serve --config "$OUT/conf" --data-dir "$OUT/data" \
  --populate "$ROOT/benches/load/kargo/consumers.config.json" --resync-seconds 3600 \
  >"$OUT/tollgate.log" 2>&1 &
PID=$!
started=0
for _ in $(seq 300); do
  curl -fs -o /dev/null "http://127.0.0.1:$PORT/wmts/1/2/3.png?jwt=$TOKEN" && { started=1; break; }
  sleep 0.2
done
((started)) || { say "the gateway did not answer (see $OUT/tollgate.log)"; exit 1; }
# Full loads so far ("" from a build without the count).
loads() { curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '$1 == "tollgate_consumer_cache_full_loads_total" {print $2}' || true; }
# The start's loads over (a build without the count: a while).
for _ in $(seq 100); do [[ "$(loads)" -ge 2 ]] && break; sleep 0.2; done
sleep 2
HZ=$(getconf CLK_TCK)
ms() { awk '{print $14 + $15}' "/proc/$1/stat" | awk -v hz="$HZ" '{print int($1 * 1000 / hz)}'; }
since() { [[ -n "$1" && -n "$2" ]] && echo $(($2 - $1)) || echo "?"; }
python3 - "$REDIS_PORT" "$RATE" "$TICK" "$USERS" >/dev/null 2>&1 <<'PY' &
import random, socket, sys, time
port, rate, tick, users = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
s = socket.create_connection(("127.0.0.1", port))
per = max(1, int(rate * tick))
def cmd(*a):
    out = f"*{len(a)}\r\n"
    for x in a:
        x = str(x); out += f"${len(x.encode())}\r\n{x}\r\n"
    return out
t = time.time()
while True:
    s.sendall("".join(cmd("HSET", f"EG-jwt:{random.randrange(users):012d}", "updatedAt", str(time.time()))
                      for _ in range(per)).encode())
    got = b""
    while got.count(b"\r\n") < per:
        more = s.recv(65536)
        if not more:
            sys.exit(0)
        got += more
    t += tick
    if t > time.time():
        time.sleep(t - time.time())
PY
WRITER=$!
sleep 1
g0=$(ms "$PID"); r0=$(ms "$REDIS"); l0=$(loads)
sleep 5
g1=$(ms "$PID"); r1=$(ms "$REDIS"); l1=$(loads)
kill "$WRITER"
WRITER=
echo "$RATE writes/s (${TICK} s a pipeline): tollgate $(((g1 - g0) / 5)) ms/s, redis $(((r1 - r0) / 5)) ms/s, full loads $(since "$l0" "$l1")" | tee "$OUT/summary.txt"
sleep 1
for n in $BURSTS; do
  g0=$(ms "$PID"); l0=$(loads)
  redis-cli -p "$REDIS_PORT" --pipe <"$OUT/burst$n.resp" >/dev/null
  sleep 3
  g1=$(ms "$PID"); l1=$(loads)
  echo "a burst of $n writes: tollgate $((g1 - g0)) ms, full loads $(since "$l0" "$l1")" | tee -a "$OUT/summary.txt"
done
say "results: $OUT"
