#!/usr/bin/env bash
# make run: Postgres + Redis (scripts/services.sh), gearmand, migrate, admin user, then the
# tap, the web server, Celery and the demo workload in the background (logs in var/log/).
# Waits; Ctrl-C stops only what this script started.
#
# Env (all optional):
#   HQ_HTTP=127.0.0.1:8000        web server address
#   HQ_WS=<HQ_HTTP host>:8001     the live websocket server's address (pages find it)
#   HQ_WEB_WORKERS=3              web server processes (HQ_DB_POOL_MAX Postgres connections each)
#   HQ_GEARMAN=127.0.0.1:4730     where Gearman clients (and HQ) connect
#   HQ_TAP_MODE=capture|proxy     default: capture when we may (root / CAP_NET_RAW), else proxy
#   HQ_PROXY_LISTEN=$HQ_GEARMAN   proxy mode: the proxy's listen address
#   HQ_GEARMAND                   the real gearmand: = HQ_GEARMAN in capture mode,
#                                 host:port+1 (127.0.0.1:4731) in proxy mode
#   HQ_CAPTURE_INTERFACE          capture mode: default lo for a loopback gearmand, else any
#   HQ_SERVER_NAME=local          the name HQ gives this gearmand
#   HQ_GEARMAND_COUNT=1           private gearmand to start, each with its own tap: server
#                                 N is named $HQ_SERVER_NAME-N (local, local-2, ...) on the
#                                 next port (capture) or the next pair (proxy: proxy 4732,
#                                 gearmand 4733); its queue table gearmand_queue_N; the
#                                 web, Celery and the demo get HQ_GEARMAN as the list
#   HQ_GEARMAND_ARGS              extra gearmand flags (e.g. "--job-retries 3")
#   HQ_GEARMAND_QUEUE=postgres    the private gearmand keeps its queue in HQ's Postgres
#                                 (its own table gearmand_queue), so background jobs
#                                 survive its restart; HQ links each restored job to its
#                                 earlier record (jobs/restored.py); none: memory only
#   HQ_DEMO=0                     do not start the demo workload
#   HQ_SECRET_KEY                 default: generated once into var/secret_key
#   DATABASE_URL, REDIS_URL       see scripts/services.sh
set -euo pipefail
# Everything this script and what it starts create under var/ (logs, run.env with the admin
# password and API token, the secret key, database files) is readable by this user only.
umask 077
# shellcheck source=scripts/services.sh
source "$(dirname "${BASH_SOURCE[0]}")/services.sh"
cd "$HQ_ROOT"

HQ_HTTP="${HQ_HTTP:-127.0.0.1:8000}"
HQ_WS="${HQ_WS:-${HQ_HTTP%:*}:8001}"
HQ_GEARMAN="${HQ_GEARMAN:-127.0.0.1:4730}"
HQ_SERVER_NAME="${HQ_SERVER_NAME:-local}"
HQ_DEMO="${HQ_DEMO:-1}"
HQ_GEARMAND_COUNT="${HQ_GEARMAND_COUNT:-1}"

[ -x "$HQ_PY" ] || die "no virtualenv: run make run (or make venv) instead of this script"
[ -f manage.py ] || die "manage.py not found in $HQ_ROOT"
[[ $HQ_GEARMAND_COUNT =~ ^[1-9][0-9]*$ ]] && ((HQ_GEARMAND_COUNT <= 20)) ||
    die "HQ_GEARMAND_COUNT must be a number from 1 to 20 (got '$HQ_GEARMAND_COUNT')"
if ((HQ_GEARMAND_COUNT > 1)) && [[ $HQ_GEARMAN == *[,=]* ]]; then
    die "HQ_GEARMAND_COUNT=$HQ_GEARMAND_COUNT wants HQ_GEARMAN as one HOST:PORT (the first server's); make run names the others"
fi
mkdir -p "$HQ_LOG" "$HQ_RUN"
# files an older make run left readable by others (umask applies to new files only)
chmod -f go-rwx "$HQ_VAR"/run.env "$HQ_VAR"/secret_key "$HQ_VAR"/api_token "$HQ_LOG"/*.log* 2>/dev/null || true

# ---------------------------------------------------------------- process bookkeeping
STARTED=()          # names, in start order
declare -A PIDS=()  # name -> pid (= process group id, thanks to setsid)
declare -A WATCH=() # names still watched by the wait loop
CLEANING=0
EXIT_RC=""

manage() { "$HQ_PY" "$HQ_ROOT/manage.py" "$@"; }

declare -A CMDS=()     # name -> the command, shell-quoted, to start it again
declare -A RESTARTS=() # name -> restarts in a row (reset once it stays up RESTART_RESET_S)
declare -A SINCE=()    # name -> when it was last started (epoch seconds)
declare -A DUE=()      # name -> when a dead process is started again (epoch seconds)
RESTART_MAX_S=60       # the longest wait between restarts
RESTART_RESET_S=120    # up this long: the next death starts the backoff from 1 s again

# start_bg NAME COMMAND...: run in its own process group, output to var/log/NAME.log.
start_bg() {
    local name="$1" log="$HQ_LOG/$1.log"
    shift
    [ -s "$log" ] && mv -f "$log" "$log.1"
    printf '=== %s  %s\n' "$(date -Is)" "$*" >"$log"
    CMDS[$name]="$(printf '%q ' "$@")"
    RESTARTS[$name]=0
    STARTED+=("$name")
    launch "$name"
    say "started $name (pid ${PIDS[$name]}, log var/log/$name.log)"
}

# launch NAME: (re)start NAME's command in the background, appending to its log.
launch() {
    local name="$1"
    eval "setsid ${CMDS[$name]} >>\"\$HQ_LOG/$name.log\" 2>&1 </dev/null &"
    PIDS[$name]=$!
    WATCH[$name]=1
    SINCE[$name]=$(date +%s)
    unset 'DUE[$name]'
    printf '%s\n' "${PIDS[$name]}" >"$HQ_RUN/$name.pid"
}

# schedule_restart NAME: it died; start it again after 1, 2, 4 … RESTART_MAX_S seconds
# (the backoff of docker-compose's restart: unless-stopped), saying why in its log too.
schedule_restart() {
    local name="$1" now n delay
    now=$(date +%s)
    if ((now - SINCE[$name] >= RESTART_RESET_S)); then RESTARTS[$name]=0; fi
    n=${RESTARTS[$name]}
    delay=$((1 << (n < 6 ? n : 6)))
    ((delay > RESTART_MAX_S)) && delay=$RESTART_MAX_S
    RESTARTS[$name]=$((n + 1))
    DUE[$name]=$((now + delay))
    warn "restarting $name in ${delay}s (restart #$((n + 1)); it exited with code $EXIT_RC)"
    printf '=== %s  exited with code %s; restart #%s in %ss\n' "$(date -Is)" "$EXIT_RC" \
        "$((n + 1))" "$delay" >>"$HQ_LOG/$name.log"
}

restart_due() {
    local name now
    now=$(date +%s)
    for name in "${!DUE[@]}"; do
        ((now >= DUE[$name])) || continue
        launch "$name"
        say "restarted $name (pid ${PIDS[$name]}, log var/log/$name.log)"
    done
}

alive() { kill -0 "${PIDS[$1]}" 2>/dev/null; }

# exit_code NAME: sets EXIT_RC to the exit status of a process that has ended. (Not in a
# $(...) subshell: only this shell may wait for its children.)
exit_code() {
    EXIT_RC=0
    wait "${PIDS[$1]}" 2>/dev/null || EXIT_RC=$?
}

# report_dead NAME: it exited; say so with the tail of its log.
report_dead() {
    [ -n "${EXIT_RC:-}" ] || exit_code "$1"
    warn "$1 exited with code $EXIT_RC; it is not running"
    EXIT_RC=""
    log_tail "$HQ_LOG/$1.log"
    unset 'WATCH[$1]'
    rm -f "$HQ_RUN/$1.pid"
}

# await NAME SECONDS [HOST PORT]: still alive after SECONDS, or (with HOST PORT) listening
# there within SECONDS. Returns 1 and reports when not.
await() {
    local name="$1" seconds="$2" host="${3:-}" port="${4:-}" i
    for ((i = 0; i < seconds * 5; i++)); do
        if ! alive "$name"; then
            EXIT_RC=""
            report_dead "$name"
            return 1
        fi
        if [ -n "$port" ] && tcp_open "$host" "$port"; then
            return 0
        fi
        sleep 0.2
    done
    if [ -n "$port" ]; then
        warn "$name is running but does not listen on $host:$port after ${seconds}s"
        log_tail "$HQ_LOG/$name.log"
        return 1
    fi
    return 0
}

stop_one() {
    local name="$1" pid="${PIDS[$1]}" i
    rm -f "$HQ_RUN/$name.pid"
    alive "$name" || return 0
    say "stopping $name (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 75; i++)); do
        alive "$name" || return 0
        sleep 0.2
    done
    warn "$name did not stop within 15 s: SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? i
    [ "$CLEANING" = 1 ] && return
    CLEANING=1
    trap '' INT TERM
    echo
    say "shutting down what make run started"
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        stop_one "${STARTED[i]}"
    done
    services_stop_started
    say "stopped"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- environment
services_up

if [ -z "${HQ_SECRET_KEY:-}" ]; then
    if [ ! -s "$HQ_VAR/secret_key" ]; then
        (umask 077 && "$HQ_PY" -c 'import secrets; print(secrets.token_urlsafe(50))' >"$HQ_VAR/secret_key")
    fi
    HQ_SECRET_KEY="$(cat "$HQ_VAR/secret_key")"
fi

if [ -z "${HQ_TAP_MODE:-}" ]; then
    if has_cap_net_raw && have tcpdump; then HQ_TAP_MODE=capture; else HQ_TAP_MODE=proxy; fi
    TAP_REASON="default: $([ "$HQ_TAP_MODE" = capture ] && echo "this process may capture" || echo "no CAP_NET_RAW or no tcpdump")"
else
    TAP_REASON="HQ_TAP_MODE"
fi
case "$HQ_TAP_MODE" in
capture | proxy) ;;
*) die "HQ_TAP_MODE must be capture or proxy, not '$HQ_TAP_MODE'" ;;
esac

split_hostport "$HQ_GEARMAN" 4730
G_HOST="$HP_HOST"
G_PORT="$HP_PORT"
if [ "$HQ_TAP_MODE" = capture ]; then
    HQ_GEARMAND="${HQ_GEARMAND:-$HQ_GEARMAN}"
else
    HQ_PROXY_LISTEN="${HQ_PROXY_LISTEN:-$HQ_GEARMAN}"
    HQ_GEARMAND="${HQ_GEARMAND:-$G_HOST:$((G_PORT + 1))}"
fi
split_hostport "$HQ_GEARMAND" 4730
GD_HOST="$HP_HOST"
GD_PORT="$HP_PORT"
split_hostport "$HQ_HTTP" 8000
WEB_HOST="$HP_HOST"
WEB_PORT="$HP_PORT"
split_hostport "$HQ_WS" 8001
WS_HOST="$HP_HOST"
WS_PORT="$HP_PORT"

export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-hq.settings}"
export PYTHONPATH="$HQ_ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HQ_SECRET_KEY HQ_HTTP HQ_GEARMAN HQ_GEARMAND HQ_TAP_MODE HQ_SERVER_NAME
if [ "$HQ_TAP_MODE" = proxy ]; then export HQ_PROXY_LISTEN; fi

if tcp_open "$WEB_HOST" "$WEB_PORT"; then
    die "$HQ_HTTP is already in use (another make run?); choose another with HQ_HTTP=127.0.0.1:8010"
fi
if tcp_open "$WS_HOST" "$WS_PORT"; then
    die "$HQ_WS is already in use (another make run?); choose another with HQ_WS=127.0.0.1:8011"
fi

# ---------------------------------------------------------------- gearmand
say "tap mode: $HQ_TAP_MODE ($TAP_REASON)"
# gearmand's libpq queue wants a key=value conninfo, not a URL; a password goes to a 0600
# passfile, never onto gearmand's command line (ps, its log). Sets CONNINFO (once).
queue_conninfo() {
    [ -n "${CONNINFO:-}" ] && return 0
    CONNINFO="$("$HQ_PY" - "$DATABASE_URL" "$HQ_RUN/gearmand.pgpass" <<'PY'
import sys
from psycopg.conninfo import conninfo_to_dict
info = {k: str(v) for k, v in conninfo_to_dict(sys.argv[1]).items()}
password = info.pop("password", "")
if password:
    def esc(v): return v.replace("\\", "\\\\").replace(":", "\\:")
    fields = [info.get("host", "*"), info.get("port", "*"), info.get("dbname", "*"),
              info.get("user", "*"), password]
    with open(sys.argv[2], "w") as f:
        f.write(":".join(esc(v) for v in fields) + "\n")
    info["passfile"] = sys.argv[2]
def quote(v): return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
print(" ".join(f"{k}={quote(v)}" for k, v in info.items()))
PY
)" || die "cannot read DATABASE_URL for gearmand's queue"
}

# start_gearmand NAME HOST PORT TABLE: a private gearmand on HOST:PORT run as process NAME
# (log var/log/NAME.log), its queue in the Postgres table TABLE unless
# HQ_GEARMAND_QUEUE=none; or the gearmand that already answers there.
start_gearmand() {
    local name="$1" host="$2" port="$3" table="$4" i
    if gear_answers "$host" "$port"; then
        say "$name: one already answers on $host:$port; using it (it will not be stopped)"
        return 0
    fi
    # Debian puts gearmand in /usr/sbin, which a non-root PATH often lacks.
    GEARMAND_BIN="$(PATH="$PATH:/usr/sbin:/sbin" command -v gearmand)" ||
        die "gearmand not installed (make deps as root, or: sudo apt-get install gearman-job-server)"
    tcp_open "$host" "$port" && die "$host:$port is in use by something that is not gearmand"
    QUEUE_ARGS=()
    case "${HQ_GEARMAND_QUEUE:-postgres}" in
        postgres)
            queue_conninfo
            # made here, without gearmand's UNIQUE (unique_key, function_name), which
            # refuses a 2nd queued job of a function sent with no unique key (see the module)
            "$HQ_PY" -m jobs.gearmand_queue "$DATABASE_URL" "$table" ||
                die "cannot prepare gearmand's queue table"
            QUEUE_ARGS=(-q Postgres --libpq-conninfo "$CONNINFO" --libpq-table "$table")
            say "$name keeps its queue in Postgres (table $table)" ;;
        none) ;;
        *) die "HQ_GEARMAND_QUEUE must be postgres or none (got '$HQ_GEARMAND_QUEUE')" ;;
    esac
    say "starting $name on $host:$port"
    # shellcheck disable=SC2086 # HQ_GEARMAND_ARGS is a list of flags
    start_bg "$name" "$GEARMAND_BIN" --listen="$host" --port="$port" --log-file=stderr \
        --pid-file="$HQ_RUN/$name-own.pidfile" --verbose=WARNING "${QUEUE_ARGS[@]}" \
        ${HQ_GEARMAND_ARGS:-}
    for ((i = 0; i < 50; i++)); do
        gear_answers "$host" "$port" && break
        alive "$name" || break
        sleep 0.2
    done
    if ! gear_answers "$host" "$port"; then
        log_tail "$HQ_LOG/$name.log"
        die "$name did not start on $host:$port"
    fi
}
start_gearmand gearmand "$GD_HOST" "$GD_PORT" gearmand_queue
if [ "$HQ_TAP_MODE" = proxy ]; then
    split_hostport "$HQ_PROXY_LISTEN" 4730
    if tcp_open "$HP_HOST" "$HP_PORT"; then
        die "proxy mode: $HQ_PROXY_LISTEN is already taken (a gearmand started by someone else?).
       Stop it, or choose other ports: HQ_GEARMAN=127.0.0.1:4740 make run (gearmand then on 4741)"
    fi
fi

# More servers (HQ_GEARMAND_COUNT): server N = 2, 3, ... is named $HQ_SERVER_NAME-N and
# sits (N-1) ports after server 1 in capture mode, (N-1) pairs of ports after it in proxy
# mode (its proxy, then its gearmand), its gearmand queue in table gearmand_queue_N. The
# web, Celery and the demo then get HQ_GEARMAN as the list of every server.
EXTRA_NAMES=() EXTRA_CLIENTS=() EXTRA_GEARMANDS=() EXTRA_LISTENS=()
if ((HQ_GEARMAND_COUNT > 1)); then
    STEP=1
    if [ "$HQ_TAP_MODE" = proxy ]; then
        STEP=2
        split_hostport "$HQ_PROXY_LISTEN" 4730
        PL_HOST="$HP_HOST"
        PL_PORT="$HP_PORT"
    fi
    GEARMAN_LIST="$HQ_SERVER_NAME=$G_HOST:$G_PORT"
    for ((n = 2; n <= HQ_GEARMAND_COUNT; n++)); do
        off=$(((n - 1) * STEP))
        EXTRA_NAMES+=("$HQ_SERVER_NAME-$n")
        EXTRA_CLIENTS+=("$G_HOST:$((G_PORT + off))")
        EXTRA_GEARMANDS+=("$GD_HOST:$((GD_PORT + off))")
        start_gearmand "gearmand-$n" "$GD_HOST" "$((GD_PORT + off))" "gearmand_queue_$n"
        if [ "$HQ_TAP_MODE" = proxy ]; then
            EXTRA_LISTENS+=("$PL_HOST:$((PL_PORT + off))")
            tcp_open "$PL_HOST" "$((PL_PORT + off))" &&
                die "proxy mode: $PL_HOST:$((PL_PORT + off)) (server $n's proxy) is already taken"
        fi
        GEARMAN_LIST+=",$HQ_SERVER_NAME-$n=$G_HOST:$((G_PORT + off))"
    done
    HQ_GEARMAN="$GEARMAN_LIST" # exported above: what the web, Celery and the demo read
fi

write_run_env "DATABASE_URL=$DATABASE_URL" "REDIS_URL=$REDIS_URL" \
    "HQ_HTTP=$HQ_HTTP" "HQ_URL=http://$HQ_HTTP/" "HQ_GEARMAN=$HQ_GEARMAN" \
    "HQ_GEARMAND=$HQ_GEARMAND" "HQ_TAP_MODE=$HQ_TAP_MODE" "HQ_SERVER_NAME=$HQ_SERVER_NAME"
if [ "$HQ_TAP_MODE" = proxy ]; then
    printf 'HQ_PROXY_LISTEN=%s\n' "$HQ_PROXY_LISTEN" >>"$HQ_VAR/run.env"
fi
if ((HQ_GEARMAND_COUNT > 1)); then
    printf 'HQ_GEARMAND_COUNT=%s\n' "$HQ_GEARMAND_COUNT" >>"$HQ_VAR/run.env"
fi

# ---------------------------------------------------------------- database, static, admin
say "manage.py migrate"
manage migrate --noinput >"$HQ_LOG/migrate.log" 2>&1 || {
    log_tail "$HQ_LOG/migrate.log" 40
    die "migrate failed (full output: var/log/migrate.log)"
}
say "manage.py collectstatic"
manage collectstatic --noinput >"$HQ_LOG/collectstatic.log" 2>&1 || {
    log_tail "$HQ_LOG/collectstatic.log"
    die "collectstatic failed (full output: var/log/collectstatic.log)"
}
say "manage.py hq_setup (admin user and API token)"
# the admin password and token are in this log: 0600 even when an older one exists; the
# make-run token is minted once and kept in var/api_token (0600), reused by later runs
: >"$HQ_LOG/hq_setup.log" && chmod 600 "$HQ_LOG/hq_setup.log"
manage hq_setup --token-file "$HQ_VAR/api_token" >"$HQ_LOG/hq_setup.log" 2>&1 || {
    log_tail "$HQ_LOG/hq_setup.log"
    die "hq_setup failed (full output: var/log/hq_setup.log)"
}
grep -E '^HQ_[A-Z0-9_]+=' "$HQ_LOG/hq_setup.log" >>"$HQ_VAR/run.env" ||
    warn "hq_setup printed no HQ_ADMIN_USER= / HQ_ADMIN_PASSWORD= / HQ_API_TOKEN= lines"
# The file is written with printf only; read it back the same way (never sourced).
setting() { sed -n "s/^$1=//p" "$HQ_VAR/run.env" | tail -n 1; }
ADMIN_USER="$(setting HQ_ADMIN_USER)"
ADMIN_PASSWORD="$(setting HQ_ADMIN_PASSWORD)"
API_TOKEN="$(setting HQ_API_TOKEN)"

# ---------------------------------------------------------------- background processes
FAILED=()

# the taps run with the tap's settings (hq.tap.settings: no web apps, no Celery), as hq-tap
# does: ~45 MB less each (bench/tap_memory.py)
TAP_SETTINGS="$DJANGO_SETTINGS_MODULE"
[ "$TAP_SETTINGS" = hq.settings ] && TAP_SETTINGS=hq.tap.settings
HQ_TAP=(env DJANGO_SETTINGS_MODULE="$TAP_SETTINGS" "$HQ_PY" "$HQ_ROOT/manage.py")
if [ "$HQ_TAP_MODE" = capture ]; then
    IFACE="${HQ_CAPTURE_INTERFACE:-$(is_loopback "$GD_HOST" && echo lo || echo any)}"
    start_bg tap "${HQ_TAP[@]}" gearman_capture --interface "$IFACE" \
        --port "$GD_PORT" --gearman-host "$GD_HOST" --server "$HQ_SERVER_NAME"
    await tap 3 || FAILED+=(tap)
else
    split_hostport "$HQ_PROXY_LISTEN" 4730
    start_bg tap "${HQ_TAP[@]}" gearman_proxy --listen "$HQ_PROXY_LISTEN" \
        --upstream "$HQ_GEARMAND" --server "$HQ_SERVER_NAME"
    PROBE_HOST="$HP_HOST"
    [ "$PROBE_HOST" = 0.0.0.0 ] && PROBE_HOST=127.0.0.1
    await tap 20 "$PROBE_HOST" "$HP_PORT" || FAILED+=(tap)
fi
# one tap for each further server (HQ_GEARMAND_COUNT), named tap-2, tap-3, ...
for ((k = 0; k < ${#EXTRA_NAMES[@]}; k++)); do
    n=$((k + 2))
    if [ "$HQ_TAP_MODE" = capture ]; then
        split_hostport "${EXTRA_GEARMANDS[k]}"
        start_bg "tap-$n" "${HQ_TAP[@]}" gearman_capture --interface "$IFACE" \
            --port "$HP_PORT" --gearman-host "$HP_HOST" --server "${EXTRA_NAMES[k]}"
        await "tap-$n" 3 || FAILED+=("tap-$n")
    else
        split_hostport "${EXTRA_LISTENS[k]}"
        start_bg "tap-$n" "${HQ_TAP[@]}" gearman_proxy --listen "${EXTRA_LISTENS[k]}" \
            --upstream "${EXTRA_GEARMANDS[k]}" --server "${EXTRA_NAMES[k]}"
        PROBE_HOST="$HP_HOST"
        [ "$PROBE_HOST" = 0.0.0.0 ] && PROBE_HOST=127.0.0.1
        await "tap-$n" 20 "$PROBE_HOST" "$HP_PORT" || FAILED+=("tap-$n")
    fi
done

# hq/serve.py: HTTP on granian's WSGI workers (HQ_WEB_WORKERS), the live websocket on
# gunicorn + uvicorn beside it (HQ_WS), each with a bounded Postgres pool (README "Serving
# many clients")
start_bg web "$HQ_PY" -m hq.serve --bind "$WEB_HOST:$WEB_PORT" --ws-bind "$WS_HOST:$WS_PORT"
if ! await web 30 "$WEB_HOST" "$WEB_PORT" || ! await web 30 "$WS_HOST" "$WS_PORT"; then
    die "the web server did not start"
fi

start_bg worker "$HQ_VENV/bin/celery" -A hq worker -B --loglevel=INFO --concurrency=2 \
    --schedule "$HQ_VAR/celerybeat-schedule"
await worker 5 || FAILED+=(worker)

if [ "$HQ_DEMO" != 0 ]; then
    start_bg demo "$HQ_PY" "$HQ_ROOT/manage.py" hq_demo
    await demo 3 || FAILED+=(demo)
fi

# ---------------------------------------------------------------- banner
if [ "$HQ_TAP_MODE" = capture ]; then
    TAP_LINE="capture of $GD_HOST:$GD_PORT on interface $IFACE"
else
    TAP_LINE="proxy $HQ_PROXY_LISTEN -> gearmand $HQ_GEARMAND"
fi
if ((HQ_GEARMAND_COUNT > 1)); then # a line per server, each named
    TAP_LINE="$HQ_SERVER_NAME: $TAP_LINE"
    for ((k = 0; k < ${#EXTRA_NAMES[@]}; k++)); do
        if [ "$HQ_TAP_MODE" = capture ]; then
            line="capture of ${EXTRA_GEARMANDS[k]} on interface $IFACE"
        else
            line="proxy ${EXTRA_LISTENS[k]} -> gearmand ${EXTRA_GEARMANDS[k]}"
        fi
        TAP_LINE+=$'\n'"              ${EXTRA_NAMES[k]}: $line"
    done
fi
cat <<EOF

=====================================================================
 Gearman HQ is running
   web UI     http://$HQ_HTTP/   (live updates: ws://$HQ_WS/ws/live/)
   login      ${ADMIN_USER:-?} / ${ADMIN_PASSWORD:-?}
   API token  ${API_TOKEN:-?}
              curl -H "Authorization: Bearer ${API_TOKEN:-TOKEN}" http://$HQ_HTTP/api/v1/jobs/
   gearman    clients use $HQ_GEARMAN
   tap        $TAP_LINE
   database   $(mask_url "$DATABASE_URL")
   redis      $(mask_url "$REDIS_URL")
   demo       $([ "$HQ_DEMO" != 0 ] && echo "on (HQ_DEMO=0 turns it off)" || echo off)
   logs       var/log/*.log     settings: var/run.env
 Ctrl-C stops what make run started.
=====================================================================
EOF
if [ "${#FAILED[@]}" -gt 0 ]; then
    warn "NOT running: ${FAILED[*]} (see the log tails above and var/log/)"
fi

# ---------------------------------------------------------------- wait
# Supervise: a process that dies (or did not start) is started again with backoff; Ctrl-C
# stops everything. The demo workload ending by itself (exit 0) is not a death.
declare -A FINISHED=()
while :; do
    for name in "${STARTED[@]}"; do
        [ -n "${DUE[$name]:-}" ] || [ -n "${FINISHED[$name]:-}" ] && continue
        alive "$name" && continue
        if [ -n "${WATCH[$name]:-}" ]; then
            exit_code "$name"
            if [ "$name" = demo ] && [ "$EXIT_RC" = 0 ]; then
                say "demo workload finished"
                FINISHED[demo]=1
                unset 'WATCH[demo]'
                rm -f "$HQ_RUN/demo.pid"
                continue
            fi
            EXIT_SAVED="$EXIT_RC"
            report_dead "$name"
            EXIT_RC="$EXIT_SAVED"
        else
            EXIT_RC="${EXIT_RC:-?}" # it failed at start and was reported then
        fi
        schedule_restart "$name"
        EXIT_RC=""
    done
    restart_due
    sleep 1
done
