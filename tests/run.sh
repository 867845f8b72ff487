#!/bin/sh
# Runs every test suite of llmgw and ends with one line "N passed, N failed".
# Each suite prints its own "N passed, N failed" line; a suite that dies
# without one counts as one failure. Called by `make test` (which builds the
# binaries first) and by .ci/run.
#   sh tests/run.sh            all suites
#   SUITES="unit integration" sh tests/run.sh    only those
set -u
cd "$(dirname "$0")/.." || exit 1
mkdir -p build
log=build/test-log
: >"$log"
passed=0
failed=0
summary=""

suite() {
	name=$1
	shift
	case " ${SUITES:-all} " in *" all "* | *" $name "*) ;; *) return 0 ;; esac
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

suite config ./llmgw -t -c llmgw.ini
suite symbols sh -c 'make -s symbols && echo "1 passed, 0 failed"'
suite unit build/unit
suite unit-asan build/unit-asan
if [ -x build/fuzz-replay ]; then
	suite fuzz-replay build/fuzz-replay tests/corpus/*
fi
suite integration python3 tests/integration.py --gw ./llmgw
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	suite integration-asan python3 tests/integration.py --gw build/llmgw-asan
if command -v valgrind >/dev/null 2>&1; then
	LLMGW_WRAP="valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite" \
		suite integration-valgrind python3 tests/integration.py --gw ./llmgw -k "${VALGRIND_TESTS:-mock}"
fi

echo "=== summary$summary"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
