# bcachefs-lite — targets a newcomer can guess.
#   make demo    build, mount a demo tree with a cache, show cold vs warm reads and stats
#   make test    install what is missing (fuse3, git, ...), then run every test
#   make lint    rustfmt check and clippy with -D warnings
#   make bench   benchmarks against backing/ssd/bindfs/rclone (bench-quick: 2-3 min; see bench/README.md)

CARGO  ?= cargo
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: all build release demo test test-only lint deps fmt clean bench bench-quick

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# Debian packages the tests and the demo use; installed only when missing.
DEB_DEPS = fuse3 git tar util-linux coreutils procps attr

deps:
	@missing=""; for p in $(DEB_DEPS); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@[ -e /dev/fuse ] || modprobe fuse || { echo "no /dev/fuse: load the fuse module"; exit 1; }
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup)"; exit 1; }

demo: deps release
	bash bench/demo.sh

test: deps test-only

SHELL := /bin/bash

test-only:
	$(CARGO) test --no-fail-fast 2>&1 | tee target/test.log; exit $${PIPESTATUS[0]}

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Benchmarks against backing / ssd / bindfs / rclone on a throttled loop device (root; see
# bench/README.md for the knobs). Results go to bench/results/{full,quick}/.
BENCH_BIN ?= $(or $(CARGO_TARGET_DIR),target)/release/bcachefs-lite

bench: deps release
	BIN=$(BENCH_BIN) /usr/bin/python3 bench/bench.py

bench-quick: deps release
	BIN=$(BENCH_BIN) /usr/bin/python3 bench/bench.py --quick

clean:
	$(CARGO) clean
