#!/usr/bin/env bash
# System packages and the Python virtualenv, at the level each make target needs.
#
#   bash scripts/bootstrap.sh deps run    Debian packages make run needs (gearmand, tcpdump,
#                                         npm, Postgres/Redis clients; servers when none answers)
#   bash scripts/bootstrap.sh deps bench  run's + the Gearman clients bench/ drives (PHP, CLI)
#   bash scripts/bootstrap.sh deps test   run's + what only the tests use (PHP, Perl and CLI
#                                         Gearman clients, Chromium)
#   bash scripts/bootstrap.sh venv run    .venv (python3.11) + pip install -e .  (runtime deps)
#   bash scripts/bootstrap.sh venv dev    .venv + pip install -e '.[dev]' (also the test and lint tools)
#
# deps installs what is missing when root (without Recommends), else names it and stops.
# venv leaves .venv/.stamp-run (and, for dev, .venv/.stamp-dev too: '.[dev]' includes the
# runtime deps) behind; the Makefile reinstalls a level when pyproject.toml is newer than
# its stamp.
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
    say "apt-get install -y --no-install-recommends $*"
    apt-get install -y -q --no-install-recommends "$@"
}

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'
}

# ---------------------------------------------------------------- deps
MISSING=()
declare -A WHY=() # package -> what needs it
want() { # want PACKAGE WHY: add once
    if [ -z "${WHY[$1]+set}" ]; then
        MISSING+=("$1")
        WHY[$1]="$2"
    fi
}
# need_cmd COMMAND PACKAGE WHY (also in /usr/sbin: gearmand, which a non-root PATH lacks)
need_cmd() { have "$1" || [ -x "/usr/sbin/$1" ] || want "$2" "$3"; }
need_pkg() { pkg_installed "$1" || want "$1" "$2"; }

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

# What make run itself runs (scripts/run.sh, scripts/services.sh, vendor_static.sh). The
# demo workload is pure Python (broker.client): it needs no PHP, Perl or CLI client.
want_run() {
    need_cmd gearmand gearman-job-server "the Gearman job server make run starts"
    need_cmd tcpdump tcpdump "the capture tap (else make run falls back to the proxy)"
    need_cmd npm npm "fetches htmx and uPlot into static/vendor/"
    need_cmd pg_isready postgresql-client "Postgres probes and createdb"
    need_cmd psql postgresql-client "Postgres probes and createdb"
    need_cmd createdb postgresql-client "Postgres probes and createdb"
    need_cmd redis-cli redis-tools "Redis probes"
    if ! postgres_reachable; then
        [ -x "$(pg_bindir)/initdb" ] || want postgresql "a private Postgres under var/ (none answers)"
        compgen -G '/usr/share/postgresql/*/extension/pg_trgm.control' >/dev/null ||
            want postgresql-contrib "pg_trgm for the private Postgres"
    fi
    if ! redis_reachable; then
        need_cmd redis-server redis-server "a private Redis under var/ (none answers)"
    fi
}

# Real PHP clients and workers (php-gearman): tests/interop and bench/tap.py, bench/live.py.
want_php() {
    need_cmd php php-cli "$1"
    need_pkg php-gearman "$1"
}

want_level() {
    case "$1" in
    run) want_run ;;
    bench)
        want_run
        want_php "PHP Gearman clients and workers of bench/"
        need_cmd gearman gearman-tools "the gearman CLI of bench/proxy_echo.py"
        need_cmd wrk wrk "HTTP load of bench/api_load.py"
        ;;
    test)
        want_run
        want_php "PHP client interop tests"
        need_pkg libgearman-client-perl "Perl client interop tests"
        need_cmd gearman gearman-tools "gearman/gearadmin CLI tests"
        need_cmd gearadmin gearman-tools "gearman/gearadmin CLI tests"
        need_cmd chromium chromium "browser tests (Playwright drives Debian's Chromium)"
        ;;
    *) die "unknown level '$1' (run, bench or test)" ;;
    esac
}

cmd_deps() {
    local level="$1" target p
    target="make $level"
    [ "$level" = test ] && target="make test/pytest"
    if [ "${HQ_SKIP_DEPS:-0}" = 1 ]; then
        say "HQ_SKIP_DEPS=1: not checking system packages"
        return 0
    fi
    want_level "$level"
    if [ "${#MISSING[@]}" -eq 0 ]; then
        say "system packages for $target: all present"
        return 0
    fi
    if ! is_root; then
        die "missing system packages for $target: ${MISSING[*]}
       install them with:  sudo apt-get install -y --no-install-recommends ${MISSING[*]}
       (or run make as root, which installs them)"
    fi
    have apt-get || die "missing system packages (${MISSING[*]}) and no apt-get: this needs Debian 12"
    say "installing the system packages $target needs:"
    for p in "${MISSING[@]}"; do
        note "$(printf '%-24s %s' "$p" "${WHY[$p]}")"
    done
    apt_install "${MISSING[@]}"
    if [ -n "${WHY[php-gearman]+set}" ] && have php && ! php -m 2>/dev/null | grep -qi '^gearman$'; then
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
    local level="$1" py spec shown what stamp reason
    case "$level" in
    run)
        spec="." shown="."
        what="runtime dependencies only; make test/lint add the test tools"
        ;;
    dev)
        spec=".[dev]" shown="'.[dev]'"
        what="also the test and lint tools: pytest, Playwright, ruff, mypy, stubs"
        ;;
    *) die "unknown level '$level' (run or dev)" ;;
    esac
    stamp="$HQ_VENV/.stamp-$level"
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
        # A venv made before the two levels: its .stamp meant '.[dev]' was installed.
        if [ -f "$HQ_VENV/.stamp" ] && [ "$HQ_VENV/.stamp" -nt pyproject.toml ]; then
            touch "$HQ_VENV/.stamp-run" "$HQ_VENV/.stamp-dev"
            rm -f "$HQ_VENV/.stamp"
            say "virtualenv .venv already has '.[dev]' for this pyproject.toml: nothing to install"
            return 0
        fi
        if [ -f "$stamp" ] || [ -f "$HQ_VENV/.stamp" ]; then
            reason="pyproject.toml changed"
        else
            reason="not installed yet"
        fi
        rm -f "$HQ_VENV/.stamp"
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
        reason="new virtualenv"
    fi
    say "pip install -e $shown ($what; $reason)"
    # also compiles the tap's hot path with mypyc (setup.py); HQ_PURE_PYTHON=1 skips that
    "$HQ_PY" -m pip install -q -e "$spec"
    note "capture hot path: $("$HQ_PY" -c 'from broker.compiled import status; print(status())' 2>&1 | tail -1)"
    # '.[dev]' includes the runtime dependencies: a dev install satisfies run too.
    touch "$HQ_VENV/.stamp-run"
    [ "$level" = dev ] && touch "$HQ_VENV/.stamp-dev"
    say "virtualenv ready: .venv ($level)"
}

case "${1:-}" in
deps) cmd_deps "${2:-run}" ;;
venv) cmd_venv "${2:-run}" ;;
*) die "usage: $0 deps [run|bench|test] | venv [run|dev]" ;;
esac
