#!/bin/sh
# Installs what building and testing llmgw need on a fresh Debian machine:
# a C compiler and make (the gateway), curl and python3 (integration tests),
# valgrind and clang (memory checks, fuzzing), xz (the BearSSL recipe),
# openssl (test certificates). Does nothing when all are
# there already.
set -eu
need=""
command -v cc >/dev/null 2>&1 || need="$need gcc libc6-dev"
command -v make >/dev/null 2>&1 || need="$need make"
command -v curl >/dev/null 2>&1 || need="$need curl"
command -v python3 >/dev/null 2>&1 || need="$need python3"
command -v valgrind >/dev/null 2>&1 || need="$need valgrind"
command -v clang >/dev/null 2>&1 || need="$need clang"
command -v xz >/dev/null 2>&1 || need="$need xz-utils"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
command -v apt-get >/dev/null 2>&1 && [ ! -d /usr/share/doc/ca-certificates ] && need="$need ca-certificates"
# the sanitizer runtimes come with gcc; check they link
if command -v cc >/dev/null 2>&1; then
	t=$(mktemp -d)
	echo 'int main(void){return 0;}' >"$t/a.c"
	cc -fsanitize=address,undefined -o "$t/a" "$t/a.c" >/dev/null 2>&1 || need="$need libasan8 libubsan1"
	rm -rf "$t"
fi
[ -z "$need" ] && exit 0
echo "deps: installing$need"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $need
