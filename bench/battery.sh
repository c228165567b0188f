#!/usr/bin/env bash
# The abuse battery (bench/battery.py): builds the release binary, then runs
# every attack against a Warden it starts, with a legitimate client on
# 127.0.0.2 measuring latency, and prints the table (also written to
# bench/results/battery.json).
#
#   bench/battery.sh [--quick] [--no-build] [battery.py options]
#
#   --quick      ~20x smaller counts, short holds: the CI version (< ~2 minutes)
#   --no-build   use target/release/warden as it is
#   the rest goes to bench/battery.py (see `python3 bench/battery.py --help`),
#   e.g. --only idle_tls,slow_read, --report-only, --json FILE
#
# Exit status: 1 if a target is not met (0 with --report-only), 2 if the
# battery could not run. The flood uses oha or wrk when on PATH; nothing is
# installed here (without them a slower Python client runs a smaller count).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

build=true
args=()
for a in "$@"; do
  if [ "$a" = "--no-build" ]; then build=false; else args+=("$a"); fi
done

if $build; then
  cargo build --release -p warden >&2
fi
# Warden loads ONNX Runtime at start; fetch it once if neither the repo's
# .runtime/lib nor $ORT_DYLIB_PATH has it.
if [ -z "${ORT_DYLIB_PATH:-}" ] && ! ls .runtime/lib/libonnxruntime.so* >/dev/null 2>&1; then
  ./scripts/setup.sh --runtime-only >&2
fi

exec python3 bench/battery.py ${args[@]+"${args[@]}"}
