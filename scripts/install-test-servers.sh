#!/usr/bin/env bash
# Installs the servers some tests run:
#   target/eg    Express Gateway 1.16.11, from the npm registry with its exact lock file
#                (tests/fixtures/eg-1.16.11/npm): EG reads what tollgate writes
#   target/browser  OpenLayers and playwright-core from the npm registry with their lock file
#                (tests/fixtures/browser): a web map in headless Chromium (Debian's chromium)
#   target/py    a Python environment (tests/fixtures/python/requirements.txt, PyPI): moto's
#                S3 server, which checks SigV4 signatures, and PyJWT, which mints the tokens
#                the jwt tests send
# Installs node/npm and python3/venv from Debian when missing. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v node >/dev/null && command -v npm >/dev/null || scripts/install-deps.sh nodejs npm
python3 -c 'import venv, ensurepip' 2>/dev/null || scripts/install-deps.sh python3 python3-venv

eg=target/eg
have=$(node -p "require('./$eg/node_modules/express-gateway/package.json').version" 2>/dev/null || true)
if [[ $have != 1.16.11 ]]; then
  mkdir -p "$eg"
  cp tests/fixtures/eg-1.16.11/npm/package.json tests/fixtures/eg-1.16.11/npm/package-lock.json "$eg/"
  echo "installing express-gateway 1.16.11 into $eg" >&2
  (cd "$eg" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
fi

py=target/py
req=tests/fixtures/python/requirements.txt
if ! cmp -s "$req" "$py/requirements.txt"; then
  echo "installing the Python test tools into $py" >&2
  python3 -m venv "$py"
  "$py/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$py/requirements.txt"
fi

browser=target/browser
if ! cmp -s tests/fixtures/browser/package-lock.json "$browser/package-lock.json" || [[ ! -d $browser/node_modules/ol ]]; then
  echo "installing OpenLayers and playwright-core into $browser" >&2
  mkdir -p "$browser"
  cp tests/fixtures/browser/package.json tests/fixtures/browser/package-lock.json "$browser/"
  (cd "$browser" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
fi
