#!/usr/bin/env bash
# Coverage-guided fuzzing with cargo fuzz (libFuzzer + AddressSanitizer,
# optimized but with debug assertions and overflow checks on) of
# what clients and operators hand Warden: v1 and v2 request bodies (JSON and
# the binary tensor extension), parsed and validated against the demo
# models' cards, and configuration text. Each target runs for SECONDS
# (default 60), starting from the committed seeds in fuzz/corpus/; a crash,
# a broken invariant or a leak fails the run and leaves the input in
# fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# cargo fuzz needs unstable compiler flags (-Zsanitizer). There is no
# nightly toolchain to fetch on these machines, so the stable compiler is
# told to accept them (RUSTC_BOOTSTRAP=1) for this build only; the fuzz
# crate is outside the workspace and nothing else is built this way. The
# property tests over the same entry points (cargo test) need neither.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request_v1 request_v2 request_v2_binary request_grpc config)

if ! command -v cargo-fuzz >/dev/null; then
  echo "installing cargo-fuzz (crates.io) ..." >&2
  cargo install cargo-fuzz --version 0.13.2 --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
cargo fuzz build --fuzz-dir fuzz -O --debug-assertions
for t in "${targets[@]}"; do
  log="$(mktemp)"
  # FUZZ_SEED (CI sets one) makes the mutation sequence repeatable.
  if ! cargo fuzz run --fuzz-dir fuzz -O --debug-assertions "$t" -- -max_total_time="$seconds" \
      -max_len=4096 -print_final_stats=1 ${FUZZ_SEED:+-seed="$FUZZ_SEED"} >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  runs="$(grep -oE 'Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' || echo '?')"
  cov="$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || echo '?')"
  echo "fuzz: $t ok: $runs executions in ${seconds}s, $cov edges covered, no crash"
  rm -f "$log"
done
