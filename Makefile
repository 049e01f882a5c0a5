# mimi-ds-rm: the two commands a newcomer needs are `make demo` and `make test`.
CARGO ?= cargo
JOBS ?= 2
export CARGO_BUILD_JOBS := $(JOBS)

.PHONY: demo test test-both deps build lint fmt clean fuzz bench

# RocksDB's Rust bindings need clang/libclang (bindgen); install them when missing.
deps:
	@if ! command -v clang >/dev/null 2>&1 || ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then \
		echo "installing clang and libclang-dev (needed to build RocksDB bindings)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq clang libclang-dev; \
	fi
	@command -v python3 >/dev/null 2>&1 || { \
		echo "installing python3 (the one-build check and the benchmark summaries use it)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq python3; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		echo "installing postgresql (make test runs a throw-away cluster for the PostgreSQL backend)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

build: deps
	$(CARGO) build -j$(JOBS) --workspace --all-targets

demo: deps
	$(CARGO) run -j$(JOBS) -q -p mimi-rm-tests --bin mimi-rm-demo

# Every test once (hubs on RocksDB), then the suites the PostgreSQL backend must pass as well
# with every hub on PostgreSQL; the multi-process suite needs the cluster in both runs.
PG_SUITES ?= lifecycle:: bad_input:: privacy_pass:: seized_disk:: mangled:: stored_once::
test: deps
	.ci/with-postgres.sh $(MAKE) --no-print-directory test-both

test-both:
	$(CARGO) test -j$(JOBS) --workspace
	MIMI_TEST_STORAGE=postgres $(CARGO) test -j$(JOBS) --workspace --test e2e -- $(PG_SUITES)

lint: deps
	python3 .ci/one-build.py
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy -j$(JOBS) --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Benchmarks (results, machine and date in BENCHMARKS.md), in the release profile operators run.
# It compiles RocksDB once more (release, ~30 min on 2 cores, kept in target/release); the dev
# build that tests use is untouched. `cargo bench --profile release` and `cargo build --release`
# share one release build of every dependency.
# Arrival rates (application messages per second) of the load sweep; groups x members.
LOAD_RATES ?= 200,400,600,800,1000,1500,2000
# The same sweep with every message built before its run (the generator only sends), and beyond.
PREBUILT_RATES ?= 400,800,1200,1600,2000,2500,3000
LOAD_GROUPS ?= 20
LOAD_SIZE ?= 10

bench: deps
	@command -v curl >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq curl; }
	$(CARGO) build -j$(JOBS) --release --workspace --bins
	$(CARGO) bench -j$(JOBS) --workspace --profile release --bench ds_core --bench privacy_pass
	bench/load.sh $(LOAD_RATES) 10 $(LOAD_GROUPS) $(LOAD_SIZE) send=100
	PREBUILT=1 bench/load.sh $(PREBUILT_RATES) 10 $(LOAD_GROUPS) $(LOAD_SIZE) send=100
	bench/load.sh 50,100 10 $(LOAD_GROUPS) $(LOAD_SIZE) send=90,update=5,add=5
	bench/ohttp.sh 500
	MIMI_PG_FSYNC=on PREBUILT=1 .ci/with-postgres.sh bench/instances.sh 150,300,450,600 10 $(LOAD_GROUPS) $(LOAD_SIZE)
	python3 bench/summarize.py

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
