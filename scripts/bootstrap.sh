#!/usr/bin/env bash
# System packages and the Python virtualenv.
#
#   bash scripts/bootstrap.sh deps   install missing Debian packages (root), or name them
#   bash scripts/bootstrap.sh venv   create .venv (python3.11) and pip install -e '.[dev]'
#
# Env: HQ_SKIP_DEPS=1 skips the package check; PYTHON picks the interpreter (default
# python3.11, else python3 when it is 3.11).
set -euo pipefail
# shellcheck source=scripts/services.sh
source "$(dirname "${BASH_SOURCE[0]}")/services.sh"

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
    say "apt-get install -y $*"
    apt-get install -y -q "$@"
}

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'
}

# ---------------------------------------------------------------- deps
MISSING=()
want() { # want PACKAGE: add once
    local p
    for p in "${MISSING[@]+"${MISSING[@]}"}"; do [ "$p" = "$1" ] && return 0; done
    MISSING+=("$1")
}
need_cmd() { have "$1" || want "$2"; }
need_pkg() { pkg_installed "$1" || want "$1"; }

# A Postgres we can use without installing a server: $DATABASE_URL, the standard local
# one, or our private one already running.
postgres_reachable() {
    local url
    for url in "${DATABASE_URL:-}" "$HQ_LOCAL_DATABASE_URL" "$(private_pg_url)"; do
        [ -n "$url" ] && pg_answers "$url" && return 0
    done
    return 1
}

redis_reachable() {
    local url
    for url in "${REDIS_URL:-}" "$HQ_LOCAL_REDIS_URL" "$(private_redis_url)"; do
        [ -n "$url" ] && redis_answers "$url" && return 0
    done
    return 1
}

cmd_deps() {
    if [ "${HQ_SKIP_DEPS:-0}" = 1 ]; then
        say "HQ_SKIP_DEPS=1: not checking system packages"
        return 0
    fi
    need_cmd gearmand gearman-job-server
    need_cmd gearman gearman-tools
    need_cmd gearadmin gearman-tools
    need_cmd tcpdump tcpdump
    need_cmd php php-cli
    need_pkg php-gearman
    need_pkg libgearman-client-perl
    need_cmd chromium chromium
    need_cmd npm npm
    need_cmd pg_isready postgresql-client
    need_cmd psql postgresql-client
    need_cmd createdb postgresql-client
    need_cmd redis-cli redis-tools
    if ! postgres_reachable; then
        [ -x "$(pg_bindir)/initdb" ] || want postgresql
        compgen -G '/usr/share/postgresql/*/extension/pg_trgm.control' >/dev/null ||
            want postgresql-contrib
    fi
    if ! redis_reachable; then
        need_cmd redis-server redis-server
    fi
    if [ "${#MISSING[@]}" -eq 0 ]; then
        say "system packages: all present"
        return 0
    fi
    if ! is_root; then
        die "missing system packages: ${MISSING[*]}
       install them with:  sudo apt-get install -y ${MISSING[*]}
       (or run make as root, which installs them)"
    fi
    have apt-get || die "missing system packages (${MISSING[*]}) and no apt-get: this needs Debian 12"
    say "installing missing system packages: ${MISSING[*]}"
    apt_install "${MISSING[@]}"
    if have php && ! php -m 2>/dev/null | grep -qi '^gearman$'; then
        warn "php-gearman is installed but the gearman module is not loaded by php-cli"
        if have phpenmod; then phpenmod gearman || true; fi
    fi
}

# ---------------------------------------------------------------- venv
is_py311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1; }

find_python() {
    local c
    for c in "${PYTHON:-}" python3.11 python3; do
        [ -n "$c" ] && have "$c" && is_py311 "$c" && {
            command -v "$c"
            return 0
        }
    done
    return 1
}

cmd_venv() {
    local py
    if ! py="$(find_python)"; then
        if is_root && have apt-get; then
            apt_install python3.11 python3.11-venv python3.11-dev
            py="$(find_python)" || die "python3.11 still not found"
        else
            die "Python 3.11 not found (tried \$PYTHON, python3.11, python3).
       Debian: sudo apt-get install -y python3.11 python3.11-venv"
        fi
    fi
    cd "$HQ_ROOT"
    if [ -x "$HQ_PY" ] && is_py311 "$HQ_PY"; then
        say "virtualenv .venv exists ($("$HQ_PY" --version))"
    else
        say "creating .venv with $py ($("$py" --version))"
        if ! "$py" -m venv --clear "$HQ_VENV"; then
            if is_root && have apt-get; then
                apt_install python3.11-venv
                "$py" -m venv --clear "$HQ_VENV"
            else
                die "'$py -m venv' failed: install python3.11-venv"
            fi
        fi
    fi
    say "pip install -e '.[dev]' (pyproject.toml changed or new venv)"
    "$HQ_PY" -m pip install -q -e '.[dev]'
    touch "$HQ_VENV/.stamp"
    say "virtualenv ready: .venv"
}

case "${1:-}" in
deps) cmd_deps ;;
venv) cmd_venv ;;
*) die "usage: $0 deps|venv" ;;
esac
