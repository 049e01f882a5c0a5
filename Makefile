# mimi-ds-rm: the two commands a newcomer needs are `make demo` and `make test`.
CARGO ?= cargo
JOBS ?= 2
export CARGO_BUILD_JOBS := $(JOBS)

.PHONY: demo test deps build lint fmt clean

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

clean:
	$(CARGO) clean
