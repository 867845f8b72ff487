# llmgw - build, run and test.
#   make            build ./llmgw (C99, warnings are errors)
#   make run        build and start on the example llmgw.ini
#   make test       unit + integration suites, then both again under ASan+UBSan
#   make symbols    check that llmgw.o exports only llmgw_* symbols
#   make TLS=0      build without TLS (no BearSSL needed; https upstreams refused)
# Fresh Debian machine: `sh .ci/deps.sh` installs what these need. With TLS=1
# (the default) vendor/bearssl.sh fetches BearSSL 0.6 (checksum-pinned) and
# builds it for $(CC) under build/bearssl/$(TARGET).

CC      ?= cc
CFLAGS  ?= -O2 -g
WARN    := -std=c99 -Wall -Wextra -Wshadow -Wconversion -Wno-sign-conversion -Wstrict-prototypes \
           -Wmissing-prototypes -Werror
LDLIBS  := -lpthread
SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
BUILD   := build
TLS     ?= 1
TARGET  ?= native
ifeq ($(TLS),1)
BEARSSL := $(BUILD)/bearssl/$(TARGET)
TLSDEF  := -DLLMGW_TLS=1 -isystem $(BEARSSL)/inc
TLSLIB  := $(BEARSSL)/libbearssl.a
endif

all: llmgw

llmgw: llmgw.c llmgw.h $(TLSLIB)
	$(CC) $(WARN) $(CFLAGS) $(TLSDEF) -o $@ llmgw.c $(TLSLIB) $(LDFLAGS) $(LDLIBS)

$(BUILD)/bearssl/%/libbearssl.a: FORCE
	@sh vendor/bearssl.sh CC="$(CC)" OUT=$(BUILD)/bearssl/$* >/dev/null

run: llmgw
	./llmgw -c llmgw.ini

$(BUILD)/llmgw-asan: llmgw.c llmgw.h $(TLSLIB)
	@mkdir -p $(BUILD)
	$(CC) $(WARN) -O1 -g $(SAN) $(TLSDEF) -o $@ llmgw.c $(TLSLIB) $(LDLIBS)

$(BUILD)/unit: tests/unit.c llmgw.c llmgw.h $(TLSLIB)
	@mkdir -p $(BUILD)
	$(CC) -std=c99 -Wall -Wextra -Werror -O1 -g $(TLSDEF) -o $@ tests/unit.c $(TLSLIB) $(LDLIBS)

$(BUILD)/unit-notls: tests/unit.c llmgw.c llmgw.h
	@mkdir -p $(BUILD)
	$(CC) -std=c99 -Wall -Wextra -Werror -O1 -g -o $@ tests/unit.c $(LDLIBS)

$(BUILD)/unit-asan: tests/unit.c llmgw.c llmgw.h $(TLSLIB)
	@mkdir -p $(BUILD)
	$(CC) -std=c99 -Wall -Wextra -Werror -O1 -g $(SAN) $(TLSDEF) -o $@ tests/unit.c $(TLSLIB) $(LDLIBS)

unit: $(BUILD)/unit
	$(BUILD)/unit

test: llmgw $(BUILD)/unit $(BUILD)/unit-notls $(BUILD)/unit-asan $(BUILD)/llmgw-asan
	sh tests/run.sh

symbols: llmgw.c llmgw.h $(TLSLIB)
	@mkdir -p $(BUILD)
	$(CC) $(WARN) -O2 -DLLMGW_NO_MAIN $(TLSDEF) -c -o $(BUILD)/llmgw.o llmgw.c
	@bad=$$(nm -g --defined-only $(BUILD)/llmgw.o | awk '{print $$3}' | grep -v '^llmgw_' || true); \
	if [ -n "$$bad" ]; then echo "exported symbols without the llmgw_ prefix: $$bad"; exit 1; fi; \
	echo "symbols: only llmgw_* exported"

clean:
	rm -rf llmgw $(BUILD)/llmgw-asan $(BUILD)/unit $(BUILD)/unit-asan $(BUILD)/llmgw.o

.PHONY: all run unit test symbols clean FORCE
FORCE:
