# The two commands README.md gives, and their parts.
.PHONY: demo test guests bench check

# Builds ember and its guests, boots a microVM and prints its console and stage timings,
# then boots a function unikernel, invokes it several times and prints the timings.
demo: guests
	cargo bench --bench boot -- --demo
	cargo bench --bench function -- --demo

# Everything CI runs: lints, the whole test suite, and the benchmarks in their short modes.
test: guests check
	cargo test --workspace --release
	cd resources/unikernel && cargo test -p rt
	cargo bench --bench boot -- --short
	cargo bench --bench function -- --short

check:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cd resources/unikernel && cargo fmt --all -- --check && cargo clippy --release --all-targets -- -D warnings

# Builds (or finds in the cache) every guest artifact and lists them as name=path.
guests:
	bash resources/guests.sh

bench: guests
	cargo bench --bench boot
	cargo bench --bench function
