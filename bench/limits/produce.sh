#!/usr/bin/env bash
# Limit 2 of bench/limits (issue #13): a bare librdkafka producer (produce.c) at the relay's
# settings, N messages to a fresh topic `limits.produce` with as many partitions as bench/run.sh
# gives bench.bench. Built into ${XDG_CACHE_HOME:-~/.cache}/pg-outbox-relay/limits/produce,
# again whenever produce.c or the library is newer. The library: the relay's own librdkafka, as
# rdkafka-sys built it into target/release (the one bench/run.sh measures; `cargo build
# --release` makes it), else Debian's librdkafka-dev (installed if missing, with gcc and
# pkg-config); LIMITS_LIBRDKAFKA=debian forces Debian's.
# Usage: bench/limits/produce.sh [N]   (default 100000; LIMITS_WINDOW, default 10000, is the
# most messages produced but not delivered: the relay's pipeline.max_in_flight). Needs the
# running services of scripts/services.sh (reads .services/env). Prints a comment line, then
#   limit produce rows=N seconds=S rows_per_s=R cpu_us_per_msg=C
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}
PARTITIONS=12 # bench/run.sh: scripts/services.sh topic bench.bench 12
source .services/env

install() { # debian-package...
  command -v apt-get >/dev/null || { echo "produce: install $* yourself" >&2; return 1; }
  local sudo=
  [[ $(id -u) == 0 ]] || sudo=sudo
  echo "produce: installing $* from Debian's packages" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >&2
}

cache=${XDG_CACHE_HOME:-$HOME/.cache}/pg-outbox-relay/limits
mkdir -p "$cache"
src=bench/limits/produce.c
bin=$cache/produce
lib=
if [[ ${LIMITS_LIBRDKAFKA:-relay} != debian ]]; then
  lib=$(ls -t target/release/build/rdkafka-sys-*/out/src/librdkafka.a 2>/dev/null | head -1) || true
fi
command -v gcc >/dev/null || install gcc
if [[ -n $lib ]]; then
  # rdkafka-sys's build: static, with OpenSSL and zlib (its Makefile.config says what it links).
  out=$(cd "$(dirname "$lib")/.." && pwd)
  mkdir -p "$cache/include/librdkafka"
  ln -sf "$out/src/rdkafka.h" "$cache/include/librdkafka/rdkafka.h"
  libs=$(sed -n 's/^LIBS+=//p' "$out/Makefile.config" | tr '\n' ' ')
  build=(gcc -O2 -I"$cache/include" -o "$bin" "$src" "$out/src/librdkafka.a" $libs)
else
  pkg-config --exists rdkafka 2>/dev/null || install librdkafka-dev pkg-config
  lib=$(pkg-config --variable=libdir rdkafka)/librdkafka.so
  build=(gcc -O2 -o "$bin" "$src" $(pkg-config --cflags --libs rdkafka))
fi
if [[ ! -x $bin || $src -nt $bin || $lib -nt $bin || $(cat "$bin.built-with" 2>/dev/null) != "$lib" ]]; then
  "${build[@]}"
  echo "$lib" >"$bin.built-with"
fi

scripts/services.sh topic limits.produce "$PARTITIONS"
"$bin" "$OUTBOX_RELAY_TEST_KAFKA" limits.produce "$N" "${LIMITS_WINDOW:-10000}"
