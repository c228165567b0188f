# Shortcuts for the README's two commands (they need only bash, cargo and pip).
.PHONY: setup serve test bench lint

setup:
	./scripts/setup.sh

serve: setup
	cargo run --release -- serve

test: setup
	cargo test --workspace

bench: setup
	bench/run.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
