#!/usr/bin/env bash
# Builds tollgate's image from the Dockerfile at the repository's root:
#   docker build -t tollgate:<version in Cargo.toml> .
# IMAGE names the repository (default tollgate); extra arguments go to `docker build`
# (e.g. --pull, or another -t such as -t registry.example.org/tollgate:latest).
# When no Docker engine answers (`docker info` fails) it says so and skips: exit 0, or exit 1
# when REQUIRE_DOCKER=1 (CI that must produce the image).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(awk -F'"' '/^\[/ { pkg = ($0 == "[package]") } pkg && /^version[[:space:]]*=/ { print $2; exit }' Cargo.toml)
if [[ -z $version ]]; then
  echo "build-image.sh: no version in Cargo.toml's [package] section" >&2
  exit 1
fi
image="${IMAGE:-tollgate}:$version"

if ! command -v docker >/dev/null 2>&1; then
  why="the docker command is not installed"
elif ! err=$(docker info 2>&1 >/dev/null); then
  why="no Docker engine answers (docker info: $(printf '%s\n' "$err" | grep -v '^$' | tail -n 1))"
else
  why=""
fi
if [[ -n $why ]]; then
  if [[ ${REQUIRE_DOCKER:-0} == 1 ]]; then
    echo "build-image.sh: cannot build $image: $why" >&2
    exit 1
  fi
  echo "build-image.sh: skipped building $image: $why (set REQUIRE_DOCKER=1 to make this an error)" >&2
  exit 0
fi

echo "build-image.sh: building $image" >&2
DOCKER_BUILDKIT=1 docker build -t "$image" "$@" .
echo "build-image.sh: built $image" >&2
