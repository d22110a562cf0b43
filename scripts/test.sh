#!/usr/bin/env bash
# make test (after make lint): Postgres + Redis from scripts/services.sh, then pytest.
# Never starts gearmand: the tests start their own on free ports.
#
# Env: PYTEST_ARGS (extra pytest arguments, e.g. PYTEST_ARGS="-k proxy -x"),
#      HQ_CHROMIUM (default /usr/bin/chromium; the browser tests use it, never playwright install),
#      DATABASE_URL / REDIS_URL (see scripts/services.sh).
set -euo pipefail
# shellcheck source=scripts/services.sh
source "$(dirname "${BASH_SOURCE[0]}")/services.sh"
cd "$HQ_ROOT"

[ -x "$HQ_PY" ] || die "no virtualenv: run make test (or make venv-dev) instead of this script"
# make run installs only the runtime dependencies; the test tools come with make venv-dev.
"$HQ_PY" -c 'import pytest' 2>/dev/null ||
    die ".venv has no pytest (make run installs only the runtime dependencies): run make test, or make venv-dev"

trap services_stop_started EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
services_up

export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-hq.settings}"
export PYTHONPATH="$HQ_ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${HQ_CHROMIUM:-}" ] && have chromium; then
    HQ_CHROMIUM="$(command -v chromium)"
fi
export HQ_CHROMIUM="${HQ_CHROMIUM:-/usr/bin/chromium}"
export HQ_SECRET_KEY="${HQ_SECRET_KEY:-test-only-not-secret}"

# The browser tests see the same static files as make run (WhiteNoise serves STATIC_ROOT).
mkdir -p "$HQ_LOG"
if ! "$HQ_PY" manage.py collectstatic --noinput >"$HQ_LOG/collectstatic.log" 2>&1; then
    log_tail "$HQ_LOG/collectstatic.log"
    die "collectstatic failed"
fi

# shellcheck disable=SC2206 # PYTEST_ARGS is a list of arguments
ARGS=(${PYTEST_ARGS:-})
say "pytest -q${ARGS[*]+ ${ARGS[*]}} (DATABASE_URL=$(mask_url "$DATABASE_URL") REDIS_URL=$(mask_url "$REDIS_URL"))"
rc=0
"$HQ_PY" -m pytest -q "${ARGS[@]+"${ARGS[@]}"}" || rc=$?
if [ "$rc" -eq 0 ]; then say "tests passed"; else warn "pytest exited with code $rc"; fi
exit "$rc"
