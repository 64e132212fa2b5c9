# The two commands README.md gives, and their parts.
.PHONY: demo test guests bench check deps build

# Builds ember and its guests, boots a microVM and prints its console and stage timings,
# then boots a function unikernel, invokes it several times and prints the timings,
# then snapshots it and times cold starts from the snapshot with each memory backend.
demo: guests build
	cargo bench --bench boot -- --demo
	cargo bench --bench function -- --demo
	cargo bench --bench snapshot -- --demo

# Everything CI runs: lints, the whole test suite, the VM tests again with every ember
# under ember-jailer, and the benchmarks in their short modes.
test: guests check build
	cargo test --workspace --release
	EMBER_TEST_JAILED=1 cargo test --release --test api --test boot --test function --test snapshot --test linux
	cd resources/unikernel && cargo test -p rt
	cargo bench --bench boot -- --short
	cargo bench --bench function -- --short
	cargo bench --bench snapshot -- --short
	cargo bench --bench jail -- --short

# ember, ember-snapshot and ember-jailer, which the tests and benchmarks run, and the
# statically linked ember that runs inside a jail (where there is no libc to load).
build: deps
	cargo build --release --workspace
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu --bin ember

# userfaultfd-sys generates its bindings with bindgen, which needs libclang.
deps:
	@ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq libclang-dev)

check: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cd resources/unikernel && cargo fmt --all -- --check && cargo clippy --release --all-targets -- -D warnings

# Builds (or finds in the cache) every guest artifact and lists them as name=path.
guests:
	bash resources/guests.sh

bench: guests build
	cargo bench --bench boot
	cargo bench --bench function
	cargo bench --bench snapshot
	cargo bench --bench jail
