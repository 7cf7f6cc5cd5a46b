#!/usr/bin/env bash
# Build (once, cached) the minimal OpenTelemetry Collector in scripts/otelcol
# and print the binary's path as the LAST line of stdout:
#
#   bin=$(scripts/otelcol.sh | tail -n1)
#   "$bin" --config=/path/to/config.yaml
#
# The binary lives in ${XDG_CACHE_HOME:-$HOME/.cache}/pg-outbox-relay/otelcol-v0.165.0/
# and is rebuilt only when missing or older than main.go/go.mod/go.sum.
# Needs Go (>= 1.26) and the Go module proxy; build output goes to stderr.
set -euo pipefail

src="$(cd "$(dirname "${BASH_SOURCE[0]}")/otelcol" && pwd)"
out_dir="${XDG_CACHE_HOME:-$HOME/.cache}/pg-outbox-relay/otelcol-v0.165.0"
bin="$out_dir/otelcol"

need_build=0
if [[ ! -x "$bin" ]]; then
  need_build=1
else
  for f in "$src/main.go" "$src/go.mod" "$src/go.sum"; do
    if [[ "$f" -nt "$bin" ]]; then need_build=1; fi
  done
fi

if (( need_build )); then
  command -v go >/dev/null || { echo "otelcol.sh: go not found on PATH" >&2; exit 1; }
  mkdir -p "$out_dir"
  echo "otelcol.sh: building $bin (first build downloads modules, ~1-2 min)" >&2
  tmp="$bin.tmp.$$"
  trap 'rm -f "$tmp"' EXIT
  # -mod=mod lets go fill in go.sum if a checksum is missing (versions stay
  # pinned by go.mod); -buildvcs=false skips stamping git info of this repo.
  # Build to a temp file and rename, so a parallel caller never sees a
  # half-written binary.
  (cd "$src" && GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath -o "$tmp" .) >&2
  mv -f "$tmp" "$bin"
  trap - EXIT
fi

echo "$bin"
