#!/bin/sh
# vendor/genai-prices.sh - obtain and verify pydantic's genai-prices catalog (MIT) at a pinned
# version and extract its price data to a JSON file that `prices = FILE` reads.
#
#   sh vendor/genai-prices.sh [OUT=build/genai-prices.json]
#   sh vendor/genai-prices.sh clean
#
# The npm package @pydantic/genai-prices bundles the data inside its JS module; npm fetches
# the pinned tarball (`npm pack`, from whichever registry npm is set up with), its SHA-256 is
# checked against the one pinned below, and node extracts the providers array (ids, match
# rules, prices; descriptions and usage extractors left out). Nothing of it is committed.
# Environment: GENAI_PRICES_TARBALL  a local copy of the .tgz to use (checksum still enforced)
set -eu

PKG=@pydantic/genai-prices
PKG_VERSION=0.1.8
PKG_FILE=pydantic-genai-prices-0.1.8.tgz
PKG_SHA256=8c9ba41e46719abc54a0ae4756ba5f2b5a768b8117fb29f40c5ca7ed3146eb5b

say() { printf 'genai-prices: %s\n' "$*" >&2; }
die() { printf 'genai-prices: error: %s\n' "$*" >&2; exit 1; }

ROOT_DIR=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT_DIR/build/genai-prices.json
MODE=build
for a in "$@"; do
	case $a in
	OUT=*) OUT=${a#*=} ;;
	clean) MODE=clean ;;
	build) ;;
	-h | --help) sed -n '2,12s/^# \{0,1\}//p' "$0"; exit 0 ;;
	*) die "unknown argument: $a" ;;
	esac
done
WORK=$ROOT_DIR/build/genai-prices-src
if [ "$MODE" = clean ]; then
	rm -rf "$WORK" "$OUT"
	say "removed $WORK $OUT"
	exit 0
fi
KEY="$PKG@$PKG_VERSION $PKG_SHA256"
if [ -s "$OUT" ] && [ -f "$OUT.key" ] && [ "$(cat "$OUT.key")" = "$KEY" ]; then
	say "up to date: $OUT ($PKG@$PKG_VERSION)"
	exit 0
fi
command -v node >/dev/null 2>&1 || die "node is needed (sh .ci/deps.sh installs it)"
sha256() {
	if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
	else shasum -a 256 "$1" | cut -d' ' -f1; fi
}
mkdir -p "$WORK"
TGZ=$WORK/$PKG_FILE
if [ -n "${GENAI_PRICES_TARBALL:-}" ]; then
	cp "$GENAI_PRICES_TARBALL" "$TGZ"
elif [ ! -s "$TGZ" ] || [ "$(sha256 "$TGZ")" != "$PKG_SHA256" ]; then
	command -v npm >/dev/null 2>&1 || die "npm is needed (sh .ci/deps.sh installs it)"
	rm -f "$TGZ"
	(cd "$WORK" && npm pack --silent "$PKG@$PKG_VERSION" >/dev/null) || die "npm pack $PKG@$PKG_VERSION failed"
fi
[ -s "$TGZ" ] || die "no $PKG_FILE after npm pack"
GOT=$(sha256 "$TGZ")
[ "$GOT" = "$PKG_SHA256" ] || die "$PKG_FILE: sha256 $GOT, expected $PKG_SHA256"
rm -rf "$WORK/package"
(cd "$WORK" && tar xzf "$PKG_FILE") || die "cannot unpack $PKG_FILE"
# The module keeps the data in its first statement, `const E = [...]`, used by findProvider;
# a copy of the module that also exports it lets node hand the array over as it is.
node - "$WORK/package/dist/index.js" "$OUT.tmp" <<'JS' || die "extracting the data failed"
const fs = require('fs'), path = require('path'), url = require('url');
const [src, out] = process.argv.slice(2);
const text = fs.readFileSync(src, 'utf8');
const m = /^const (\w+) = \[/.exec(text);
if (!m) throw new Error('the data array was not found at the start of ' + src);
const copy = path.join(path.dirname(src), 'llmgw-data.mjs');
fs.writeFileSync(copy, text + '\nexport { ' + m[1] + ' as __llmgw_data };\n');
import(url.pathToFileURL(copy).href).then((mod) => {
  const keep = (p) => ({
    id: p.id, name: p.name, api_pattern: p.api_pattern, provider_match: p.provider_match,
    model_match: p.model_match, fallback_model_providers: p.fallback_model_providers,
    models: p.models.map((md) => ({ id: md.id, match: md.match, context_window: md.context_window,
                                    prices: md.prices })),
  });
  const data = mod.__llmgw_data.map(keep);
  if (!Array.isArray(data) || data.length < 5) throw new Error('too few providers: ' + data.length);
  fs.writeFileSync(out, JSON.stringify(data) + '\n');
  let n = 0; for (const p of data) n += p.models.length;
  console.error('genai-prices: ' + data.length + ' providers, ' + n + ' models');
});
JS
mv -f "$OUT.tmp" "$OUT"
printf '%s\n' "$KEY" >"$OUT.key"
say "wrote $OUT ($(wc -c <"$OUT" | tr -d ' ') bytes, $PKG@$PKG_VERSION)"
