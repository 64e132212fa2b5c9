# The two commands README.md gives, and their parts.
.PHONY: demo test guests bench check deps build fuzz-build fuzz fuzz-short

# Builds ember and its guests, boots a microVM and prints its console and stage timings,
# then boots a function unikernel, invokes it several times and prints the timings,
# then snapshots it and times cold starts from the snapshot with each memory backend.
demo: guests build
	cargo bench --bench boot -- --demo
	cargo bench --bench function -- --demo
	cargo bench --bench snapshot -- --demo

# Everything CI runs: lints, the whole test suite, the VM tests again with every ember
# under ember-jailer and again with the devices on virtio-pci, the benchmarks in their short modes and a short pass of every fuzzer.
test: guests check build
	cargo test --workspace --release
	EMBER_TEST_JAILED=1 cargo test --release --test api --test boot --test function --test snapshot --test linux
	EMBER_TEST_PCI=1 cargo test --release --test boot --test function --test snapshot --test balloon --test jail
	cd resources/unikernel && cargo test -p rt --features getrandom
	cargo bench --bench boot -- --short
	cargo bench --bench function -- --short
	cargo bench --bench snapshot -- --short
	cargo bench --bench jail -- --short
	cargo bench --bench net -- --short
	cargo bench --bench balloon -- --short
	cargo bench --bench transport -- --short
	cargo bench --bench fleet -- --short
	cargo bench --bench containerd -- --short
	$(MAKE) fuzz-short

# ember, ember-snapshot, ember-jailer and containerd-shim-ember-v2, which the tests and benchmarks run, and the
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
	cargo bench --bench net
	cargo bench --bench balloon
	cargo bench --bench transport
	cargo bench --bench fleet
	cargo bench --bench containerd
	EMBER_FLEET_VMS=10000 cargo test --release --test fleet
	EMBER_CONTAINERD_TASKS=100 cargo test --release --test containerd many_tasks

# Coverage-guided fuzzing (fuzz/README.md): cargo-fuzz on the nightly toolchain, which is
# for fuzzing only. Each run starts from a copy of the committed corpus in
# target/fuzz-corpus/<target>, so fuzz/corpus keeps only the seeds; crashes are saved
# under fuzz/artifacts/<target>. A full run gives every target FUZZ_RUNS inputs; with
# FUZZ_SECONDS set, each runs that long instead. Then schemathesis checks the API against
# its spec for FUZZ_SECONDS (15 minutes without it; `make test` gives it a minute).
FUZZ_TARGETS := api_route config_file ember_cli jailer_cli vsock_tx vsock_rx mmio_transport \
	block_request snapshot_state memory_merge uffd_handshake invocation_framing rt_server \
	rt_framing mmds_guest
FUZZ_RUNS ?= 1000000
FUZZ_SECONDS ?=
FUZZ_STOP = $(if $(FUZZ_SECONDS),-max_total_time=$(FUZZ_SECONDS),-runs=$(FUZZ_RUNS))

fuzz-build: deps
	@cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	cargo +nightly fuzz build

fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
		rm -rf target/fuzz-corpus/$$t && mkdir -p target/fuzz-corpus && \
		cp -r fuzz/corpus/$$t target/fuzz-corpus/$$t && \
		echo "fuzz: $$t ($(FUZZ_STOP))" && \
		cargo +nightly fuzz run $$t $(CURDIR)/target/fuzz-corpus/$$t -- \
			$(FUZZ_STOP) -timeout=10 -print_final_stats=1 || exit 1; \
	done
	EMBER_SCHEMATHESIS_SECONDS=$(or $(FUZZ_SECONDS),900) \
		cargo test --release --test api_schema

fuzz-short:
	$(MAKE) fuzz FUZZ_SECONDS=5
