#!/usr/bin/env bash
# Third-party browser assets, served locally by whitenoise (users' browsers need no network).
#
#   bash scripts/vendor_static.sh          install what is missing under static/vendor/
#   HQ_VENDOR_FORCE=1 bash scripts/...     reinstall even when present
#
# Packages come from the npm registry through npm itself (into var/npm, not node_modules
# at the root); only the built files are copied to static/vendor/, which git ignores:
#   htmx.org  -> static/vendor/htmx.min.js
#   uplot     -> static/vendor/uplot/uPlot.iife.min.js, static/vendor/uplot/uPlot.min.css
# Every package is installed by one npm command: a second `npm install --no-save` into the
# same prefix would prune the first package as extraneous.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENDOR="$ROOT/static/vendor"
NPM_PREFIX="$ROOT/var/npm"
MODULES="$NPM_PREFIX/node_modules"
SPECS=("htmx.org@2" "uplot@1")

# source (under node_modules) -> target (under static/vendor)
FILES=(
    "htmx.org/dist/htmx.min.js:htmx.min.js"
    "uplot/dist/uPlot.iife.min.js:uplot/uPlot.iife.min.js"
    "uplot/dist/uPlot.min.css:uplot/uPlot.min.css"
)

say() { printf '==> %s\n' "$*"; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}
force() { [ "${HQ_VENDOR_FORCE:-0}" = 1 ]; }

missing() { # which of FILES has no target (or no source, for sources=1)
    local entry src dst
    for entry in "${FILES[@]}"; do
        src="${entry%%:*}" dst="${entry#*:}"
        if [ "${1:-}" = sources ]; then
            [ -s "$MODULES/$src" ] || echo "$src"
        else
            [ -s "$VENDOR/$dst" ] || echo "$dst"
        fi
    done
}

version_of() {
    sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$MODULES/$1/package.json" | head -1
}

mkdir -p "$VENDOR"
if ! force && [ -z "$(missing)" ]; then
    exit 0 # everything vendored: nothing to do (fast path for make)
fi

if force || [ -n "$(missing sources)" ]; then
    command -v npm >/dev/null 2>&1 || die "npm is needed to fetch ${SPECS[*]} (apt-get install npm)"
    say "npm install ${SPECS[*]}"
    mkdir -p "$NPM_PREFIX"
    npm install --no-save --no-audit --no-fund --loglevel=error \
        --prefix "$NPM_PREFIX" "${SPECS[@]}" >/dev/null
fi
[ -z "$(missing sources)" ] || die "npm did not produce: $(missing sources | tr '\n' ' ')"

for entry in "${FILES[@]}"; do
    src="${entry%%:*}" dst="${entry#*:}"
    mkdir -p "$(dirname "$VENDOR/$dst")"
    cp "$MODULES/$src" "$VENDOR/$dst.tmp"
    mv "$VENDOR/$dst.tmp" "$VENDOR/$dst"
done
say "htmx $(version_of htmx.org), uPlot $(version_of uplot) -> static/vendor/"
