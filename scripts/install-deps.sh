#!/usr/bin/env bash
# Installs the Debian packages tollgate's build and tests need, when they are missing:
# cmake, make and perl for Pingora's native parts (zlib-ng, vendored OpenSSL), curl for scripts.
# Extra package names can be passed as arguments. Idempotent; uses sudo when not root.
set -euo pipefail

pkgs=(cmake make perl gcc curl "$@")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
((${#missing[@]} == 0)) && exit 0

sudo=""
[[ $(id -u) == 0 ]] || sudo="sudo"
echo "installing: ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
