#!/usr/bin/env bash
# The load benchmark: tollgate against nginx, HAProxy and Express Gateway (plain and with
# key-auth), all in front of the same upstream on loopback, measured with wrk.
#
#   benches/load/run.sh                 # everything: about 45 minutes on 2 cores
#   SMOKE=1 benches/load/run.sh         # tollgate only, a few seconds, debug build (CI runs this)
#   PEERS="nginx tollgate" SCENARIOS=tile REPS=2 DURATION=5 benches/load/run.sh
#
# Peers: direct (the upstream alone), nginx, nginx-cache (nginx with proxy_cache, no auth),
# haproxy, eg, eg-auth — installed and started by ../shared/bench/peers (a peer that cannot be
# installed or started is skipped, with a line saying so) — and tollgate (the plain
# `cors + proxy` pipeline), tollgate-kargo (Kargo's tile pipeline: metrics, cors, jwt from ?jwt=
# with a credential check, scopes, proxy) and tollgate-cache (the same with the tile cache
# before the proxy); tollgate-cache-1t, not in the default list, is tollgate-cache with one
# worker thread (what nginx's accept does on a small box: one worker takes every connection of
# a burst); tollgate-cache-min2, not in the default list either, is tollgate-cache whose step
# stores a tile from its second miss on (`minUses: 2`: a tile asked for once is not stored);
# direct-2w, not in the default list, is a second upstream with two nginx workers (the peers'
# upstream runs one) serving the same files: the upstream at tollgate's default thread count.
# Scenarios: tile (20 KiB, one tile: a warm cache), tile1k (the same tile from 1,000 client
# connections at once), small (100 B), json (100 B on /k2/), zipf (20 KiB tiles drawn from a
# Zipf distribution over 10000: most requests hits), cold (20 KiB, every request a tile never
# seen: every one a miss), browser (the 20 KiB tile with the 12 headers Chrome sends with a map
# tile image besides Host: what each request head costs to read). Rounds are interleaved (rep → scenario → peer) after a warm-up, so
# drift hits every peer alike; the table gives the median of each cell and every figure as a
# ratio to nginx in the same run: requests per second, latency, CPU time per request (from
# /proc, and from `perf stat` task-clock with the context switches per request when perf runs
# here) and peak RSS.
# Then the idle phase (IDLE=10000 connections, IDLE=0 skips it): for tollgate, nginx and
# HAProxy (IDLE_PEERS), that many keep-alive clients each fetch one tile and sit idle; the
# server's RSS before and after gives the memory each idle connection costs. nginx and HAProxy
# get at most IDLE_CAP_PEER (7000) of them: their configs allow 8192 and 8000 connections.
# Results, raw wrk output included, go to target/bench/<timestamp>/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PEERS_DIR="${PEERS_DIR:-$ROOT/../shared/bench/peers}"
[[ -f $PEERS_DIR/lib.sh ]] || { echo "benchmark peers not found in $PEERS_DIR (set PEERS_DIR)" >&2; exit 1; }
# shellcheck source=/dev/null
. "$PEERS_DIR/lib.sh"

SMOKE="${SMOKE:-0}"
if [[ $SMOKE == 1 ]]; then
  : "${PROFILE:=debug}"
  : "${PEERS:=tollgate tollgate-kargo tollgate-cache}" "${SCENARIOS:=tile json zipf}" "${DURATION:=2}" "${REPS:=1}" "${WARMUP:=1}"
else
  : "${PEERS:=direct nginx nginx-cache haproxy eg eg-auth tollgate tollgate-kargo tollgate-cache}"
  : "${SCENARIOS:=tile tile1k small json zipf cold browser}"
  : "${DURATION:=10}" "${REPS:=3}" "${WARMUP:=5}"
fi
: "${IDLE:=$([[ $SMOKE == 1 ]] && echo 200 || echo 10000)}" "${IDLE_PEERS:=tollgate nginx haproxy}" "${IDLE_CAP_PEER:=7000}"
# wrk and the idle clients hold thousands of sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
: "${CONNS:=64}" "${THREADS:=1}" "${PAUSE:=1}" "${PROFILE:=release}"
TG_PORT=18096; TG_ADMIN=19096; TGK_PORT=18097; TGK_ADMIN=19097; TGC_PORT=18098; TGC_ADMIN=19098; TGC1_PORT=18099; TGC1_ADMIN=19099
TGM_PORT=18100; TGM_ADMIN=19100; UP2_PORT=18101
JWT_SECRET="${TOLLGATE_BENCH_JWT_SECRET:-bench-jwt-secret}"
OUT="$ROOT/target/bench/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT/wrk" "$OUT/tollgate"
HZ="$(getconf CLK_TCK)"

say() { printf '[bench] %s\n' "$*" >&2; }

# ---- install, build, start -------------------------------------------------------------------
# The peers' start script wants all of its servers installed, even to start the upstream alone.
"$PEERS_DIR/setup.sh" >"$OUT/setup.log" 2>&1 || say "peer setup failed (see $OUT/setup.log): peers that need it will be skipped"
"$ROOT/scripts/install-deps.sh" nginx wrk curl python3 procps iproute2
"$ROOT/scripts/install-deps.sh"
if [[ $PROFILE == release ]]; then
  (cd "$ROOT" && cargo build --release --locked)
else
  (cd "$ROOT" && cargo build --locked)
fi
BIN="$ROOT/target/$PROFILE/tollgate"

# What this run starts it stops when it ends: tollgate's processes, and the peers (and the Redis
# Express Gateway's key-auth uses) that were not running before it; peers already running are
# left as they were.
TG_PIDS=() ours=()
cleanup() {
  for p in "${TG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  ((${#ours[@]} == 0)) || "$PEERS_DIR/stop.sh" "${ours[@]}" >>"$OUT/peers.log" 2>&1 || true
  [[ ! -d $OUT/upstream-2w ]] || up2 "$PEERS_DIR/stop.sh" upstream >>"$OUT/peers.log" 2>&1 || true
}
# The two-worker upstream (peer direct-2w): the peers' upstream config in a directory of its own.
up2() { RUN_DIR="$OUT/upstream-2w" UPSTREAM_PORT=$UP2_PORT UPSTREAM_WORKERS=2 "$@"; }
trap cleanup EXIT
running() { svc_pid "$(peer_svc "$1" 2>/dev/null || echo "$1")" >/dev/null; }
redis_before=0
running redis && redis_before=1
started=()
for svc in upstream $(for p in $PEERS; do case $p in nginx|nginx-cache|haproxy|eg|eg-auth) echo "$p";; esac; done); do
  before=0
  running "$svc" && before=1
  if "$PEERS_DIR/start.sh" "$svc" >>"$OUT/peers.log" 2>&1; then
    started+=("$svc")
    ((before)) || ours+=("$svc")
  else
    say "skipping $svc: it did not start (see $OUT/peers.log)"
  fi
done
((redis_before)) || ! running redis || ours+=(redis)
if [[ " $PEERS " == *" direct-2w "* ]]; then
  mkdir -p "$OUT/upstream-2w"
  up2 "$PEERS_DIR/start.sh" upstream >>"$OUT/peers.log" 2>&1 || say "skipping direct-2w: it did not start (see $OUT/peers.log)"
fi
[[ " ${started[*]} " == *" upstream "* ]] || { say "the upstream did not start: nothing to measure"; exit 1; }
start_tollgate() { # NAME CONFIG PORT ADMIN [extra args]
  local name=$1 conf=$2 port=$3 admin=$4; shift 4
  rm -rf "$OUT/tollgate/$name-data"
  RUST_LOG=warn TOLLGATE_BENCH_PORT=$port TOLLGATE_BENCH_ADMIN_PORT=$admin UPSTREAM_PORT=$UPSTREAM_PORT \
    "$BIN" serve --config "$conf" --data-dir "$OUT/tollgate/$name-data" "$@" >"$OUT/tollgate/$name.log" 2>&1 &
  TG_PIDS+=($!)
  echo $! > "$OUT/tollgate/$name.pid"
  wait_http "http://127.0.0.1:$port/healthcheck" 20 || { say "$name did not start: $(tail -3 "$OUT/tollgate/$name.log")"; return 1; }
  # Something else answering on the port (a gateway left over from another run) must not be
  # measured in its place.
  sleep 0.5
  kill -0 "${TG_PIDS[-1]}" 2>/dev/null || { say "$name exited: $(tail -3 "$OUT/tollgate/$name.log")"; exit 1; }
}
# The plain gateway holds the idle phase's connections: one descriptor each is enough for an
# explicit cap.
[[ " $PEERS " == *" tollgate "* ]] && start_tollgate tollgate "$ROOT/benches/load/plain" $TG_PORT $TG_ADMIN \
  --max-connections $((IDLE + 1000))
[[ " $PEERS " == *" tollgate-kargo "* ]] && start_tollgate tollgate-kargo "$ROOT/benches/load/kargo" $TGK_PORT $TGK_ADMIN \
  --populate "$ROOT/benches/load/kargo/consumers.config.json"
[[ " $PEERS " == *" tollgate-cache "* ]] && start_tollgate tollgate-cache "$ROOT/benches/load/kargo-cache" $TGC_PORT $TGC_ADMIN \
  --populate "$ROOT/benches/load/kargo/consumers.config.json"
[[ " $PEERS " == *" tollgate-cache-1t "* ]] && start_tollgate tollgate-cache-1t "$ROOT/benches/load/kargo-cache" $TGC1_PORT $TGC1_ADMIN \
  --populate "$ROOT/benches/load/kargo/consumers.config.json" --threads 1
[[ " $PEERS " == *" tollgate-cache-min2 "* ]] && TOLLGATE_BENCH_MIN_USES=2 start_tollgate tollgate-cache-min2 \
  "$ROOT/benches/load/kargo-cache" $TGM_PORT $TGM_ADMIN --populate "$ROOT/benches/load/kargo/consumers.config.json"
TOKEN="$(python3 "$ROOT/benches/load/bench_jwt.py" "$JWT_SECRET")"

# ---- peers and scenarios -----------------------------------------------------------------------
port_of() { case $1 in tollgate) echo $TG_PORT ;; tollgate-kargo) echo $TGK_PORT ;; tollgate-cache) echo $TGC_PORT ;; tollgate-cache-1t) echo $TGC1_PORT ;; tollgate-cache-min2) echo $TGM_PORT ;; direct-2w) echo $UP2_PORT ;; *) peer_port "$1" ;; esac; }
pids_of() {
  case $1 in
    tollgate|tollgate-kargo|tollgate-cache|tollgate-cache-1t|tollgate-cache-min2) cat "$OUT/tollgate/$1.pid" ;;
    direct-2w) up2 svc_pids upstream ;;
    *) svc_pids "$(peer_svc "$1")" ;;
  esac
}
path_of() { # PEER SCENARIO
  local p
  case $2 in tile|tile1k|browser) p=/wmts/1/2/3.png ;; small) p=/wmts/small/1/2/3.png ;; json) p=/k2/ping ;; zipf) p=/wmts/zipf/1/1.png ;; cold) p=/wmts/cold/0/0.png ;; esac
  echo "$p$(suffix_of "$1")"
}
suffix_of() { [[ $1 == tollgate-kargo || $1 == tollgate-cache* ]] && echo "?jwt=$TOKEN"; true; }
# The wrk script that makes the requests of a scenario, if it needs one.
script_of() { case $1 in zipf|cold) echo "$ROOT/benches/load/$1.lua" ;; esac; }
conns_of() { case $1 in tile1k) echo "${CONNS_1K:-1000}" ;; *) echo "$CONNS" ;; esac; }
bytes_of() { case $1 in small|json) echo 100 ;; *) echo 20480 ;; esac; }
header_of() { [[ $1 == eg-auth && $2 != json ]] && printf 'Authorization: apiKey %s' "$(cat "$RUN_DIR/eg-auth.key")"; true; }
# Chrome's headers with a tile image of a map on another site (Host aside), one a line; the
# callgrind cases *-browser send the same (benches/load/fixed.py).
mapfile -t BROWSER_HEADERS <"$ROOT/benches/load/browser.headers"
# The -H arguments of a peer's requests in a scenario, into HARGS.
hargs_of() { # PEER SCENARIO
  HARGS=()
  local h; h="$(header_of "$1" "$2")"
  [[ -n $h ]] && HARGS+=(-H "$h")
  if [[ $2 == browser ]]; then for h in "${BROWSER_HEADERS[@]}"; do HARGS+=(-H "$h"); done; fi
  true
}

ready=()
for p in $PEERS; do
  ok=1
  for sc in $SCENARIOS; do
    hargs_of "$p" "$sc"
    read -r code size < <(curl -s -o /dev/null -w '%{http_code} %{size_download}\n' --max-time 5 "${HARGS[@]}" \
      "http://127.0.0.1:$(port_of "$p" 2>/dev/null || echo 1)$(path_of "$p" "$sc")" || echo "000 0")
    [[ $code == 200 && $size == "$(bytes_of "$sc")" ]] || { say "skipping $p: $sc answered $code / $size bytes"; ok=0; break; }
  done
  ((ok)) && ready+=("$p")
done
((${#ready[@]})) || { say "no peer is ready"; exit 1; }

cpu_ticks() { local t=0 p s f; for p in "$@"; do s="$(cat "/proc/$p/stat" 2>/dev/null)" || continue; s="${s##*) }"; read -r -a f <<< "$s"; t=$((t + f[11] + f[12])); done; echo "$t"; }
rss_kb() { (($#)) || { echo 0; return; }; ps -o rss= -p "$(IFS=,; echo "$*")" 2>/dev/null | awk '{s+=$1} END{print s+0}'; }
to_ms() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) { sub(/us$/,"",v); printf "%.3f", v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v); printf "%.3f", v } else if (v ~ /s$/) { sub(/s$/,"",v); printf "%.3f", v*1000 } else print "NaN" }'; }

# perf stat with software events (task-clock, context switches) where it runs.
PERF=0
if command -v perf >/dev/null && perf stat -e task-clock,context-switches -x, -o /dev/null true 2>/dev/null; then PERF=1; fi

run() { # PEER SCENARIO SECONDS FILE -> "cpu_pct rss_kb task_clock_ms context_switches"
  local p=$1 sc=$2 secs=$3 f=$4 c0 c1 e0 e1 peak=0 cur wpid ppid="" conns
  local -a pids
  mapfile -t pids < <(pids_of "$p")
  hargs_of "$p" "$sc"; conns="$(conns_of "$sc")"
  if ((PERF)); then
    perf stat -e task-clock,context-switches -x, -o "$f.perf" -p "$(IFS=,; echo "${pids[*]}")" -- sleep "$secs" 2>/dev/null &
    ppid=$!
  fi
  c0="$(cpu_ticks "${pids[@]}")"; e0="$(date +%s%N)"
  local script; script="$(script_of "$sc")"
  if [[ -n $script ]]; then
    wrk -t"$THREADS" -c"$conns" -d"${secs}s" --timeout 5s --latency "${HARGS[@]}" -s "$script" "http://127.0.0.1:$(port_of "$p")" -- "$(suffix_of "$p")" >"$f" 2>&1 &
  else
    wrk -t"$THREADS" -c"$conns" -d"${secs}s" --timeout 5s --latency "${HARGS[@]}" "http://127.0.0.1:$(port_of "$p")$(path_of "$p" "$sc")" >"$f" 2>&1 &
  fi
  wpid=$!
  while kill -0 "$wpid" 2>/dev/null; do cur="$(rss_kb "${pids[@]}")"; ((cur > peak)) && peak=$cur; sleep 0.5; done
  wait "$wpid" || true
  c1="$(cpu_ticks "${pids[@]}")"; e1="$(date +%s%N)"
  local tc=NaN cs=NaN
  if [[ -n $ppid ]]; then
    wait "$ppid" 2>/dev/null || true
    tc="$(awk -F, '$3 ~ /^task-clock/ {print $1}' "$f.perf" 2>/dev/null)"; cs="$(awk -F, '$3 ~ /^context-switches/ {print $1}' "$f.perf" 2>/dev/null)"
  fi
  awk -v c=$((c1 - c0)) -v hz="$HZ" -v ns=$((e1 - e0)) -v peak="$peak" -v tc="${tc:-NaN}" -v cs="${cs:-NaN}" \
    'BEGIN{ w = ns/1e9; if (w <= 0) w = 1; printf "%.1f %d %s %s\n", 100*c/hz/w, peak, tc, cs }'
}

{
  echo "# $(date -Is) $(uname -r), $(nproc) cpu, $(awk '/MemTotal/{printf "%.0f MiB", $2/1024}' /proc/meminfo)"
  echo "# wrk -t$THREADS -c$CONNS -d${DURATION}s, reps=$REPS, warm-up=${WARMUP}s, peers: ${ready[*]}"
  echo "# tollgate $("$BIN" --version | awk '{print $2}') ($PROFILE build), $(nginx -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | awk 'NR==1{print "wrk/"$2}')"
} | tee "$OUT/header.txt" >&2
TSV="$OUT/runs.tsv"
printf 'rep\tscenario\tpeer\trps\tp50_ms\tp99_ms\tnon2xx\tsock_err\tcpu_pct\trss_kb\trequests\ttask_clock_ms\tcontext_switches\n' >"$TSV"
if ((WARMUP > 0)); then
  for sc in $SCENARIOS; do for p in "${ready[@]}"; do run "$p" "$sc" "$WARMUP" "$OUT/wrk/warmup-$p-$sc.txt" >/dev/null; done; done
fi
for ((rep = 1; rep <= REPS; rep++)); do
  for sc in $SCENARIOS; do
    for p in "${ready[@]}"; do
      sleep "$PAUSE"
      f="$OUT/wrk/r$rep-$p-$sc.txt"
      read -r cpu rss tc cs < <(run "$p" "$sc" "$DURATION" "$f")
      rps="$(awk '/^Requests\/sec:/{print $2}' "$f")"; n="$(awk '/requests in/{print $1}' "$f")"
      p50="$(to_ms "$(awk '$1=="50%"{print $2}' "$f")")"; p99="$(to_ms "$(awk '$1=="99%"{print $2}' "$f")")"
      bad="$(awk '/Non-2xx or 3xx responses:/{print $NF}' "$f")"; err="$(awk '/Socket errors:/{gsub(/,/,""); print $4+$6+$8+$10}' "$f")"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$sc" "$p" "${rps:-0}" "$p50" "$p99" "${bad:-0}" "${err:-0}" "$cpu" "$rss" "${n:-0}" "$tc" "$cs" >>"$TSV"
      say "rep $rep/$REPS $sc $p: ${rps:-0} req/s p50 ${p50} ms p99 ${p99} ms cpu ${cpu}% rss $((rss / 1024)) MB"
    done
  done
done

# ---- the idle phase: memory per idle keep-alive connection ------------------------------------
IDLE_TSV="$OUT/idle.tsv"
printf 'peer\tconnections\tanswered\tfailed\trss_before_kb\trss_idle_kb\tkib_per_conn\n' >"$IDLE_TSV"
idle_failed=0
if ((IDLE > 0)); then
  for p in $IDLE_PEERS; do
    [[ " ${ready[*]} " == *" $p "* ]] || continue
    n=$IDLE
    [[ $p == tollgate* ]] || ((n = n < IDLE_CAP_PEER ? n : IDLE_CAP_PEER))
    mapfile -t pids < <(pids_of "$p")
    sleep 2
    before="$(rss_kb "${pids[@]}")"
    coproc IDLE_CLIENTS { python3 "$ROOT/benches/load/idle.py" 127.0.0.1 "$(port_of "$p")" "$(path_of "$p" tile)" "$n" "$(header_of "$p" tile)"; }
    read -r _ ok failed <&"${IDLE_CLIENTS[0]}" || { ok=0; failed=$n; }
    sleep 2
    after="$(rss_kb "${pids[@]}")"
    exec {IDLE_CLIENTS[1]}>&-
    wait "$IDLE_CLIENTS_PID" 2>/dev/null || true
    per="$(awk -v a="$after" -v b="$before" -v n="$ok" 'BEGIN{ printf "%.2f", (n > 0 ? (a - b) / n : 0) }')"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$n" "$ok" "$failed" "$before" "$after" "$per" >>"$IDLE_TSV"
    say "idle $p: $ok of $n connections held (failed $failed), RSS $((before / 1024)) → $((after / 1024)) MB, $per KiB per connection"
    ((failed == 0)) || idle_failed=1
    # The clients are gone; let the server close their sockets before the next peer.
    sleep 3
  done
fi

# ---- the table: medians, and every figure as a ratio to nginx ----------------------------------
awk -F'\t' '
function med(s,   n, a, i, j, t) { n = split(s, a, " "); for (i = 2; i <= n; i++) { t = a[i]+0; for (j = i-1; j >= 1 && a[j]+0 > t; j--) a[j+1] = a[j]; a[j+1] = t } return (n % 2) ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }
NR == 1 { next }
{ k = $2 SUBSEP $3; if (!(k in seen)) { seen[k] = 1; order[++n] = k }
  rps[k] = rps[k] " " $4; p50[k] = p50[k] " " $5; p99[k] = p99[k] " " $6; cpu[k] = cpu[k] " " $9; rss[k] = rss[k] " " $10
  if ($4 > 0) us[k] = us[k] " " 1e4 * $9 / $4; bad[k] += $7 + $8
  if ($11 > 0 && $12 != "NaN" && $12 != "") { tc[k] = tc[k] " " 1e3 * $12 / $11; cs[k] = cs[k] " " $13 / $11 } }
END {
  printf "%-8s %-15s %9s %8s %8s %6s %7s %7s %6s %6s %8s %8s %8s %8s %s\n", "scenario", "peer", "rps", "p50ms", "p99ms", "cpu%", "us/req", "tc_us", "cs/req", "rssMB", "x_nginx", "p99/ngx", "cpu/ngx", "tc/ngx", "errors"
  for (i = 1; i <= n; i++) {
    split(order[i], kp, SUBSEP); sc = kp[1]; ng = sc SUBSEP "nginx"
    r = med(rps[order[i]]); q = med(p99[order[i]]); c = med(us[order[i]])
    xr = (ng in seen) ? sprintf("%.2f", r / med(rps[ng])) : "-"
    xq = (ng in seen) ? sprintf("%.2f", q / med(p99[ng])) : "-"
    xc = (ng in seen) ? sprintf("%.2f", c / med(us[ng])) : "-"
    t = (order[i] in tc) ? sprintf("%.1f", med(tc[order[i]])) : "-"; w = (order[i] in cs) ? sprintf("%.2f", med(cs[order[i]])) : "-"
    xt = (ng in tc && order[i] in tc) ? sprintf("%.2f", med(tc[order[i]]) / med(tc[ng])) : "-"
    printf "%-8s %-15s %9.0f %8.2f %8.2f %6.0f %7.1f %7s %6s %6.0f %8s %8s %8s %8s %d\n", sc, kp[2], r, med(p50[order[i]]), q, med(cpu[order[i]]), c, t, w, med(rss[order[i]]) / 1024, xr, xq, xc, xt, bad[order[i]]
  }
}' "$TSV" | tee "$OUT/summary.txt"
if (($(wc -l <"$IDLE_TSV") > 1)); then
  { echo; echo "idle keep-alive connections (each fetched one tile):"
    awk -F'\t' 'NR > 1 { printf "  %-15s %6d held, %d failed: %7.0f → %7.0f MB RSS, %7.2f KiB per connection\n", $1, $3, $4, $5/1024, $6/1024, $7 }' "$IDLE_TSV"
  } | tee -a "$OUT/summary.txt"
fi
say "results: $OUT"
# Every run must have answered only 200s: a smoke run that did not is a failure.
awk -F'\t' 'NR > 1 && ($7 + $8 > 0 || $4 == 0) { bad = 1 } END { exit bad }' "$TSV" || { say "some runs had errors or no throughput"; exit 1; }
((idle_failed == 0)) || { say "some idle connections were not answered"; exit 1; }
