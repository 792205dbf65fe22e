#!/usr/bin/env bash
# Installs the servers some tests run:
#   target/eg    Express Gateway 1.16.11, from the npm registry with its exact lock file
#                (tests/fixtures/eg-1.16.11/npm): EG reads what tollgate writes
#   target/moto  moto's S3 server (tests/fixtures/moto/requirements.txt, PyPI): an
#                S3-compatible server that checks SigV4 signatures
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

moto=target/moto
if ! "$moto/bin/moto_server" --help >/dev/null 2>&1; then
  echo "installing moto's S3 server into $moto" >&2
  python3 -m venv "$moto"
  "$moto/bin/pip" install --quiet --disable-pip-version-check -r tests/fixtures/moto/requirements.txt
fi
