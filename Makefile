# bcachefs-lite — targets a newcomer can guess.
#   make demo    build, mount a demo tree with a cache, show cold vs warm reads and stats
#   make test    install what is missing (fuse3, git, pjdfstest, ...), then run every test
#   make pjdfstest  the POSIX suite (crate pjdfstest) through a mount with a cache and on a
#                plain /tmp directory, side by side (root; tests/conformance/pjdfstest.sh)
#   make fsx     long differential random-op runs of tests/fsx.rs (BCL_FSX_OPS per config, BCL_FSX_SEEDS)
#   make fuzz    cargo-fuzz on every decoder, FUZZ_SECONDS (60) each (nightly; installs cargo-fuzz)
#   make torture long crash / corruption runs (BCL_TORTURE_ROUNDS, default 100)
#   make soak    fio with verify through a mount (cache 1/8 of the working set) with outside
#                rewrites, for SOAK_SECONDS (120); prints daemon RSS / descriptors over time
#   make lint    rustfmt check and clippy with -D warnings
#   make bench   benchmarks against backing/ssd/bindfs/rclone (bench-quick: 2-3 min; see bench/README.md)
#   make sim     the trace simulator (bench/sim.rs): every replacement policy and the default
#                probation admission against Belady's OPT; writes bench/results/sim.md (~1-2 min)
#   make bench-scale  a walk of 1,000,000 files under ulimit -n 1024 (BCL_SCALE_FILES=N)
#   make install / uninstall   PREFIX (default /usr/local) and DESTDIR honoured
#   make deb     a Debian package in $(DEBDIR) (installs dpkg-dev if missing)

CARGO  ?= cargo
PREFIX ?= /usr/local
DESTDIR ?=

# Install layout. mount(8) (libmount) looks for mount.<type> helpers only in
# /sbin, /sbin/fs.d and /sbin/fs, whatever PREFIX is: the helper is installed in
# SBINDIR and, when MOUNT_HELPER_DIR is another directory, linked from there.
# MOUNT_HELPER_DIR= (empty) installs no link (a private prefix for tests).
BINDIR           ?= $(PREFIX)/bin
SBINDIR          ?= $(PREFIX)/sbin
MANDIR           ?= $(PREFIX)/share/man
DOCDIR           ?= $(PREFIX)/share/doc/bcachefs-lite
SYSTEMD_UNIT_DIR ?= $(PREFIX)/lib/systemd/system
MOUNT_HELPER_DIR ?= /sbin
HELPER           := mount.fuse.bcachefs-lite

# The binary to install or package. By default it is built with PROFILE
# (release or debug) in CARGO_TARGET_DIR; BINARY=path installs that file as it
# is, without building (the tests use their own debug build this way).
PROFILE    ?= release
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
BINARY     ?=
DEBDIR     ?= $(TARGET_DIR)/debian

.PHONY: all build release demo test test-only fsx fuzz torture soak lint deps fmt clean \
	install uninstall bin deb deb-deps bench bench-quick bench-scale sim pjdfstest pjdfstest-install

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# Debian packages the tests and the demo use; installed only when missing.
DEB_DEPS = fuse3 git tar util-linux coreutils procps attr man-db fio curl tmux python3 python3-prometheus-client

deps:
	@missing=""; for p in $(DEB_DEPS); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq -o DPkg::Lock::Timeout=300 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 $$missing; \
	fi
	@[ -e /dev/fuse ] || modprobe fuse || { echo "no /dev/fuse: load the fuse module"; exit 1; }
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup)"; exit 1; }

demo: deps release
	bash bench/demo.sh

test: deps pjdfstest-install test-only

# The Rust port of pjdfstest, from crates.io, installed once into ~/.cargo/bin.
PJDFSTEST ?= $(or $(shell command -v pjdfstest 2>/dev/null),$(HOME)/.cargo/bin/pjdfstest)

pjdfstest-install:
	@[ -x "$(PJDFSTEST)" ] || $(CARGO) install --locked pjdfstest

# Runs as root; unmounts only its own mount, also on failure. Logs in $(TARGET_DIR)/pjdfstest.
pjdfstest: deps pjdfstest-install build
	BIN=$(TARGET_DIR)/debug/bcachefs-lite PJDFSTEST=$(PJDFSTEST) PJD_LOGS=$(TARGET_DIR)/pjdfstest \
	    bash tests/conformance/pjdfstest.sh

SHELL := /bin/bash

test-only:
	mkdir -p $(TARGET_DIR)
	$(CARGO) test --no-fail-fast 2>&1 | tee $(TARGET_DIR)/test.log; rc=$${PIPESTATUS[0]}; \
	skipped=$$(grep -c 'SKIPPED (not root)' $(TARGET_DIR)/test.log); \
	if [ "$$skipped" -gt 0 ]; then echo "$$skipped mount tests were SKIPPED: not run as root"; fi; \
	exit $$rc

# tests/fsx.rs for longer: every configuration, each seed in turn (make test runs it short).
# Other BCL_FSX_* knobs (CONFIG, EXTERNAL, MMAP, SKIP, ...) pass through from the environment.
BCL_FSX_OPS   ?= 20000
BCL_FSX_SEEDS ?= 0xf5c02024 0x1f2e3d4c 0x7a11c0de

fsx: deps
	@fail=0; for s in $(BCL_FSX_SEEDS); do \
	    echo "== fsx: seed $$s, $(BCL_FSX_OPS) ops per configuration"; \
	    BCL_FSX_SEED=$$s BCL_FSX_OPS=$(BCL_FSX_OPS) $(CARGO) test --test fsx -- --nocapture || fail=1; \
	done; exit $$fail

# cargo-fuzz targets (fuzz/, nightly), each for FUZZ_SECONDS, from the committed corpus
# (fuzz/corpus/TARGET, read-only) plus a working corpus in fuzz/target/corpus; a malloc over
# FUZZ_MALLOC_MB is a failure, as is any panic. make test runs the same harnesses briefly on
# stable (tests/decoders.rs).
FUZZ_SECONDS   ?= 60
FUZZ_MALLOC_MB ?= 64
FUZZ_TARGETS   ?= superblock journal_entry gens_part index_checkpoint mount_options
CARGO_FUZZ     ?= $(or $(shell command -v cargo-fuzz 2>/dev/null),$(HOME)/.cargo/bin/cargo-fuzz)

fuzz:
	@[ -x "$(CARGO_FUZZ)" ] || $(CARGO) install --locked cargo-fuzz
	@cd fuzz && for t in $(FUZZ_TARGETS); do \
	    mkdir -p target/corpus/$$t && \
	    echo "== fuzz $$t for $(FUZZ_SECONDS) s" && \
	    $(CARGO) +nightly fuzz run $$t target/corpus/$$t corpus/$$t -- \
	        -max_total_time=$(FUZZ_SECONDS) -malloc_limit_mb=$(FUZZ_MALLOC_MB) -print_final_stats=1 \
	        2>&1 | tee target/fuzz-$$t.log | grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|==|SUMMARY|INFO: seed)' ; \
	    [ $${PIPESTATUS[0]} -eq 0 ] || exit 1; \
	done

# Long runs of the crash torture (tests/torture.rs), the whole-file corruption test
# (tests/corruption.rs), the decoder pass (tests/decoders.rs) and writeback's SIGKILL test
# (tests/writeback.rs, BCL_WB_CRASH_ROUNDS, 20 in make test); make test runs them short.
BCL_TORTURE_ROUNDS ?= 100

torture: deps
	BCL_TORTURE_ROUNDS=$(BCL_TORTURE_ROUNDS) BCL_CORRUPT_ROUNDS=$(BCL_TORTURE_ROUNDS) \
	BCL_DECODER_CASES=$$(( $(BCL_TORTURE_ROUNDS) * 100 )) \
	BCL_WB_CRASH_ROUNDS=$$(( $(BCL_TORTURE_ROUNDS) * 2 )) \
	    $(CARGO) test --test torture --test corruption --test decoders --test writeback -- --nocapture

# The soak (tests/soak.rs) for longer; make test runs it for 15 s.
SOAK_SECONDS ?= 120

soak: deps
	BCL_SOAK_SECONDS=$(SOAK_SECONDS) $(CARGO) test --test soak -- --nocapture

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

# The trace simulator: real allocator, index and admission on an in-memory device, no FUSE.
# A debug build is fast enough (SIM_ARGS=--quick for a shorter run).
SIM_ARGS ?=
sim:
	mkdir -p bench/results
	$(CARGO) run --example sim -- --out bench/results/sim.md $(SIM_ARGS)

# Not part of make test: generates BCL_SCALE_FILES (1,000,000) files under BCL_SCALE_DIR
# (/var/tmp) and walks them cold and warm, locally and through a mount limited to 1024
# descriptors; results in bench/results/scale.md.
bench-scale: deps release
	BIN=$(BENCH_BIN) bash bench/scale.sh

clean:
	$(CARGO) clean

# --- installing --------------------------------------------------------------

CARGO_PROFILE_FLAG = $(if $(filter release,$(PROFILE)),--release,$(if $(filter debug,$(PROFILE)),,--profile $(PROFILE)))
BUILT_BINARY = $(or $(BINARY),$(TARGET_DIR)/$(PROFILE)/bcachefs-lite)

bin:
ifeq ($(BINARY),)
	$(CARGO) build $(CARGO_PROFILE_FLAG)
else
	@test -x "$(BINARY)" || { echo "BINARY=$(BINARY): not an executable file"; exit 1; }
endif

MAN_PAGES = docs/bcachefs-lite.8 docs/mount.fuse.bcachefs-lite.8

install: bin
	install -d "$(DESTDIR)$(BINDIR)" "$(DESTDIR)$(SBINDIR)" "$(DESTDIR)$(MANDIR)/man8" \
	    "$(DESTDIR)$(SYSTEMD_UNIT_DIR)" "$(DESTDIR)$(DOCDIR)/examples"
	install -m 0755 "$(BUILT_BINARY)" "$(DESTDIR)$(BINDIR)/bcachefs-lite"
	sed 's|@BINDIR@|$(BINDIR)|g' mount-helper/$(HELPER) > "$(DESTDIR)$(SBINDIR)/$(HELPER).tmp"
	chmod 0755 "$(DESTDIR)$(SBINDIR)/$(HELPER).tmp"
	mv -f "$(DESTDIR)$(SBINDIR)/$(HELPER).tmp" "$(DESTDIR)$(SBINDIR)/$(HELPER)"
	@if [ -n "$(MOUNT_HELPER_DIR)" ]; then \
	    install -d "$(DESTDIR)$(MOUNT_HELPER_DIR)"; \
	    if [ "$(DESTDIR)$(MOUNT_HELPER_DIR)" -ef "$(DESTDIR)$(SBINDIR)" ]; then :; \
	    else echo "ln -sfn $(SBINDIR)/$(HELPER) $(DESTDIR)$(MOUNT_HELPER_DIR)/$(HELPER)"; \
	        ln -sfn "$(SBINDIR)/$(HELPER)" "$(DESTDIR)$(MOUNT_HELPER_DIR)/$(HELPER)"; fi; \
	fi
	install -m 0644 $(MAN_PAGES) "$(DESTDIR)$(MANDIR)/man8/"
	sed 's|@BINDIR@|$(BINDIR)|g' packaging/systemd/bcachefs-lite@.service \
	    > "$(DESTDIR)$(SYSTEMD_UNIT_DIR)/bcachefs-lite@.service"
	chmod 0644 "$(DESTDIR)$(SYSTEMD_UNIT_DIR)/bcachefs-lite@.service"
	install -m 0644 README.md CHANGELOG.md docs/ADMIN.md "$(DESTDIR)$(DOCDIR)/"
	install -m 0644 packaging/examples/fstab packaging/examples/src.conf "$(DESTDIR)$(DOCDIR)/examples/"

# Removes exactly what install put there; the helper link only if it is ours.
uninstall:
	rm -f "$(DESTDIR)$(BINDIR)/bcachefs-lite" "$(DESTDIR)$(SBINDIR)/$(HELPER)"
	@link="$(DESTDIR)$(MOUNT_HELPER_DIR)/$(HELPER)"; \
	if [ -n "$(MOUNT_HELPER_DIR)" ] && [ -L "$$link" ] && \
	    [ "$$(readlink "$$link")" = "$(SBINDIR)/$(HELPER)" ]; then rm -f "$$link"; fi
	rm -f $(addprefix "$(DESTDIR)$(MANDIR)/man8/,$(addsuffix ",$(notdir $(MAN_PAGES))))
	rm -f "$(DESTDIR)$(SYSTEMD_UNIT_DIR)/bcachefs-lite@.service"
	rm -f "$(DESTDIR)$(DOCDIR)/README.md" "$(DESTDIR)$(DOCDIR)/CHANGELOG.md" \
	    "$(DESTDIR)$(DOCDIR)/ADMIN.md" "$(DESTDIR)$(DOCDIR)/examples/fstab" \
	    "$(DESTDIR)$(DOCDIR)/examples/src.conf"
	-rmdir "$(DESTDIR)$(DOCDIR)/examples" "$(DESTDIR)$(DOCDIR)" 2>/dev/null

# --- the Debian package ------------------------------------------------------

VERSION  := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)
DEB_REV  ?= 1
DEB_STAGE = $(DEBDIR)/stage

deb-deps:
	@missing=""; for p in dpkg-dev binutils gzip; do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq -o DPkg::Lock::Timeout=300 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 $$missing; \
	fi

# Stages an install into $(DEB_STAGE) with Debian's layout (helper in /sbin, as
# fuse3 has mount.fuse3 there; units in /lib/systemd/system on Debian 12), then
# builds $(DEBDIR)/bcachefs-lite_VERSION-REV_ARCH.deb with dpkg-deb.
deb: deb-deps bin
	rm -rf "$(DEB_STAGE)"
	$(MAKE) --no-print-directory install BINARY="$(abspath $(BUILT_BINARY))" DESTDIR="$(abspath $(DEB_STAGE))" \
	    PREFIX=/usr SBINDIR=/sbin MOUNT_HELPER_DIR=/sbin SYSTEMD_UNIT_DIR=/lib/systemd/system
	strip --remove-section=.comment --remove-section=.note --strip-unneeded \
	    "$(DEB_STAGE)/usr/bin/bcachefs-lite"
	gzip -9n "$(DEB_STAGE)/usr/share/man/man8/"*.8
	mv "$(DEB_STAGE)/usr/share/doc/bcachefs-lite/CHANGELOG.md" "$(DEB_STAGE)/usr/share/doc/bcachefs-lite/changelog"
	gzip -9n "$(DEB_STAGE)/usr/share/doc/bcachefs-lite/changelog"
	install -D -m 0644 packaging/debian/lintian-overrides \
	    "$(DEB_STAGE)/usr/share/lintian/overrides/bcachefs-lite"
	install -m 0644 packaging/debian/copyright "$(DEB_STAGE)/usr/share/doc/bcachefs-lite/copyright"
	sed 's|@VERSION@|$(VERSION)-$(DEB_REV)|' packaging/debian/changelog | gzip -9n \
	    > "$(DEB_STAGE)/usr/share/doc/bcachefs-lite/changelog.Debian.gz"
	chmod 0644 "$(DEB_STAGE)/usr/share/doc/bcachefs-lite/changelog.Debian.gz"
	install -d -m 0755 "$(DEB_STAGE)/DEBIAN"
	cd "$(DEB_STAGE)" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
	    | xargs -0 md5sum > DEBIAN/md5sums && chmod 0644 DEBIAN/md5sums
	shlibs=$$(packaging/shlibdeps "$(DEB_STAGE)/usr/bin/bcachefs-lite"); \
	size=$$(du -sk --exclude=DEBIAN "$(DEB_STAGE)" | cut -f1); \
	sed -e 's|@VERSION@|$(VERSION)-$(DEB_REV)|' -e "s|@ARCH@|$$(dpkg --print-architecture)|" \
	    -e "s|@SIZE@|$$size|" -e "s|@SHLIBS@|$$shlibs|" packaging/debian/control.in \
	    > "$(DEB_STAGE)/DEBIAN/control"
	dpkg-deb --root-owner-group -Zxz --build "$(DEB_STAGE)" \
	    "$(DEBDIR)/bcachefs-lite_$(VERSION)-$(DEB_REV)_$$(dpkg --print-architecture).deb"
