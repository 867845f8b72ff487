# llmgw - build, run and test.
#   make            build ./llmgw (C99, warnings are errors)
#   make run        build and start on the example llmgw.ini
#   make test       every suite of tests/run.sh (unit, integration, ASan+UBSan, TSan,
#                   the cross builds under qemu-user, embedding, rootfs, memory limit)
#   make symbols    check that llmgw.o exports only llmgw_* symbols
#   make TLS=0      build without TLS (no BearSSL needed; https upstreams refused)
#   make cross      static, stripped, TLS-enabled binaries for every CROSS_TARGETS
#                   entry: build/<target>/llmgw (make cross-aarch64, cross-mips, ...)
#   make rootfs     the FROM-scratch image's file tree in build/rootfs (see Dockerfile;
#                   ROOTFS_PRICES=1 adds the genai-prices catalog)
#   make prices     build/genai-prices.json: the price catalog (vendor/genai-prices.sh)
#   make embed-test tests/embed.c: two embedded gateways in one host program (+ ASan)
#   make measure    size and memory table of every built target (tests/measure.py)
#   make bench      llmgw vs nginx vs direct-to-mock, chat and Responses streams (tests/bench/, ~6 min, not in make test)
#   make fuzz       libFuzzer (clang) on every tests/fuzz.c target, FUZZ_TIME s each (default
#                   60), new coverage and crash inputs kept in tests/corpus/ (tests/fuzz.sh;
#                   FUZZ_TARGETS="http json" picks targets; not in make test)
# Fresh Debian machine: `sh .ci/deps.sh` installs what these need. With TLS=1
# (the default) vendor/bearssl.sh fetches BearSSL 0.6 (checksum-pinned) and
# builds it for $(CC) under build/bearssl/$(TARGET), and for each cross
# target with that target's compiler under build/bearssl/<target>.

CC      ?= cc
CFLAGS  ?= -O2 -g
WARN    := -std=c99 -Wall -Wextra -Wshadow -Wconversion -Wno-sign-conversion -Wstrict-prototypes \
           -Wmissing-prototypes -Werror
LDLIBS  := -lpthread
SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
# ThreadSanitizer (build/llmgw-tsan, for workers = N: event loops in threads), with clang
TSAN_CC ?= clang
TSAN    := -fsanitize=thread -fno-omit-frame-pointer
BUILD   := build
TLS     ?= 1
TARGET  ?= native
ifeq ($(TLS),1)
BEARSSL := $(BUILD)/bearssl/$(TARGET)
TLSDEF  := -DLLMGW_TLS=1 -isystem $(BEARSSL)/inc
TLSLIB  := $(BEARSSL)/libbearssl.a
endif

# ---- cross targets ---------------------------------------------------------
# Each target: its compiler and its strip (tests/run.sh and tests/measure.py
# run them with qemu-<arch>-static or qemu-<arch>: aarch64, arm, mipsel, mips;
# x86_64-musl runs natively). Always static, stripped, -Os, with TLS.
CROSS_TARGETS := aarch64 armhf mipsel mips x86_64-musl
XCC_aarch64       := aarch64-linux-gnu-gcc
XCC_armhf         := arm-linux-gnueabihf-gcc
XCC_mipsel        := mipsel-linux-gnu-gcc
XCC_mips          := mips-linux-gnu-gcc
XCC_x86_64-musl   := musl-gcc
XSTRIP_aarch64     := aarch64-linux-gnu-strip
XSTRIP_armhf       := arm-linux-gnueabihf-strip
XSTRIP_mipsel      := mipsel-linux-gnu-strip
XSTRIP_mips        := mips-linux-gnu-strip
XSTRIP_x86_64-musl := strip
# 32-bit glibc targets: 64-bit time_t and off_t (BearSSL checks certificate
# dates with time(NULL): with a 32-bit time_t that breaks in 2038)
XDEFS_armhf        := -D_FILE_OFFSET_BITS=64 -D_TIME_BITS=64
XDEFS_mipsel       := -D_FILE_OFFSET_BITS=64 -D_TIME_BITS=64
XDEFS_mips         := -D_FILE_OFFSET_BITS=64 -D_TIME_BITS=64
# no unwind tables: C only, no pthread_cancel, and 12 KB less in the musl binary
XCFLAGS  := -Os -ffunction-sections -fdata-sections -fno-asynchronous-unwind-tables -fno-unwind-tables
XLDFLAGS := -static -Wl,--gc-sections
# Static glibc warns at link time that getaddrinfo "requires at runtime the
# shared libraries from the glibc version used for linking". Since glibc 2.34
# the files and dns NSS sources are built into libc, so upstream host names
# (localhost via /etc/hosts, DNS via /etc/resolv.conf) resolve in these static
# binaries all the same; only other nsswitch.conf sources (mdns, myhostname,
# ...) would be skipped. The warning is expected.
# The unit tests of each target (tests/unit.c includes llmgw.c) are built the
# way build/unit is, plus -static.
CROSS_BINS  := $(CROSS_TARGETS:%=$(BUILD)/%/llmgw)
CROSS_UNITS := $(CROSS_TARGETS:%=$(BUILD)/%/unit)
# The targets `make test` builds and tests (tests/run.sh): unit-<target> for
# each, integration-<target> for x86_64-musl and for EMU_TARGETS (default
# "mips aarch64") under qemu-user, rootfs and memlimit with x86_64-musl.
# `make test CROSS_TEST=` leaves them all out (no cross compilers at hand).
CROSS_TEST  ?= $(CROSS_TARGETS)
# a compiler for every BearSSL output dir: the target's own, else $(CC)
bearssl_cc     = $(if $(XCC_$(1)),$(XCC_$(1)),$(CC))
bearssl_cflags = $(if $(XCC_$(1)),CFLAGS="$(strip $(XCFLAGS) $(XDEFS_$(1)))")

all: llmgw

llmgw: llmgw.c llmgw.h $(TLSLIB)
	$(CC) $(WARN) $(CFLAGS) $(TLSDEF) -o $@ llmgw.c $(TLSLIB) $(LDFLAGS) $(LDLIBS)

# Always ask the recipe: it returns at once and leaves libbearssl.a untouched
# when it is up to date, so what links it is only rebuilt when it changed.
# Its report (stderr) is shown when it built something or failed.
$(BUILD)/bearssl/%/libbearssl.a: FORCE
	@command -v $(firstword $(call bearssl_cc,$*)) >/dev/null 2>&1 || \
	  { echo "$(firstword $(call bearssl_cc,$*)) not found: sh .ci/deps.sh installs it"; exit 1; }
	@out=$$(sh vendor/bearssl.sh CC="$(call bearssl_cc,$*)" $(call bearssl_cflags,$*) \
	  OUT=$(BUILD)/bearssl/$* 2>&1 >/dev/null) || { printf '%s\n' "$$out" >&2; exit 1; }; \
	case "$$out" in *"up to date"*) ;; *) printf '%s\n' "$$out" | grep -v 'headers:\|use:' >&2 ;; esac

cross: $(CROSS_BINS)
	@for t in $(CROSS_TARGETS); do ls -l $(BUILD)/$$t/llmgw; done

$(CROSS_TARGETS:%=cross-%): cross-%: $(BUILD)/%/llmgw

$(CROSS_BINS): $(BUILD)/%/llmgw: llmgw.c llmgw.h $(BUILD)/bearssl/%/libbearssl.a
	@mkdir -p $(@D)
	$(XCC_$*) $(WARN) $(XCFLAGS) $(XDEFS_$*) -DLLMGW_TLS=1 -isystem $(BUILD)/bearssl/$*/inc $(XLDFLAGS) \
	  -o $@ llmgw.c $(BUILD)/bearssl/$*/libbearssl.a $(LDLIBS)
	$(XSTRIP_$*) $@

$(CROSS_UNITS): $(BUILD)/%/unit: tests/unit.c tests/testlib.h llmgw.c llmgw.h $(BUILD)/bearssl/%/libbearssl.a
	@mkdir -p $(@D)
	$(XCC_$*) -std=c99 -Wall -Wextra -Werror -O1 -g $(XDEFS_$*) -DLLMGW_TLS=1 -isystem $(BUILD)/bearssl/$*/inc \
	  -static -o $@ tests/unit.c $(BUILD)/bearssl/$*/libbearssl.a $(LDLIBS)

run: llmgw
	./llmgw -c llmgw.ini

$(BUILD)/llmgw-asan: llmgw.c llmgw.h $(TLSLIB)
	@mkdir -p $(BUILD)
	$(CC) $(WARN) -O1 -g $(SAN) $(TLSDEF) -o $@ llmgw.c $(TLSLIB) $(LDLIBS)

$(BUILD)/llmgw-tsan: llmgw.c llmgw.h $(TLSLIB)
	@mkdir -p $(BUILD)
	$(TSAN_CC) $(WARN) -O1 -g $(TSAN) $(TLSDEF) -o $@ llmgw.c $(TLSLIB) $(LDLIBS)

$(BUILD)/unit: tests/unit.c tests/testlib.h llmgw.c llmgw.h $(TLSLIB)
	@mkdir -p $(BUILD)
	$(CC) -std=c99 -Wall -Wextra -Werror -O1 -g $(TLSDEF) -o $@ tests/unit.c $(TLSLIB) $(LDLIBS)

$(BUILD)/unit-notls: tests/unit.c tests/testlib.h llmgw.c llmgw.h
	@mkdir -p $(BUILD)
	$(CC) -std=c99 -Wall -Wextra -Werror -O1 -g -o $@ tests/unit.c $(LDLIBS)

$(BUILD)/unit-asan: tests/unit.c tests/testlib.h llmgw.c llmgw.h $(TLSLIB)
	@mkdir -p $(BUILD)
	$(CC) -std=c99 -Wall -Wextra -Werror -O1 -g $(SAN) $(TLSDEF) -o $@ tests/unit.c $(TLSLIB) $(LDLIBS)

unit: $(BUILD)/unit
	$(BUILD)/unit

# ---- embedding: tests/embed.c drives two gateways through llmgw.h ----------
$(BUILD)/embed: tests/embed.c llmgw.c llmgw.h $(TLSLIB)
	@mkdir -p $(BUILD)
	$(CC) $(WARN) -O2 -g -DLLMGW_NO_MAIN $(TLSDEF) -c -o $(BUILD)/embed-llmgw.o llmgw.c
	$(CC) $(WARN) -O2 -g -c -o $(BUILD)/embed.o tests/embed.c
	$(CC) -o $@ $(BUILD)/embed.o $(BUILD)/embed-llmgw.o $(TLSLIB) $(LDLIBS)

$(BUILD)/embed-asan: tests/embed.c llmgw.c llmgw.h $(TLSLIB)
	@mkdir -p $(BUILD)
	$(CC) $(WARN) -O1 -g $(SAN) -DLLMGW_NO_MAIN $(TLSDEF) -c -o $(BUILD)/embed-asan-llmgw.o llmgw.c
	$(CC) $(WARN) -O1 -g $(SAN) -c -o $(BUILD)/embed-asan.o tests/embed.c
	$(CC) $(SAN) -o $@ $(BUILD)/embed-asan.o $(BUILD)/embed-asan-llmgw.o $(TLSLIB) $(LDLIBS)

embed-test: $(BUILD)/embed $(BUILD)/embed-asan
	$(BUILD)/embed
	$(BUILD)/embed-asan

# ---- the FROM-scratch image as a folder ------------------------------------
# build/rootfs: /llmgw (x86_64 musl, static), /etc/ssl/certs/ca-certificates.crt,
# /etc/llmgw/llmgw.ini (dist/llmgw.ini with its listen line set to
# ROOTFS_LISTEN). The Dockerfile runs `make rootfs ROOTFS_LISTEN=0.0.0.0:8080`
# and copies the folder into a scratch image. ROOTFS_PRICES=1 adds the price catalog
# (vendor/genai-prices.sh) as /etc/llmgw/genai-prices.json, for `prices = /etc/llmgw/genai-prices.json`.
ROOTFS        ?= $(BUILD)/rootfs
ROOTFS_PRICES ?= 0
ROOTFS_LISTEN ?= 127.0.0.1:8080
CA_BUNDLE     ?= /etc/ssl/certs/ca-certificates.crt
rootfs: $(BUILD)/x86_64-musl/llmgw dist/llmgw.ini
	@test -s $(CA_BUNDLE) || { echo "rootfs: no CA bundle at $(CA_BUNDLE) (package ca-certificates, or CA_BUNDLE=...)"; exit 1; }
	rm -rf $(ROOTFS)
	mkdir -p $(ROOTFS)/etc/ssl/certs $(ROOTFS)/etc/llmgw
	cp $(BUILD)/x86_64-musl/llmgw $(ROOTFS)/llmgw
	cp $(CA_BUNDLE) $(ROOTFS)/etc/ssl/certs/ca-certificates.crt
	sed 's/^listen *=.*/listen = $(ROOTFS_LISTEN)/' dist/llmgw.ini >$(ROOTFS)/etc/llmgw/llmgw.ini
	chmod 755 $(ROOTFS)/llmgw
	chmod 644 $(ROOTFS)/etc/ssl/certs/ca-certificates.crt $(ROOTFS)/etc/llmgw/llmgw.ini
	@if [ "$(ROOTFS_PRICES)" = 1 ]; then sh vendor/genai-prices.sh && \
	  install -m 644 $(BUILD)/genai-prices.json $(ROOTFS)/etc/llmgw/genai-prices.json; fi
	@find $(ROOTFS) -type f -exec ls -l {} +

# ---- tests -----------------------------------------------------------------
$(BUILD)/fuzz-replay: tests/fuzz.c tests/testlib.h llmgw.c llmgw.h
	@mkdir -p $(BUILD)
	$(CC) -std=c99 -Wall -Wextra -Werror -O1 -g $(SAN) -o $@ tests/fuzz.c $(LDLIBS)

# the translators against tests/golden/ (GOLDEN_UPDATE=1 build/golden rewrites the expected files)
$(BUILD)/golden: tests/golden.c tests/testlib.h llmgw.c llmgw.h
	@mkdir -p $(BUILD)
	$(CC) -std=c99 -Wall -Wextra -Werror -O1 -g $(SAN) -o $@ tests/golden.c $(LDLIBS)

# bounded libFuzzer run; builds its own build/fuzz-<target> binaries with FUZZ_CC
FUZZ_TIME    ?= 60
FUZZ_TARGETS ?=
FUZZ_CC      ?= clang
fuzz:
	FUZZ_TIME="$(FUZZ_TIME)" FUZZ_TARGETS="$(FUZZ_TARGETS)" FUZZ_CC="$(FUZZ_CC)" sh tests/fuzz.sh

bench: llmgw
	sh tests/bench/run.sh

bench-profile: llmgw
	sh tests/bench/run.sh --profile

test: llmgw $(BUILD)/unit $(BUILD)/unit-notls $(BUILD)/unit-asan $(BUILD)/llmgw-asan $(BUILD)/llmgw-tsan $(BUILD)/fuzz-replay \
      $(BUILD)/embed $(BUILD)/embed-asan $(CROSS_TEST:%=$(BUILD)/%/llmgw) $(CROSS_TEST:%=$(BUILD)/%/unit) $(BUILD)/golden
	CROSS_TEST="$(CROSS_TEST)" sh tests/run.sh

measure: $(CROSS_BINS) llmgw
	python3 tests/measure.py

# every function in the section whose contents line lists its prefix
sections: llmgw.c
	python3 tests/sections.py llmgw.c
	python3 tests/sections.py --self-test llmgw.c

symbols: llmgw.c llmgw.h $(TLSLIB)
	@mkdir -p $(BUILD)
	$(CC) $(WARN) -O2 -DLLMGW_NO_MAIN $(TLSDEF) -c -o $(BUILD)/llmgw.o llmgw.c
	@bad=$$(nm -g --defined-only $(BUILD)/llmgw.o | awk '{print $$3}' | grep -v '^llmgw_' || true); \
	if [ -n "$$bad" ]; then echo "exported symbols without the llmgw_ prefix: $$bad"; exit 1; fi; \
	echo "symbols: only llmgw_* exported"

clean:
	rm -rf llmgw $(BUILD)/llmgw-asan $(BUILD)/llmgw-tsan $(BUILD)/golden $(BUILD)/unit $(BUILD)/unit-notls $(BUILD)/unit-asan $(BUILD)/llmgw.o \
	  $(BUILD)/embed $(BUILD)/embed-asan $(BUILD)/embed*.o $(CROSS_TARGETS:%=$(BUILD)/%) \
	  $(BUILD)/rootfs $(BUILD)/rootfs-port $(BUILD)/rootfs-docker $(BUILD)/test-* $(BUILD)/measure-*

prices:
	sh vendor/genai-prices.sh

.PHONY: prices all run unit test fuzz symbols sections clean cross $(CROSS_TARGETS:%=cross-%) rootfs embed-test measure bench bench-profile FORCE
FORCE:
