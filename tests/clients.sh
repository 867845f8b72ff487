#!/bin/sh
# Installs the real clients of the clients suite (tests/clients_test.py) into build/clients,
# at the exact versions of tests/clients/pins.txt, with npm (which checks every package's
# tarball against the integrity hash published with it). Does nothing when build/clients holds
# every pinned package at its version and both CLIs start; otherwise installs them all anew
# in one npm call (an npm install without a package.json prunes what it was not asked for).
#   sh tests/clients.sh            install if needed, then check both CLIs start
#   sh tests/clients.sh --check    only say whether the installation is complete (status 1 if not)
# @anthropic-ai/claude-code needs its postinstall script (it copies the platform's native
# binary over its bin/claude.exe placeholder), so scripts are never turned off here.
# @openai/codex needs none: its bin/codex.js finds the platform package at run time.
set -eu
cd "$(dirname "$0")/.."
dir=build/clients
pins=tests/clients/pins.txt
command -v node >/dev/null 2>&1 || { echo "clients: node is not installed" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { echo "clients: npm is not installed" >&2; exit 1; }
want=""
missing=""
while read -r name ver rest; do
	case $name in '' | '#'*) continue ;; esac
	want="$want $name@$ver"
	have=$(node -e 'try { process.stdout.write(require(process.argv[1]).version) } catch (e) {}' \
		"$PWD/$dir/node_modules/$name/package.json" 2>/dev/null || true)
	[ "$have" = "$ver" ] || missing="$missing $name@$ver${have:+ (have $have)}"
done <"$pins"
# both CLIs must start (claude's binary is put in place by its postinstall)
clis_start() {
	for cli in codex claude; do
		if ! out=$("$dir/node_modules/.bin/$cli" --version 2>&1); then
			why="$dir/node_modules/.bin/$cli --version failed: $(echo "$out" | head -n 3)"
			return 1
		fi
	done
	return 0
}
why=""
[ -n "$missing" ] || clis_start || missing=" ($why)"
if [ -n "$missing" ]; then
	[ "${1:-}" = "--check" ] && { echo "clients: missing:$missing"; exit 1; }
	echo "clients: installing$want into $dir (missing:$missing)"
	# from scratch: npm would keep a package whose version matches but whose postinstall
	# did not run
	rm -rf "$dir"
	mkdir -p "$dir"
	# shellcheck disable=SC2086
	npm install --prefix "$dir" --no-save --no-package-lock --no-audit --no-fund \
		--ignore-scripts=false --loglevel=error $want
	clis_start || { echo "clients: $why" >&2; exit 1; }
fi
[ "${1:-}" = "--check" ] && echo "clients: complete"
exit 0
