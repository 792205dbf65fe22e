#!/usr/bin/env bash
# Installs Express Gateway 1.16.11 (the exact npm tree in tests/fixtures/eg-1.16.11/npm) into
# target/eg, for the tests that check EG reads what tollgate writes. Needs node and npm (installs
# Debian's when missing). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v node >/dev/null && command -v npm >/dev/null || scripts/install-deps.sh nodejs npm
dest=target/eg
want=1.16.11
have=$(node -p "require('./$dest/node_modules/express-gateway/package.json').version" 2>/dev/null || true)
[[ $have == "$want" ]] && exit 0
mkdir -p "$dest"
cp tests/fixtures/eg-1.16.11/npm/package.json tests/fixtures/eg-1.16.11/npm/package-lock.json "$dest/"
echo "installing express-gateway $want into $dest" >&2
(cd "$dest" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
