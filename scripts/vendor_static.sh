#!/usr/bin/env bash
# Third-party browser assets, served locally by whitenoise (users' browsers need no network).
#
#   bash scripts/vendor_static.sh          install what is missing under static/vendor/
#   HQ_VENDOR_FORCE=1 bash scripts/...     reinstall even when present
#
# htmx comes from the npm registry through npm itself (into var/npm, not node_modules at
# the root); only the minified file is copied to static/vendor/, which git ignores.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENDOR="$ROOT/static/vendor"
NPM_PREFIX="$ROOT/var/npm"
HTMX_SPEC="htmx.org@2"

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

mkdir -p "$VENDOR"
target="$VENDOR/htmx.min.js"
if [ "${HQ_VENDOR_FORCE:-0}" != 1 ] && [ -s "$target" ]; then
    exit 0 # already vendored: nothing to do (fast path for make)
fi

src="$NPM_PREFIX/node_modules/htmx.org/dist/htmx.min.js"
if [ "${HQ_VENDOR_FORCE:-0}" = 1 ] || [ ! -s "$src" ]; then
    command -v npm >/dev/null 2>&1 || die "npm is needed to fetch htmx (apt-get install npm)"
    say "npm install $HTMX_SPEC"
    mkdir -p "$NPM_PREFIX"
    npm install --no-save --no-audit --no-fund --loglevel=error \
        --prefix "$NPM_PREFIX" "$HTMX_SPEC" >/dev/null
fi
[ -s "$src" ] || die "npm did not produce $src"
cp "$src" "$target.tmp"
mv "$target.tmp" "$target"
say "htmx $(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' \
    "$NPM_PREFIX/node_modules/htmx.org/package.json" | head -1) -> static/vendor/htmx.min.js"
