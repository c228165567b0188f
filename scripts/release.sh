#!/usr/bin/env bash
# Release build: the binary and a CycloneDX SBOM of the crates in it.
#
#   scripts/release.sh            -> target/release/warden
#                                    target/release/warden.cdx.json (SBOM)
#
# The SBOM comes from cargo-cyclonedx (crates.io), installed if missing. It
# lists the Rust crates linked into the binary; the ONNX Runtime library,
# loaded at run time, is recorded as its wheel version by scripts/setup.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/setup.sh --runtime-only
cargo build --release --locked -p warden
if ! command -v cargo-cyclonedx >/dev/null; then
  echo "installing cargo-cyclonedx (crates.io) ..." >&2
  cargo install cargo-cyclonedx --version 0.5.9 --locked --quiet
fi
# It writes one file per workspace member; the binary's is crates/warden's.
cargo cyclonedx --manifest-path crates/warden/Cargo.toml --format json \
  --spec-version 1.5 --no-build-deps --override-filename warden.cdx
mv crates/warden/warden.cdx.json target/release/warden.cdx.json
find crates bench -name warden.cdx.json -delete
echo "release: target/release/warden, SBOM target/release/warden.cdx.json" >&2
