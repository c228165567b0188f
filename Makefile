# Shortcuts for the README's two commands (they need only bash, cargo and pip).
.PHONY: runtime setup serve test bench bench-scaleout bench-gateway bench-anatomy bench-stages lint fuzz

# Serving needs only the ONNX Runtime library (no root, no system package).
runtime:
	./scripts/setup.sh --runtime-only

# The tests need their peers too (redis-server, PostgreSQL, sslyze, ...).
setup:
	./scripts/setup.sh

serve: runtime
	cargo run --release -- serve

test: setup
	cargo test --workspace

bench: setup
	bench/run.sh

# One replica with shared state (PostgreSQL + Redis) against a single node (docs/scaling.md).
bench-scaleout: setup
	bench/scaleout.sh

# Warden's gateway against nginx as a TLS reverse proxy, same upstream (docs/benchmarks.md).
bench-gateway: runtime
	bench/gateway.sh

# Where a request's CPU goes: Warden with and without its audit trail against
# the floor, with system calls and memory by mapping (docs/benchmarks.md).
bench-anatomy: runtime
	bench/anatomy.sh

# One Criterion micro-benchmark per pipeline stage (docs/benchmarks.md).
bench-stages: setup
	cargo bench -p warden-server --bench stages

# cargo fuzz over request parsing and config (60 s per target; scripts/fuzz.sh).
fuzz:
	scripts/fuzz.sh 60

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
