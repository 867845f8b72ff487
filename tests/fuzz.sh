#!/bin/sh
# A bounded libFuzzer run of every target in tests/fuzz.c (`make fuzz`; not
# part of `make test`), then keeps what it found in tests/corpus/<target>/,
# which `make test` replays through build/fuzz-replay. Ends with one line
# "fuzz: ..."; exit status 1 when a target crashed or something failed.
#   sh tests/fuzz.sh                   every target, 60 s each
#   FUZZ_TIME=600 sh tests/fuzz.sh     (make fuzz FUZZ_TIME=600)
#   FUZZ_TARGETS="http json" sh tests/fuzz.sh
# The targets are the names in tests/fuzz.c's fz_targets table, so a new one
# is fuzzed without touching this file. For each target:
#   build/fuzz-<target>             the libFuzzer binary (clang; it picks its
#                                   target from its own name, see tests/fuzz.c)
#   build/fuzz-corpus-<target>/     work corpus (kept between runs), seeded
#                                   with tests/corpus/<target>/ (read only)
#   build/fuzz-<target>.log         libFuzzer's output
# After the run, `-merge=1` copies into tests/corpus/<target>/ only those work
# corpus inputs that add coverage to what is there already (cut to
# FUZZ_MAX_LEN bytes). A crash (or leak, timeout, out of memory) input is
# copied there as crash-<sha1> (leak-, timeout-, oom-) and the run fails.
# FUZZ_JOBS targets run side by side (default: the CPU count, at most 2),
# one single-process libFuzzer each.
#   FUZZ_TIME=60  FUZZ_TARGETS=(all)  FUZZ_JOBS=2  FUZZ_MAX_LEN=65536  FUZZ_CC=clang
set -u
cd "$(dirname "$0")/.." || exit 1
# one sort order for ls and comm
LC_ALL=C
export LC_ALL
mkdir -p build
FUZZ_TIME=${FUZZ_TIME:-60}
FUZZ_MAX_LEN=${FUZZ_MAX_LEN:-65536}
FUZZ_CC=${FUZZ_CC:-clang}
if [ -z "${FUZZ_JOBS:-}" ]; then
	FUZZ_JOBS=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
	[ "$FUZZ_JOBS" -gt 2 ] 2>/dev/null && FUZZ_JOBS=2
fi
# a hang is an input that takes 10 s (these are parsers: microseconds); the
# memory limit is libFuzzer's default, stated: two jobs fit a 4 GB machine
LIMITS="-timeout=10 -rss_limit_mb=2048"
# the binaries choose their target from their name, not from the environment
unset LLMGW_FUZZ_TARGET

die() {
	echo "fuzz: $*" >&2
	echo "fuzz: FAILED"
	exit 1
}

for v in FUZZ_TIME FUZZ_MAX_LEN FUZZ_JOBS; do
	x=""
	eval "x=\$$v"
	case $x in '' | *[!0-9]* | 0) die "$v must be a positive whole number, not '$x'" ;; esac
done

# ---- the targets: the names in fz_targets[] = { {"http", fz_http}, ... }; ----
all=$(sed -n '/fz_targets\[\] = {/,/^};/p' tests/fuzz.c | grep -o '{ *"[A-Za-z0-9_]*"' | tr -d '{" ' | tr '\n' ' ')
all=${all% }
[ -n "$all" ] || die "no targets found in the fz_targets table of tests/fuzz.c"
targets=""
ntargets=0
for t in ${FUZZ_TARGETS:-$all}; do
	case " $all " in *" $t "*) ;; *) die "no target '$t' in tests/fuzz.c (targets: $all)" ;; esac
	targets="${targets:+$targets }$t"
	ntargets=$((ntargets + 1))
done

# ---- build: one object, linked once per target name ----
# libFuzzer's runtime (libclang_rt.fuzzer) is not in the clang package:
# Debian has it in libclang-rt-<N>-dev (libclang-rt-dev pulls in the default
# one; bookworm: libclang-rt-14-dev), which .ci/deps.sh installs.
command -v "$FUZZ_CC" >/dev/null 2>&1 || die "$FUZZ_CC not found (Debian: clang; sh .ci/deps.sh installs it)"
probe=build/fuzz-probe
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n);\nint LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' >"$probe.c"
if ! out=$("$FUZZ_CC" -fsanitize=fuzzer,address,undefined -o "$probe" "$probe.c" 2>&1); then
	echo "$out" | tail -n 3 >&2
	rm -f "$probe" "$probe.c"
	die "$FUZZ_CC -fsanitize=fuzzer does not link: the libFuzzer runtime libclang_rt.fuzzer is missing (Debian: apt-get install libclang-rt-dev, on bookworm that is libclang-rt-14-dev; sh .ci/deps.sh installs it)"
fi
rm -f "$probe" "$probe.c"
SAN="-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
obj=build/fuzz-libfuzzer.o
cmd="$FUZZ_CC -std=c99 -Wall -Wextra -g -O1 $SAN -DLLMGW_LIBFUZZER -c -o $obj.tmp tests/fuzz.c"
# rebuilt when a source is newer or the command changed ($obj.cmd)
if [ ! -f "$obj" ] || [ "$(cat "$obj.cmd" 2>/dev/null)" != "$cmd" ] ||
	[ -n "$(find tests/fuzz.c tests/testlib.h llmgw.c llmgw.h -newer "$obj")" ]; then
	echo "=== build: $cmd"
	rm -f "$obj" "$obj.cmd"
	$cmd || { rm -f "$obj.tmp"; die "building $obj failed"; }
	mv "$obj.tmp" "$obj"
	echo "$cmd" >"$obj.cmd"
fi
for t in $targets; do
	# shellcheck disable=SC2086
	"$FUZZ_CC" $SAN -o build/fuzz-$t "$obj" -lpthread || die "linking build/fuzz-$t failed"
done

# ---- one target: fuzz, merge, save crash inputs ----
# Writes build/fuzz-<t>.result, read back with `.`: secs, execs, kept (new
# files in tests/corpus/<t>/), bytes (their size), crashes, saved (their
# paths), error (if any).
fuzz_one() {
	t=$1
	bin=build/fuzz-$t
	work=build/fuzz-corpus-$t
	art=build/fuzz-artifacts-$t
	log=build/fuzz-$t.log
	res=build/fuzz-$t.result
	keep=tests/corpus/$t
	mkdir -p "$work" "$keep"
	rm -rf "$art"
	mkdir -p "$art"
	start=$(date +%s)
	# shellcheck disable=SC2086
	UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
		"$bin" -max_total_time="$FUZZ_TIME" $LIMITS -print_final_stats=1 \
		-artifact_prefix="$art/" "$work" "$keep" >"$log" 2>&1
	rc=$?
	secs=$(($(date +%s) - start))
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	merge_error=""
	# keep the work corpus inputs that add coverage to tests/corpus/<t>/
	# (merge names them by their sha1), before a crash input is put there
	# (inputs that crash the merge are saved as $art/merge-crash-*).
	# -use_counters=0: coverage is the edges reached; also counting how
	# often each runs (libFuzzer's default) keeps several times as many files.
	ls "$keep" >"$res.before"
	# shellcheck disable=SC2086
	"$bin" -merge=1 -use_counters=0 -max_len="$FUZZ_MAX_LEN" $LIMITS -artifact_prefix="$art/merge-" \
		"$keep" "$work" >"$log.merge" 2>&1 ||
		merge_error="merge into $keep failed (see $log.merge)"
	# shellcheck disable=SC2012
	ls "$keep" | comm -13 "$res.before" - >"$res.new"
	kept=$(wc -l <"$res.new" | tr -d ' ')
	bytes=0
	while read -r f; do
		bytes=$((bytes + $(wc -c <"$keep/$f")))
	done <"$res.new"
	rm -f "$res.before" "$res.new"
	# what libFuzzer saved (crash-, leak-, timeout-, oom-<sha1>) goes into
	# tests/corpus/<t>/, so that `make test` replays it from now on
	saved=""
	crashes=0
	for f in "$art"/crash-* "$art"/leak-* "$art"/timeout-* "$art"/oom-*; do
		[ -f "$f" ] || continue
		cp "$f" "$keep/" && saved="$saved $keep/${f##*/}"
		crashes=$((crashes + 1))
	done
	error=""
	[ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ] && error="libFuzzer exited with status $rc and saved no input (see $log)"
	[ -n "$merge_error" ] && error="${error:+$error; }$merge_error"
	printf "secs=%s execs='%s' kept=%s bytes=%s crashes=%s saved='%s' error='%s'\n" \
		"$secs" "${execs:-?}" "$kept" "$bytes" "$crashes" "$saved" "$error" >"$res"
}

# report LOG: the sanitizer or check report in a libFuzzer log, indented
report() {
	n=$(grep -n -E '==ERROR|runtime error|check failed|deadly signal|ALARM|out-of-memory|LeakSanitizer' "$1" | head -n 1 | cut -d: -f1)
	[ -n "$n" ] && sed -n "$n,\$p" "$1" | sed '/^SUMMARY:/q' | head -n 40 | sed 's/^/    /'
}

# ---- run FUZZ_JOBS targets at a time ----
echo "=== fuzz: $targets ($FUZZ_TIME s each, $FUZZ_JOBS at a time)"
total_start=$(date +%s)
total_execs=0
total_kept=0
total_crashes=0
failed=0
problems=""
# shellcheck disable=SC2086
set -- $targets
while [ $# -gt 0 ]; do
	batch=""
	n=0
	while [ $# -gt 0 ] && [ "$n" -lt "$FUZZ_JOBS" ]; do
		batch="$batch $1"
		n=$((n + 1))
		shift
	done
	for t in $batch; do
		echo "=== $t: fuzzing $FUZZ_TIME s (log build/fuzz-$t.log)"
		rm -f "build/fuzz-$t.result"
		fuzz_one "$t" &
	done
	wait
	for t in $batch; do
		secs=0 execs='?' kept=0 bytes=0 crashes=0 saved="" error="the job died before it wrote build/fuzz-$t.result"
		# shellcheck disable=SC1090
		[ -s "build/fuzz-$t.result" ] && . "./build/fuzz-$t.result"
		echo "$t: $secs s, $execs executions, $kept new corpus files kept ($bytes bytes), $crashes crashes"
		case $execs in *[!0-9]* | '') ;; *) total_execs=$((total_execs + execs)) ;; esac
		total_kept=$((total_kept + kept))
		total_crashes=$((total_crashes + crashes))
		for f in $saved; do
			echo "$t: CRASH: input saved as $f (reproduce: build/fuzz-$t $f)"
			problems="$problems
  $t: crash, input $f (log build/fuzz-$t.log)"
		done
		[ -n "$saved" ] && report "build/fuzz-$t.log"
		if [ -n "$error" ]; then
			echo "$t: FAILED: $error"
			failed=$((failed + 1))
			problems="$problems
  $t: $error"
		fi
	done
done

[ -n "$problems" ] && echo "=== problems$problems"
verdict=OK
[ "$failed" -gt 0 ] || [ "$total_crashes" -gt 0 ] && verdict=FAILED
echo "fuzz: $ntargets targets, $(($(date +%s) - total_start)) s," \
	"$total_execs executions, $total_kept new corpus files kept, $total_crashes crashes: $verdict"
[ "$verdict" = OK ]
