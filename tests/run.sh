#!/bin/sh
# Runs every test suite of llmgw and ends with one line "N passed, N failed".
# Each suite prints its own "N passed, N failed" line; a suite that dies
# without one counts as one failure. Called by `make test` (which builds the
# binaries first) and by .ci/run.
#   sh tests/run.sh            all suites
#   SUITES="unit integration" sh tests/run.sh    only those
# Cross targets (built by `make test`, see the Makefile): unit-<target> runs
# tests/unit.c built for each of CROSS_TEST (under qemu-user except
# x86_64-musl); integration-<target> runs tests/integration.py against the
# target's gateway for x86_64-musl and for each of EMU_TARGETS under qemu-user
# (LLMGW_WRAP). A suite whose qemu cannot run at all is reported as skipped.
#   CROSS_TEST="aarch64 armhf mipsel mips x86_64-musl"   (make test passes it; "" = none)
#   EMU_TARGETS="mips aarch64"
set -u
cd "$(dirname "$0")/.." || exit 1
mkdir -p build
log=build/test-log
: >"$log"
passed=0
failed=0
summary=""

selected() {
	case " ${SUITES:-all} " in *" all "* | *" $1 "*) return 0 ;; esac
	return 1
}

skip() {
	selected "$1" || return 0
	echo "=== $1: SKIPPED: $2"
	summary="$summary
  $1: SKIPPED ($2)"
}

suite() {
	name=$1
	shift
	selected "$name" || return 0
	echo "=== $name: $*"
	out=build/test-$name.out
	start=$(date +%s)
	"$@" >"$out" 2>&1
	rc=$?
	cat "$out"
	line=$(grep -E '^([A-Za-z-]+: )?[0-9]+ passed, [0-9]+ failed' "$out" | tail -n 1)
	p=$(echo "$line" | sed -E 's/^([A-Za-z-]+: )?([0-9]+) passed, ([0-9]+) failed.*/\2/')
	f=$(echo "$line" | sed -E 's/^([A-Za-z-]+: )?([0-9]+) passed, ([0-9]+) failed.*/\3/')
	[ -n "$line" ] || { p=0; f=0; }
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "=== $name exited with status $rc"; fi
	passed=$((passed + p))
	failed=$((failed + f))
	summary="$summary
  $name: $p passed, $f failed ($(($(date +%s) - start)) s)"
}

suite config sh -c './llmgw -t -c llmgw.ini && echo "1 passed, 0 failed"'
suite sections sh -c 'python3 tests/sections.py llmgw.c && python3 tests/sections.py --self-test llmgw.c >/dev/null'
suite keys-doc python3 tests/keys_doc.py ./llmgw
suite symbols sh -c 'make -s symbols && echo "1 passed, 0 failed"'
suite unit build/unit
suite unit-notls build/unit-notls
suite unit-asan build/unit-asan
suite golden build/golden
suite fuzz-replay build/fuzz-replay tests/corpus/*
suite integration python3 tests/integration.py --gw ./llmgw
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	suite integration-asan python3 tests/integration.py --gw build/llmgw-asan
if command -v valgrind >/dev/null 2>&1; then
	LLMGW_WRAP="valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite" \
		suite integration-valgrind python3 tests/integration.py --gw ./llmgw ${VALGRIND_TESTS:+-k "$VALGRIND_TESTS"}
fi

# ---- TLS, accounting, routing, provider adapters, Responses, workers = N, hardening, the shared
# store (a redis-server of its own, .ci/deps.sh): plain and under ASan+UBSan ----
for t in tls acct route adapter responses workers harden store prices dash; do
	suite "$t" python3 "tests/${t}_test.py" --gw ./llmgw
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
		suite "$t-asan" python3 "tests/${t}_test.py" --gw build/llmgw-asan
done
# ---- the dashboard in headless Chromium (Debian's chromium, .ci/deps.sh), over the DevTools
# protocol (tests/ui_cdp.mjs); saves build/ui-screenshot.png ----
suite ui-browser python3 tests/ui_browser_test.py --gw ./llmgw
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	suite ui-browser-asan python3 tests/ui_browser_test.py --gw build/llmgw-asan
# ---- the real clients: Codex CLI, Claude Code, the openai and @anthropic-ai/sdk node SDKs
# (installed into build/clients by tests/clients.sh, from .ci/deps.sh), one plain run in a
# network namespace holding only loopback ----
suite clients python3 tests/clients_test.py --gw ./llmgw
# workers = N under ThreadSanitizer: any report ends the gateway with status 66 (a failure)
TSAN_OPTIONS=halt_on_error=1:exitcode=66:second_deadlock_stack=1 \
	suite workers-tsan python3 tests/workers_test.py --gw build/llmgw-tsan
# the shared store under ThreadSanitizer too (one of its gateways runs workers = 2)
TSAN_OPTIONS=halt_on_error=1:exitcode=66:second_deadlock_stack=1 \
	suite store-tsan python3 tests/store_test.py --gw build/llmgw-tsan

# ---- embedding, image, memory limit, portability ----
suite embed build/embed
ASAN_OPTIONS=detect_leaks=1 suite embed-asan build/embed-asan
suite portability sh tests/portability.sh

# ---- cross targets ----
CROSS_TEST=${CROSS_TEST-aarch64 armhf mipsel mips x86_64-musl}
EMU_TARGETS=${EMU_TARGETS-mips aarch64}
# qemu_run TARGET: sets $run to the command prefix that runs the target's
# binaries ("" natively), or returns 1 with $why set.
qemu_run() {
	case $1 in
	x86_64-musl) run=""; return 0 ;;
	aarch64) arch=aarch64 ;;
	armhf) arch=arm ;;
	mipsel) arch=mipsel ;;
	mips) arch=mips ;;
	*) why="unknown target $1"; return 1 ;;
	esac
	run=""
	for q in qemu-$arch-static qemu-$arch; do
		if command -v $q >/dev/null 2>&1; then run=$q; break; fi
	done
	if [ -z "$run" ]; then
		why="neither qemu-$arch-static nor qemu-$arch is installed (Debian: qemu-user or qemu-user-static)"
		return 1
	fi
	if ! out=$($run build/$1/llmgw --version 2>&1); then
		why="$run cannot run build/$1/llmgw: $(echo "$out" | head -n 1)"
		return 1
	fi
	return 0
}
# a binary that is not built is a failure, like for the native suites
missing() {
	selected "$1" || return 0
	echo "=== $1: FAILED: $2 is missing (make test builds it; make test CROSS_TEST= leaves the cross suites out)"
	failed=$((failed + 1))
	summary="$summary
  $1: 0 passed, 1 failed ($2 missing)"
}
for t in $CROSS_TEST; do
	if [ ! -x build/$t/unit ] || [ ! -x build/$t/llmgw ]; then
		missing unit-$t "build/$t/unit or build/$t/llmgw"
	elif qemu_run "$t"; then
		suite unit-$t $run build/$t/unit
	else
		skip unit-$t "$why"
	fi
done
for t in x86_64-musl $EMU_TARGETS; do
	case " $CROSS_TEST " in *" $t "*) ;; *) continue ;; esac
	if [ ! -x build/$t/llmgw ]; then
		missing integration-$t build/$t/llmgw
	elif qemu_run "$t"; then
		suite integration-$t env LLMGW_WRAP="$run" python3 tests/integration.py --gw build/$t/llmgw
	else
		skip integration-$t "$why"
	fi
done
case " $CROSS_TEST " in
*" x86_64-musl "*)
	# the FROM-scratch image's tree, run with chroot; the musl static binary
	# under a 16 MB address-space limit (ulimit -v 16384) serving 50 streams
	suite rootfs sh tests/rootfs.sh
	suite memlimit python3 tests/measure.py --memlimit 16384 --streams 50 --conns 100 x86_64-musl
	;;
esac

echo "=== summary$summary"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
