# mimi-ds-rm: the two commands a newcomer needs are `make demo` and `make test`.
CARGO ?= cargo
JOBS ?= 2
export CARGO_BUILD_JOBS := $(JOBS)

.PHONY: demo test deps build lint fmt clean fuzz bench

# RocksDB's Rust bindings need clang/libclang (bindgen); install them when missing.
deps:
	@if ! command -v clang >/dev/null 2>&1 || ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then \
		echo "installing clang and libclang-dev (needed to build RocksDB bindings)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq clang libclang-dev; \
	fi

build: deps
	$(CARGO) build -j$(JOBS) --workspace --all-targets

demo: deps
	$(CARGO) run -j$(JOBS) -q -p mimi-rm-tests --bin mimi-rm-demo

test: deps
	$(CARGO) test -j$(JOBS) --workspace

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy -j$(JOBS) --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Criterion benchmarks (results and machine in BENCHMARKS.md). The dev profile (dependencies at
# opt-level 2) reuses the test build; a release profile would first compile RocksDB again.
bench: deps
	$(CARGO) bench -j$(JOBS) --workspace --profile dev --bench privacy_pass

# Seconds per fuzz target; `make fuzz FUZZ_SECONDS=600` for a longer run. Not part of CI (time).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := envelope ds_request qs_request as_request s2s_envelope \
	add_package_and_credentials queue_message privacy_pass

# Runs every cargo-fuzz target in fuzz/ for FUZZ_SECONDS each. cargo-fuzz passes nightly-only
# flags (sanitizers); RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. Its own target dir
# (fuzz/target) never contains RocksDB.
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz
	@for t in $(FUZZ_TARGETS); do \
		echo "== fuzz $$t ($(FUZZ_SECONDS) s)"; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --fuzz-dir fuzz --target-dir fuzz/target $$t -- \
			-max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; \
	done

clean:
	$(CARGO) clean
