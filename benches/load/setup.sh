# Sourced by callgrind.sh and scan.sh. `bench_init NAME` makes the results directory OUT
# (target/bench/NAME-<timestamp>) and say() (lines prefixed [NAME]); `bench_setup PACKAGES...`
# installs what the script runs, builds tollgate in release, starts the peers' upstream when it
# is not answering on UPSTREAM_PORT, and sets TOKEN (a token for Kargo's pipeline); `bench_cleanup`
# (for the caller's EXIT trap) stops that upstream again if bench_setup started it. Needs ROOT,
# PEERS_DIR and UPSTREAM_PORT.
bench_init() {
  BENCH_NAME=$1
  OUT="$ROOT/target/bench/$1-$(date +%Y%m%d-%H%M%S)"
  mkdir -p "$OUT"
}
say() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
bench_setup() {
  "$ROOT/scripts/install-deps.sh" "$@"
  (cd "$ROOT" && cargo build --release --locked)
  if ! curl -fs -o /dev/null "http://127.0.0.1:$UPSTREAM_PORT/wmts/1/2/3.png"; then
    "$PEERS_DIR/setup.sh" >"$OUT/setup.log" 2>&1 || true
    "$PEERS_DIR/start.sh" upstream >"$OUT/peers.log" 2>&1 || { say "the upstream did not start (see $OUT/peers.log)"; exit 1; }
    BENCH_STARTED_UPSTREAM=1
  fi
  TOKEN="$(python3 "$ROOT/benches/load/bench_jwt.py" "${TOLLGATE_BENCH_JWT_SECRET:-bench-jwt-secret}")"
}

# Stops the peers' upstream if bench_setup started it (for the caller's EXIT trap).
bench_cleanup() {
  if [[ ${BENCH_STARTED_UPSTREAM:-0} == 1 ]]; then
    "$PEERS_DIR/stop.sh" upstream >>"$OUT/peers.log" 2>&1 || true
  fi
}
