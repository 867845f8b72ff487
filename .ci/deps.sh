#!/bin/sh
# Installs what building and testing llmgw need on a fresh Debian machine:
# a C compiler and make (the gateway), curl and python3 (integration tests),
# valgrind and clang with its sanitizer and libFuzzer runtimes (memory
# checks, ThreadSanitizer, make fuzz), xz (the BearSSL recipe),
# openssl (test certificates), redis-server (the shared-store suite), the cross compilers and musl (make cross,
# static binaries for aarch64, armhf, mipsel, mips and x86_64 musl) with
# qemu-user to run them, ca-certificates (make rootfs), chromium (the dashboard's browser test),
# node and npm (also for vendor/genai-prices.sh), then the
# real clients of the clients suite at pinned versions (tests/clients.sh: Codex
# CLI, Claude Code, the openai and @anthropic-ai/sdk node SDKs into
# build/clients). Does nothing when all are there already.
set -eu
need=""
command -v cc >/dev/null 2>&1 || need="$need gcc libc6-dev"
command -v make >/dev/null 2>&1 || need="$need make"
command -v curl >/dev/null 2>&1 || need="$need curl"
command -v python3 >/dev/null 2>&1 || need="$need python3"
command -v valgrind >/dev/null 2>&1 || need="$need valgrind"
# clang's runtimes (libclang_rt.fuzzer, .tsan, ...) are in libclang-rt-<N>-dev
# (bookworm: libclang-rt-14-dev; libclang-rt-dev pulls in the default one),
# only a Recommends of clang, so --no-install-recommends leaves them out
command -v clang >/dev/null 2>&1 || need="$need clang libclang-rt-dev"
command -v xz >/dev/null 2>&1 || need="$need xz-utils"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
# the store suite (tests/store_test.py) runs its own redis-server
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
command -v apt-get >/dev/null 2>&1 && [ ! -d /usr/share/doc/ca-certificates ] && need="$need ca-certificates"
# cross compilers: the gcc driver and the target's libc (a Recommends, so
# --no-install-recommends would leave it out)
for x in aarch64-linux-gnu:arm64 arm-linux-gnueabihf:armhf mipsel-linux-gnu:mipsel mips-linux-gnu:mips; do
	triple=${x%%:*}
	command -v "$triple-gcc" >/dev/null 2>&1 || need="$need gcc-$triple"
	[ -f "/usr/$triple/lib/libc.a" ] || need="$need libc6-dev-${x#*:}-cross"
done
command -v musl-gcc >/dev/null 2>&1 || need="$need musl-tools"
command -v readelf >/dev/null 2>&1 || need="$need binutils"
# the clients suite: node runs the SDK scripts and Codex's launcher, npm installs them
command -v node >/dev/null 2>&1 || need="$need nodejs"
command -v npm >/dev/null 2>&1 || need="$need npm"
# the dashboard's browser test (tests/ui_browser_test.py): headless Chromium
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need="$need chromium"
# qemu-user: qemu-<arch> (qemu-user-static's qemu-<arch>-static does as well)
for a in aarch64 arm mipsel mips; do
	if ! command -v "qemu-$a" >/dev/null 2>&1 && ! command -v "qemu-$a-static" >/dev/null 2>&1; then
		need="$need qemu-user"
		break
	fi
done
# the sanitizer runtimes come with gcc; check they link
if command -v cc >/dev/null 2>&1; then
	t=$(mktemp -d)
	echo 'int main(void){return 0;}' >"$t/a.c"
	cc -fsanitize=address,undefined -o "$t/a" "$t/a.c" >/dev/null 2>&1 || need="$need libasan8 libubsan1"
	rm -rf "$t"
fi
# and clang's: libFuzzer (make fuzz) and ThreadSanitizer (make test)
if command -v clang >/dev/null 2>&1; then
	t=$(mktemp -d)
	echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n);
int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { (void)d; (void)n; return 0; }' >"$t/f.c"
	echo 'int main(void){return 0;}' >"$t/a.c"
	{ clang -fsanitize=fuzzer,address,undefined -o "$t/f" "$t/f.c" && clang -fsanitize=thread -o "$t/a" "$t/a.c"; } \
		>/dev/null 2>&1 || need="$need libclang-rt-dev"
	rm -rf "$t"
fi
if [ -n "$need" ]; then
	echo "deps: installing$need"
	SUDO=""
	[ "$(id -u)" -eq 0 ] || SUDO="sudo"
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -q
	# shellcheck disable=SC2086
	$SUDO apt-get install -y -q --no-install-recommends $need
fi
# the real clients (only what build/clients lacks); a failure here is the clients
# suite's failure, not a reason to stop the other suites
sh "$(dirname "$0")/../tests/clients.sh" ||
	echo "deps: the real clients could not be installed (sh tests/clients.sh); the clients suite will fail" >&2
