#!/usr/bin/env bash
# Checks the Prometheus files with promtool: both scrape configs (and the rules they load), the
# rules on their own, and the rules' unit tests (rules.test.yml).
# promtool comes with Prometheus (Debian: `apt-get install prometheus`); PROMTOOL overrides it.
set -euo pipefail
cd "$(dirname "$0")"
promtool=${PROMTOOL:-promtool}
if ! command -v "$promtool" >/dev/null; then
  echo "check.sh: $promtool not found (install Prometheus: apt-get install prometheus)" >&2
  exit 2
fi
"$promtool" check config prometheus.yml
"$promtool" check config prometheus.kargo.yml
"$promtool" check rules rules.yml
"$promtool" test rules rules.test.yml
