# The two commands README.md gives, and their parts.
.PHONY: demo test guests bench check

# Builds ember and its test guests, boots a microVM and prints its console and stage timings.
demo: guests
	cargo bench --bench boot -- --demo

# Everything CI runs: lints, the whole test suite, and the benchmark in its short mode.
test: guests check
	cargo test --workspace --release
	cd resources/unikernel && cargo test -p rt
	cargo bench --bench boot -- --short

check:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cd resources/unikernel && cargo fmt --all -- --check && cargo clippy --release --all-targets -- -D warnings

# Builds (or finds in the cache) every guest artifact and lists them as name=path.
guests:
	bash resources/guests.sh

bench: guests
	cargo bench --bench boot
