#!/usr/bin/env bash
# make bench: run every bench/*.py (each prints its own table) with Postgres and Redis up.
# Env: BENCH="bench/tap.py bench/x.py" runs only those; BENCH_ARGS are passed to each
# (e.g. BENCH=bench/tap.py BENCH_ARGS="--modes bare --quick").
set -euo pipefail
# shellcheck source=scripts/services.sh
source "$(dirname "${BASH_SOURCE[0]}")/services.sh"
cd "$HQ_ROOT"

[ -x "$HQ_PY" ] || die "no virtualenv: run make bench (or make venv) instead of this script"
# shellcheck disable=SC2206 # BENCH is a list of paths
SCRIPTS=(${BENCH:-})
if [ "${#SCRIPTS[@]}" -eq 0 ]; then
    shopt -s nullglob
    SCRIPTS=(bench/*.py)
fi
if [ "${#SCRIPTS[@]}" -eq 0 ]; then
    say "no bench/*.py scripts yet"
    exit 0
fi

trap services_stop_started EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
services_up
export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-hq.settings}"
export PYTHONPATH="$HQ_ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HQ_SECRET_KEY="${HQ_SECRET_KEY:-bench-only-not-secret}"

FAILED=()
for script in "${SCRIPTS[@]}"; do
    # Helper modules (no __main__ block) are not benchmarks.
    grep -q '__main__' "$script" || continue
    say "bench: $script"
    # shellcheck disable=SC2086 # BENCH_ARGS is a list of arguments
    "$HQ_PY" "$script" ${BENCH_ARGS:-} || FAILED+=("$script")
done
if [ "${#FAILED[@]}" -gt 0 ]; then
    die "failed: ${FAILED[*]}"
fi
say "benchmarks done"
