#!/usr/bin/env bash
# Makes tests/js/node_modules current for the Node.js validators the integration tests run
# (tests/js/cloudevents.mjs, tests/js/asyncapi.mjs). Idempotent, works from any cwd:
# runs `npm ci` only when node_modules is missing or older than package-lock.json /
# package.json, then touches node_modules/.js-tools-stamp. Needs node + npm (npm registry).
set -euo pipefail
js_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/js"
stamp="$js_dir/node_modules/.js-tools-stamp"

if [[ -f $stamp && ! $js_dir/package-lock.json -nt $stamp && ! $js_dir/package.json -nt $stamp ]]; then
  echo "js-tools: $js_dir/node_modules is up to date"
  exit 0
fi
command -v npm >/dev/null || { echo "js-tools: npm not found (install Node.js)" >&2; exit 1; }
# SCARF_ANALYTICS=false: keeps the @scarf/scarf postinstall (a spectral dependency) from phoning home.
SCARF_ANALYTICS=false npm ci --no-audit --no-fund --loglevel=error --prefix "$js_dir" >&2
touch "$stamp"
echo "js-tools: installed $js_dir/node_modules (npm ci)"
