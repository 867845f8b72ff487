#!/bin/sh
# tests/bench/run.sh - the llmgw benchmark, one command (not part of `make test`).
#
#   sh tests/bench/run.sh              full run (~5-6 minutes): prints one markdown table
#   sh tests/bench/run.sh --quick      1 round of 2 s: a smoke test of the benchmark itself
#   sh tests/bench/run.sh --profile    llmgw under callgrind: top functions, instructions/request
#   (any other option is passed to bench.py: see `python3 tests/bench/bench.py --help`)
#
# Installs wrk and nginx-light (Debian) if missing, builds mockfast and
# benchcli into a temporary directory and llmgw with `make llmgw`, then runs
# tests/bench/bench.py. Everything listens on 127.0.0.1; the proxy under test
# is pinned to the second CPU, wrk and the mock upstream to the first.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

need=""
command -v wrk >/dev/null 2>&1 || need="$need wrk"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need="$need nginx-light"
command -v taskset >/dev/null 2>&1 || need="$need util-linux"
command -v cc >/dev/null 2>&1 || need="$need gcc libc6-dev"
command -v make >/dev/null 2>&1 || need="$need make"
command -v python3 >/dev/null 2>&1 || need="$need python3"
case " $* " in *" --profile "*) command -v valgrind >/dev/null 2>&1 || need="$need valgrind" ;; esac
if [ -n "$need" ]; then
	echo "bench: installing$need" >&2
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	$sudo apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
PATH=$PATH:/usr/sbin
export PATH

tmp=$(mktemp -d "${TMPDIR:-/tmp}/llmgw-bench.XXXXXX")
trap 'rm -rf "$tmp"; exit 130' INT TERM

cc -O2 -Wall -Wextra -o "$tmp/mockfast" "$here/mockfast.c"
cc -O2 -Wall -Wextra -o "$tmp/benchcli" "$here/benchcli.c"
if ! make -s -C "$root" llmgw >&2; then
	[ -x "$root/llmgw" ] || { echo "bench: make llmgw failed" >&2; exit 1; }
	echo "bench: make llmgw failed: benchmarking the existing $root/llmgw" >&2
fi
# a private copy, so that a rebuild during the run does not change the binary under test
cp "$root/llmgw" "$tmp/llmgw"
# the static musl build (what the image and the routers run), for its idle RSS; optional
musl=""
if command -v musl-gcc >/dev/null 2>&1 && make -s -C "$root" cross-x86_64-musl >/dev/null 2>&1; then
	cp "$root/build/x86_64-musl/llmgw" "$tmp/llmgw-musl" && musl="--musl-bin $tmp/llmgw-musl"
fi

# room for 1000 client + 1000 upstream connections per proxy
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

rc=0
python3 "$here/bench.py" --tmp "$tmp" --llmgw-src "$tmp/llmgw" $musl "$@" || rc=$?
if [ "$rc" -eq 0 ]; then
	rm -rf "$tmp"
else
	echo "bench: exit status $rc; configs and logs kept in $tmp" >&2
fi
exit $rc
