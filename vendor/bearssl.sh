#!/bin/sh
# vendor/bearssl.sh - obtain, verify and build BearSSL 0.6 as a static library.
#
#   sh vendor/bearssl.sh [build] CC=cc OUT=build/bearssl/<target> [CFLAGS=-Os] [AR=...] [JOBS=n]
#   sh vendor/bearssl.sh fetch        fetch + verify + unpack the source only
#   sh vendor/bearssl.sh selftest CC=... OUT=...   build, link and run tests/bearssl-selftest.c
#   sh vendor/bearssl.sh clean OUT=...             remove one build output directory
#   sh vendor/bearssl.sh distclean                 remove the fetched source (vendor/bearssl-src)
#
# See vendor/README.md. No BearSSL source is kept in the repository: it is
# fetched into vendor/bearssl-src/ (git-ignored) and checked against the
# SHA-256 sums pinned below, whichever way it was obtained.
set -eu

RECIPE_VERSION=1                 # bump to force rebuilds when this recipe changes

BEARSSL_VERSION=0.6
# Upstream release tarball, from BearSSL's own web site.
UP_FILE=bearssl-0.6.tar.gz
UP_SHA256=6705bba1714961b41a728dfc5debbe348d2966c117649392f8c8139efc83ff14
UP_URL_DEFAULT=https://bearssl.org/bearssl-0.6.tar.gz
# Debian's repack of the same release (source package "bearssl",
# 0.6+dfsg.1-*): identical except that the prebuilt T0Comp.exe is removed.
DEB_PKG=bearssl
DEB_FILE=bearssl_0.6+dfsg.1.orig.tar.xz
DEB_SHA256=102a625bd8f6155260867a50c508df8d8c3f796985dd744df1a68e5cd1a79004
TOPDIR=bearssl-0.6               # directory both tarballs unpack to

# --------------------------------------------------------------------------
say()  { printf 'bearssl: %s\n' "$*" >&2; }
die()  { printf 'bearssl: error: %s\n' "$*" >&2; exit 1; }

usage() {
	sed -n '2,12s/^# \{0,1\}//p' "$0"
	cat <<'EOF'

Variables (as NAME=value arguments; CC, AR and JOBS are also read from the environment):
  CC       compiler, may include options (default: cc)
  OUT      output directory (default: build/bearssl/<compiler name>, under the repo root)
  CFLAGS   flags for compiling BearSSL (default: -Os); not read from the environment
  AR       archiver (default: derived from CC, see README)
  JOBS     parallel compile jobs (default: number of CPUs)
  RUN      selftest only: command prefix to run the test binary (e.g. qemu-aarch64)
Environment:
  BEARSSL_FETCH    auto (default) | apt | upstream
  BEARSSL_URL      alternative URL for bearssl-0.6.tar.gz (checksum still enforced)
  BEARSSL_TARBALL  local bearssl-0.6.tar.gz or bearssl_0.6+dfsg.1.orig.tar.xz to use
  BEARSSL_SRCDIR   where to keep the fetched source (default: vendor/bearssl-src)
EOF
}

# --------------------------------------------------------------------------
# Arguments.
MODE=build
ARG_CC='' ARG_OUT='' ARG_CFLAGS='' ARG_AR='' ARG_JOBS='' ARG_RUN=''
HAVE_CFLAGS=no
for a in "$@"; do
	case $a in
	CC=*)     ARG_CC=${a#*=} ;;
	OUT=*)    ARG_OUT=${a#*=} ;;
	CFLAGS=*) ARG_CFLAGS=${a#*=}; HAVE_CFLAGS=yes ;;
	AR=*)     ARG_AR=${a#*=} ;;
	JOBS=*)   ARG_JOBS=${a#*=} ;;
	RUN=*)    ARG_RUN=${a#*=} ;;
	build|fetch|selftest|clean|distclean) MODE=$a ;;
	-h|--help|help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument: $a" ;;
	esac
done

VENDOR_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT_DIR=$(cd "$VENDOR_DIR/.." && pwd)
SRCROOT=${BEARSSL_SRCDIR:-$VENDOR_DIR/bearssl-src}
SRCDIR=$SRCROOT/$TOPDIR
STAMP=$SRCROOT/.verified         # "<tarball name> <sha256>" of the unpacked tree

CC=${ARG_CC:-${CC:-cc}}
AR=${ARG_AR:-${AR:-}}
if [ "$HAVE_CFLAGS" = yes ]; then CFLAGS=$ARG_CFLAGS; else CFLAGS=-Os; fi
JOBS=${ARG_JOBS:-${JOBS:-}}
RUN=${ARG_RUN:-${RUN:-}}

# --------------------------------------------------------------------------
# Locking (mkdir is atomic), so parallel builds of several targets are safe.
LOCKS=
lock() {
	_l=$1 _n=0
	while ! mkdir "$_l" 2>/dev/null; do
		_p=$(cat "$_l/pid" 2>/dev/null || :)
		if [ -n "$_p" ] && ! kill -0 "$_p" 2>/dev/null; then
			say "removing stale lock $_l (pid $_p)"
			rm -rf "$_l"; continue
		fi
		_n=$((_n + 1))
		[ "$_n" -eq 1 ] && say "waiting for lock $_l"
		[ "$_n" -gt 1800 ] && die "timed out waiting for lock $_l"
		sleep 1
	done
	echo $$ > "$_l/pid"
	LOCKS="$LOCKS $_l"
}
unlock_all() {
	for _l in $LOCKS; do rm -rf "$_l"; done
	LOCKS=
}
trap 'unlock_all' EXIT
trap 'unlock_all; exit 130' INT TERM HUP

# --------------------------------------------------------------------------
# Checksums.
sha256_of() {
	if command -v sha256sum >/dev/null 2>&1; then
		sha256sum "$1" | cut -d' ' -f1
	elif command -v shasum >/dev/null 2>&1; then
		shasum -a 256 "$1" | cut -d' ' -f1
	elif command -v openssl >/dev/null 2>&1; then
		openssl dgst -sha256 "$1" | sed 's/.*= *//'
	else
		die "need sha256sum, shasum or openssl to verify the download"
	fi
}

pinned_sha() {         # pinned_sha FILENAME -> expected sha256 (or empty)
	case ${1##*/} in
	"$UP_FILE")  echo "$UP_SHA256" ;;
	"$DEB_FILE") echo "$DEB_SHA256" ;;
	*) echo "" ;;
	esac
}

verify() {             # verify FILE [NAME] -> 0 if the sha256 matches the pin for NAME
	_f=$1 _name=${2:-${1##*/}}
	_want=$(pinned_sha "$_name")
	[ -n "$_want" ] || { say "no pinned checksum for $_name"; return 1; }
	_got=$(sha256_of "$_f")
	if [ "$_got" = "$_want" ]; then
		say "sha256 OK: $_name $_got"
		return 0
	fi
	say "SHA-256 MISMATCH for $_name"
	say "  expected $_want"
	say "  got      $_got"
	return 1
}

# --------------------------------------------------------------------------
# Fetch methods. Each leaves a verified tarball in $DL and prints its path.
DL=$SRCROOT/dl

fetch_upstream() {
	_url=${BEARSSL_URL:-$UP_URL_DEFAULT}
	_tmp=$DL/$UP_FILE.part
	rm -f "$_tmp"
	say "downloading $_url"
	if command -v curl >/dev/null 2>&1; then
		curl -fsSL --connect-timeout 20 --max-time 300 --retry 2 -o "$_tmp" "$_url" >&2 || { rm -f "$_tmp"; return 1; }
	elif command -v wget >/dev/null 2>&1; then
		wget -nv -T 20 -t 2 -O "$_tmp" "$_url" >&2 || { rm -f "$_tmp"; return 1; }
	else
		say "neither curl nor wget is installed"
		return 1
	fi
	verify "$_tmp" "$UP_FILE" || { rm -f "$_tmp"; return 1; }
	mv -f "$_tmp" "$DL/$UP_FILE"
	echo "$DL/$UP_FILE"
}

# apt-get source --download-only into directory $1, with extra apt options
# "$@" after it. Succeeds if the pinned .orig tarball arrived and verifies.
apt_source_into() {
	_d=$1; shift
	rm -rf "$_d"; mkdir -p "$_d"
	if (cd "$_d" && apt-get -q "$@" source --download-only "$DEB_PKG") >"$_d.log" 2>&1 \
	   && [ -f "$_d/$DEB_FILE" ]; then
		verify "$_d/$DEB_FILE" && return 0
		return 1
	fi
	return 1
}

# Write deb-src entries derived from the system's own apt configuration (no
# host name is stored anywhere in this repository).
derive_deb_src() {     # derive_deb_src DIR  -> DIR/sources.list, DIR/sources.list.d/
	_o=$1
	SL=/etc/apt/sources.list SP=/etc/apt/sources.list.d
	eval "$(apt-config shell SL Dir::Etc::sourcelist/f SP Dir::Etc::sourceparts/d 2>/dev/null)" || :
	mkdir -p "$_o/sources.list.d"
	# One-line format: "deb [opts] uri suite comps" -> "deb-src [opts] uri suite comps"
	{
		[ -f "$SL" ] && cat "$SL"
		for _f in "$SP"/*.list; do [ -f "$_f" ] && cat "$_f"; done
		:
	} | sed -n 's/^[[:space:]]*deb\(-src\)\{0,1\}[[:space:]][[:space:]]*/deb-src /p' \
	  | sort -u > "$_o/sources.list"
	# deb822 format: stanzas whose Types include deb (or deb-src) -> Types: deb-src
	: > "$_o/sources.list.d/derived.sources"
	for _f in "$SP"/*.sources; do
		[ -f "$_f" ] || continue
		awk '
		function flush(  i) {
			if (n && isdeb && enabled) { for (i = 1; i <= n; i++) print buf[i]; print "" }
			n = 0; isdeb = 0; enabled = 1
		}
		BEGIN { enabled = 1 }
		/^[ \t]*$/ { flush(); next }
		/^#/ { next }
		{
			line = $0; l = tolower(line)
			if (l ~ /^types:/) {
				if (l ~ /[: \t]deb(-src)?([ \t]|$)/) isdeb = 1
				line = "Types: deb-src"
			} else if (l ~ /^enabled:[ \t]*no/) enabled = 0
			buf[++n] = line
		}
		END { flush() }' "$_f" >> "$_o/sources.list.d/derived.sources"
	done
	[ -s "$_o/sources.list" ] || [ -s "$_o/sources.list.d/derived.sources" ]
}

fetch_apt() {
	command -v apt-get >/dev/null 2>&1 || { say "apt-get not available"; return 1; }
	_t=$SRCROOT/apt-src
	# 1. apt as configured (works if deb-src entries are already set up).
	say "trying: apt-get source --download-only $DEB_PKG (system apt configuration)"
	if apt_source_into "$_t"; then
		mv -f "$_t/$DEB_FILE" "$DL/$DEB_FILE"; rm -rf "$_t" "$_t.log"
		echo "$DL/$DEB_FILE"; return 0
	fi
	# 2. A private apt state dir whose sources are deb-src copies of the
	#    system's deb entries. Touches nothing under /etc or /var; no root needed.
	_a=$SRCROOT/apt
	rm -rf "$_a"
	mkdir -p "$_a/etc" "$_a/lists/partial" "$_a/cache/archives/partial"
	if ! derive_deb_src "$_a/etc"; then
		say "no apt sources found to derive deb-src entries from"
		rm -rf "$_a" "$_t" "$_t.log"; return 1
	fi
	set -- -o "Dir::Etc::SourceList=$_a/etc/sources.list" \
	       -o "Dir::Etc::SourceParts=$_a/etc/sources.list.d" \
	       -o "Dir::State::Lists=$_a/lists" \
	       -o "Dir::Cache=$_a/cache"
	[ "$(id -u)" = 0 ] && set -- "$@" -o APT::Sandbox::User=root
	say "no deb-src configured; fetching source indexes into a private apt dir ($_a)"
	apt-get -q "$@" update > "$_a/update.log" 2>&1 || say "apt-get update reported errors (see below if the fetch fails)"
	say "trying: apt-get source --download-only $DEB_PKG (derived deb-src entries)"
	if apt_source_into "$_t" "$@"; then
		mv -f "$_t/$DEB_FILE" "$DL/$DEB_FILE"; rm -rf "$_t" "$_t.log" "$_a"
		echo "$DL/$DEB_FILE"; return 0
	fi
	say "apt path failed; last output:"
	tail -n 15 "$_a/update.log" >&2 2>/dev/null || :
	tail -n 15 "$_t.log" >&2 2>/dev/null || :
	rm -rf "$_t" "$_t.log" "$_a"
	return 1
}

# --------------------------------------------------------------------------
unpack() {             # unpack TARBALL -> $SRCDIR, writes $STAMP
	_tb=$1 _name=${1##*/}
	_x=$SRCROOT/unpack.$$
	rm -rf "$_x"; mkdir -p "$_x"
	case $_name in
	*.tar.gz)  command -v gzip >/dev/null 2>&1 || die "gzip is needed to unpack $_name"
	           gzip -dc "$_tb" | (cd "$_x" && tar -xof -) ;;
	*.tar.xz)  command -v xz >/dev/null 2>&1 || die "xz is needed to unpack $_name (apt-get install xz-utils)"
	           xz -dc "$_tb" | (cd "$_x" && tar -xof -) ;;
	*) die "do not know how to unpack $_name" ;;
	esac
	if [ ! -f "$_x/$TOPDIR/inc/bearssl.h" ] || [ ! -f "$_x/$TOPDIR/src/inner.h" ]; then
		die "$_name does not contain $TOPDIR/inc/bearssl.h and $TOPDIR/src/inner.h"
	fi
	rm -rf "$SRCDIR" "$STAMP"
	mv "$_x/$TOPDIR" "$SRCDIR"
	rm -rf "$_x"
	echo "$_name $(sha256_of "$_tb")" > "$STAMP"
	say "unpacked $_name -> $SRCDIR ($(find "$SRCDIR/src" -name '*.c' | wc -l | tr -d ' ') .c files)"
}

# Make sure a verified, unpacked source tree is present.
ensure_source() {
	mkdir -p "$DL"
	lock "$SRCROOT/.lock"
	# Already unpacked from a verified tarball that is still here and still verifies?
	if [ -f "$STAMP" ] && [ -f "$SRCDIR/inc/bearssl.h" ]; then
		read -r _n _s < "$STAMP" || :
		if [ -f "$DL/$_n" ] && [ "$(pinned_sha "$_n")" = "$_s" ] && [ "$(sha256_of "$DL/$_n")" = "$_s" ]; then
			SRC_ID="$_n $_s"
			unlock_all
			return 0
		fi
		say "existing source tree is not backed by a verified tarball; refetching"
	fi
	_tb=
	# A tarball supplied by the user, or one already downloaded.
	if [ -n "${BEARSSL_TARBALL:-}" ]; then
		[ -f "$BEARSSL_TARBALL" ] || die "BEARSSL_TARBALL=$BEARSSL_TARBALL: no such file"
		verify "$BEARSSL_TARBALL" || die "BEARSSL_TARBALL must be $UP_FILE or $DEB_FILE with the pinned checksum"
		_tb=$DL/${BEARSSL_TARBALL##*/}
		if [ "$(cd "$(dirname "$BEARSSL_TARBALL")" && pwd)/${BEARSSL_TARBALL##*/}" != "$_tb" ]; then
			cp "$BEARSSL_TARBALL" "$_tb.part" && mv -f "$_tb.part" "$_tb"
		fi
	else
		for _c in "$DL/$UP_FILE" "$DL/$DEB_FILE"; do
			if [ -z "$_tb" ] && [ -f "$_c" ]; then
				if verify "$_c"; then _tb=$_c; else rm -f "$_c"; fi
			fi
		done
	fi
	if [ -z "$_tb" ]; then
		case ${BEARSSL_FETCH:-auto} in
		apt)      _tb=$(fetch_apt) || die "could not obtain $DEB_FILE through apt (see messages above)" ;;
		upstream) _tb=$(fetch_upstream) || die "could not download $UP_FILE (see messages above)" ;;
		auto)
			# apt first where it exists (signed indexes, works without
			# general internet access), then BearSSL's own site.
			_tb=$(fetch_apt) || _tb=$(fetch_upstream) || die "could not obtain BearSSL $BEARSSL_VERSION:
  - apt: needs apt-get with access to the Debian archive (xz-utils to unpack)
  - upstream: needs curl or wget and access to $UP_URL_DEFAULT
  - or download one of these yourself and pass BEARSSL_TARBALL=/path/to/it:
      $UP_FILE  sha256 $UP_SHA256
      $DEB_FILE  sha256 $DEB_SHA256" ;;
		*) die "BEARSSL_FETCH must be auto, apt or upstream" ;;
		esac
	fi
	unpack "$_tb"
	read -r _n _s < "$STAMP"
	SRC_ID="$_n $_s"
	unlock_all
}

# --------------------------------------------------------------------------
# Compiler / archiver helpers.
cc_word() {            # the compiler's program name out of $CC (skipping options, ccache)
	_w=
	for _x in $CC; do
		case $_x in -*|ccache|distcc|*=*) ;; *) _w=$_x ;; esac
	done
	echo "$_w"
}

pick_ar() {
	[ -n "$AR" ] && { echo "$AR"; return; }
	_w=$(cc_word)
	case $_w in
	*gcc)   # aarch64-linux-gnu-gcc -> aarch64-linux-gnu-ar; gcc -> ar
		_c=${_w%gcc}ar
		if command -v "$_c" >/dev/null 2>&1; then echo "$_c"; return; fi ;;
	*clang*) # clang[-N]: llvm-ar[-N] if present (handles any target), else ar
		_c=llvm-ar${_w##*clang}
		if command -v "$_c" >/dev/null 2>&1; then echo "$_c"; return; fi
		if command -v llvm-ar >/dev/null 2>&1; then echo llvm-ar; return; fi ;;
	esac
	_c=$($CC -print-prog-name=ar 2>/dev/null || :)
	case $_c in
	/*) [ -x "$_c" ] && { echo "$_c"; return; } ;;
	esac
	echo ar
}

ncpu() {
	_n=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null || echo 1)
	case $_n in ''|*[!0-9]*) _n=1 ;; esac
	[ "$_n" -ge 1 ] || _n=1
	echo "$_n"
}

default_out() {
	_w=$(cc_word)
	_w=$(printf '%s' "${_w##*/}" | tr -c 'A-Za-z0-9._+-' '_')
	echo "$ROOT_DIR/build/bearssl/${_w:-cc}"
}

# --------------------------------------------------------------------------
do_build() {
	ensure_source
	_w=$(cc_word)
	if [ -z "$_w" ] || ! command -v "$_w" >/dev/null 2>&1; then die "compiler not found: CC=$CC"; fi
	OUT=${ARG_OUT:-$(default_out)}
	mkdir -p "$OUT"
	OUT=$(cd "$OUT" && pwd)
	AR=$(pick_ar)
	_triple=$($CC -dumpmachine 2>/dev/null || echo unknown)
	_ver=$($CC --version 2>/dev/null | sed -n 1p || :)
	_key=$(printf 'recipe %s\nsource %s\ncc %s\ncc-version %s\ntarget %s\ncflags %s\nar %s\n' \
		"$RECIPE_VERSION" "$SRC_ID" "$CC" "$_ver" "$_triple" "$CFLAGS" "$AR")

	lock "$OUT/.lock"
	if [ -f "$OUT/libbearssl.a" ] && [ -f "$OUT/inc/bearssl.h" ] && [ -f "$OUT/.build-key" ] \
	   && [ "$(cat "$OUT/.build-key")" = "$_key" ]; then
		say "up to date: $OUT/libbearssl.a ($_triple, CC=$CC)"
		report
		return 0
	fi

	[ -n "$JOBS" ] || JOBS=$(ncpu)
	say "building libbearssl.a: CC=$CC ($_triple) CFLAGS=$CFLAGS AR=$AR jobs=$JOBS"
	_obj=$OUT/obj
	rm -rf "$_obj" "$OUT/.build-key" "$OUT/libbearssl.a" "$OUT/inc"
	mkdir -p "$_obj"
	(cd "$SRCDIR/src" && find . -name '*.c' | sort) > "$_obj/sources"
	(cd "$SRCDIR/src" && find . -type d) | (cd "$_obj" && while read -r _d; do mkdir -p "$_d"; done)
	_total=$(wc -l < "$_obj/sources" | tr -d ' ')
	_start=$(date +%s)
	_j=0
	while [ "$_j" -lt "$JOBS" ]; do
		(
			awk -v n="$JOBS" -v k="$_j" '(NR - 1) % n == k' "$_obj/sources" |
			while read -r _s; do
				_s=${_s#./}
				_o=$_obj/${_s%.c}.o
				# $CC and $CFLAGS are split into words on purpose.
				# shellcheck disable=SC2086
				if ! $CC $CFLAGS -I"$SRCDIR/inc" -I"$SRCDIR/src" -c "$SRCDIR/src/$_s" -o "$_o" \
					>> "$_obj/log.$_j" 2>&1; then
					echo "$_s" >> "$_obj/failed.$_j"
				fi
			done
		) &
		_j=$((_j + 1))
	done
	wait
	cat "$_obj"/log.* > "$OUT/build.log" 2>/dev/null || :
	if ls "$_obj"/failed.* >/dev/null 2>&1; then
		say "compilation FAILED for:"
		cat "$_obj"/failed.* >&2
		tail -n 40 "$OUT/build.log" >&2
		die "build failed (full log: $OUT/build.log)"
	fi
	_n=$(find "$_obj" -name '*.o' | wc -l | tr -d ' ')
	[ "$_n" -eq "$_total" ] || die "expected $_total objects, got $_n"
	rm -f "$OUT/libbearssl.a.tmp"
	# shellcheck disable=SC2086
	(cd "$_obj" && find . -name '*.o' | sort | xargs $AR rcs "$OUT/libbearssl.a.tmp") \
		|| die "archiving with AR=$AR failed"
	mv -f "$OUT/libbearssl.a.tmp" "$OUT/libbearssl.a"
	mkdir -p "$OUT/inc"
	cp "$SRCDIR"/inc/*.h "$OUT/inc/"
	cp "$SRCDIR/LICENSE.txt" "$OUT/LICENSE.txt" 2>/dev/null || :
	rm -rf "$_obj"
	[ -s "$OUT/build.log" ] || rm -f "$OUT/build.log"
	printf '%s\n' "$_key" > "$OUT/.build-key"
	say "built $_total objects in $(( $(date +%s) - _start ))s"
	report
}

report() {
	_sz=$(wc -c < "$OUT/libbearssl.a" | tr -d ' ')
	say "library: $OUT/libbearssl.a ($_sz bytes)"
	say "headers: $OUT/inc/"
	say "use:     -I$OUT/inc  $OUT/libbearssl.a"
}

do_selftest() {
	do_build
	_t=$VENDOR_DIR/../tests/bearssl-selftest.c
	[ -f "$_t" ] || die "missing $_t"
	# shellcheck disable=SC2086
	$CC -Os -static -I"$OUT/inc" "$_t" "$OUT/libbearssl.a" -o "$OUT/bearssl-selftest" 2>"$OUT/selftest-build.log" \
	|| $CC -Os -I"$OUT/inc" "$_t" "$OUT/libbearssl.a" -o "$OUT/bearssl-selftest" \
	|| die "could not link the selftest against $OUT/libbearssl.a"
	[ -s "$OUT/selftest-build.log" ] || rm -f "$OUT/selftest-build.log"
	say "linked $OUT/bearssl-selftest"
	# Run it if it is for this machine's CPU, or through $RUN (e.g. qemu-user).
	_arch=$($CC -dumpmachine 2>/dev/null | cut -d- -f1)
	if [ -z "$RUN" ] && [ "$_arch" != "$(uname -m)" ]; then
		say "selftest built for $_arch, not run on $(uname -m) (set RUN=qemu-$_arch or RUN=env to run it)"
		return 0
	fi
	set +e
	# shellcheck disable=SC2086
	$RUN "$OUT/bearssl-selftest"
	_rc=$?
	set -e
	[ "$_rc" -eq 0 ] || die "selftest FAILED (exit $_rc)"
	say "selftest passed"
}

case $MODE in
fetch)
	ensure_source
	say "source: $SRCDIR (from $SRC_ID)"
	;;
build)    do_build ;;
selftest) do_selftest ;;
clean)
	OUT=${ARG_OUT:-$(default_out)}
	rm -rf "$OUT"
	say "removed $OUT"
	;;
distclean)
	rm -rf "$SRCROOT"
	say "removed $SRCROOT"
	;;
esac
