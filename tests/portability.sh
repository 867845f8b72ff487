#!/bin/sh
# Suite `portability`: llmgw.c compiles warning-free (the Makefile's warning
# flags, -std=c99, -Werror) with gcc and clang, on glibc and musl, for every
# cross target, with and without TLS and with -DLLMGW_NO_MAIN, at several
# optimisation levels (some gcc warnings only show up with optimisation).
# Compile-only (-c), at levels other than the builds' own: `make` is gcc -O2
# with TLS, `make cross` is -Os with TLS for each target. Also: tests/embed.c
# with both compilers, llmgw.h from C++, and 64-bit time_t on the 32-bit
# targets with the Makefile's XDEFS. A compiler that is not installed is
# reported and skipped (.ci/deps.sh installs them all).
# Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.." || exit 1
WARN=$(make -s -f - print-warn <<'EOF'
include Makefile
print-warn:
	@echo '$(WARN)'
EOF
)
T64="-D_FILE_OFFSET_BITS=64 -D_TIME_BITS=64"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# BearSSL's headers are the same for every target; any built copy will do.
BINC=""
for d in build/bearssl/native/inc build/bearssl/*/inc vendor/bearssl-src/bearssl-0.6/inc; do
	[ -f "$d/bearssl.h" ] && { BINC=$d; break; }
done
CLANG_RES=$(clang -print-resource-dir 2>/dev/null || true)
MUSL_INC=/usr/include/x86_64-linux-musl

# name | compiler command (may be several words) | flags | source
# The flags without TLS come first; "TLS" in the flags means -DLLMGW_TLS=1 + BearSSL headers.
cat >"$tmp/list" <<EOF
gcc -O3 TLS|gcc|-O3 TLS|llmgw.c
gcc -Os NO_MAIN|gcc|-Os -DLLMGW_NO_MAIN|llmgw.c
gcc -O2 FORTIFY TLS|gcc|-O2 -D_FORTIFY_SOURCE=2 TLS|llmgw.c
clang -O2 TLS|clang|-O2 TLS|llmgw.c
clang -O0 NO_MAIN|clang|-O0 -DLLMGW_NO_MAIN|llmgw.c
musl-gcc -O2 NO_MAIN|musl-gcc|-O2 -DLLMGW_NO_MAIN|llmgw.c
clang+musl -O2 TLS|clang -nostdinc -isystem $CLANG_RES/include -isystem $MUSL_INC|-O2 TLS|llmgw.c
aarch64 gcc -O2|aarch64-linux-gnu-gcc|-O2|llmgw.c
aarch64 clang -O2 TLS|clang --target=aarch64-linux-gnu|-O2 TLS|llmgw.c
armhf gcc -O2 TLS time64|arm-linux-gnueabihf-gcc|-O2 $T64 TLS|llmgw.c
armhf gcc -Os (32-bit time_t)|arm-linux-gnueabihf-gcc|-Os|llmgw.c
armhf clang -O2 TLS time64|clang --target=arm-linux-gnueabihf|-O2 $T64 TLS|llmgw.c
mipsel gcc -O2 TLS time64|mipsel-linux-gnu-gcc|-O2 $T64 TLS|llmgw.c
mips gcc -O2 NO_MAIN time64|mips-linux-gnu-gcc|-O2 $T64 -DLLMGW_NO_MAIN|llmgw.c
mips clang -O2 TLS time64|clang --target=mips-linux-gnu|-O2 $T64 TLS|llmgw.c
embed.c gcc|gcc|-O2|tests/embed.c
embed.c clang|clang|-O2|tests/embed.c
embed.c musl-gcc|musl-gcc|-O2|tests/embed.c
EOF

i=0
while IFS='|' read -r name cc flags src; do
	i=$((i + 1))
	printf '%s\n' "$name" >"$tmp/$i.name"
	set -- $cc
	if ! command -v "$1" >/dev/null 2>&1; then
		echo "SKIP $name: $1 is not installed" >"$tmp/$i.res"
		continue
	fi
	case "$cc" in *--target=*)
		# clang cross: needs the target's libc headers (from the gcc cross packages)
		if ! echo '#include <stdio.h>' | $cc -fsyntax-only -x c - >/dev/null 2>&1; then
			echo "SKIP $name: no libc headers for this target" >"$tmp/$i.res"
			continue
		fi ;;
	esac
	case " $flags " in *" TLS "*)
		[ -n "$BINC" ] || { echo "SKIP $name: no BearSSL headers (make first)" >"$tmp/$i.res"; continue; }
		flags=$(echo "$flags" | sed "s| TLS| -DLLMGW_TLS=1 -isystem $BINC|") ;;
	esac
	echo "$cc $WARN $flags -c -o $tmp/$i.o $src" >"$tmp/$i.cmd"
done <"$tmp/list"
n=$i

# Run the compiles, as many at a time as there are CPUs.
jobs=$(nproc 2>/dev/null || echo 2)
i=1
while [ $i -le $n ]; do
	k=0
	while [ $k -lt "$jobs" ] && [ $i -le $n ]; do
		if [ -f "$tmp/$i.cmd" ]; then
			(sh "$tmp/$i.cmd" >"$tmp/$i.out" 2>&1 && echo ok >"$tmp/$i.rc" || echo fail >"$tmp/$i.rc") &
			k=$((k + 1))
		fi
		i=$((i + 1))
	done
	wait
done

pass=0
fail=0
i=1
while [ $i -le $n ]; do
	name=$(cat "$tmp/$i.name")
	if [ -f "$tmp/$i.res" ]; then
		cat "$tmp/$i.res"
	elif [ "$(cat "$tmp/$i.rc")" = ok ] && [ ! -s "$tmp/$i.out" ]; then
		echo "PASS $name"
		pass=$((pass + 1))
	else
		echo "FAIL $name: $(cat "$tmp/$i.cmd")"
		sed 's/^/    /' "$tmp/$i.out" | head -n 40
		fail=$((fail + 1))
	fi
	i=$((i + 1))
done

# llmgw.h from C++ (extern "C", no C-only constructs)
if command -v g++ >/dev/null 2>&1; then
	printf '#include "llmgw.h"\nint main() { struct llmgw *g = llmgw_new(); llmgw_free(g); return llmgw_version()[0] ? 0 : 1; }\n' \
		>"$tmp/h.cc"
	if out=$(g++ -std=c++11 -Wall -Wextra -Werror -I. -fsyntax-only "$tmp/h.cc" 2>&1) && [ -z "$out" ]; then
		echo "PASS llmgw.h compiles as C++ (g++ -std=c++11)"
		pass=$((pass + 1))
	else
		echo "FAIL llmgw.h as C++: $out"
		fail=$((fail + 1))
	fi
fi

# The 32-bit targets get 64-bit time_t with the Makefile's flags.
for cc in arm-linux-gnueabihf-gcc mipsel-linux-gnu-gcc mips-linux-gnu-gcc; do
	command -v $cc >/dev/null 2>&1 || continue
	printf '#include <time.h>\n#include <sys/types.h>\ntypedef char t[sizeof(time_t) == 8 && sizeof(off_t) == 8 ? 1 : -1];\n' >"$tmp/t.c"
	if $cc $T64 -fsyntax-only "$tmp/t.c" 2>/dev/null; then
		echo "PASS $cc $T64: time_t and off_t are 64-bit"
		pass=$((pass + 1))
	else
		echo "FAIL $cc $T64: time_t or off_t is not 64-bit"
		fail=$((fail + 1))
	fi
done

echo "portability: $pass passed, $fail failed"
[ $fail -eq 0 ]
