#!/usr/bin/env bash
# Postgres and Redis for make run / make test / make bench.
#
# For each of them, the first that answers wins:
#   1. $DATABASE_URL / $REDIS_URL, when set;
#   2. the standard local ones, $HQ_LOCAL_DATABASE_URL (postgres://postgres@127.0.0.1:5432/gearman_hq)
#      and $HQ_LOCAL_REDIS_URL (redis://127.0.0.1:6379/0);
#   3. private ones under ./var/ on 127.0.0.1:$HQ_PG_PRIVATE_PORT (54329) and
#      127.0.0.1:$HQ_REDIS_PRIVATE_PORT (63799), started here when not already running.
# The database (gearman_hq) is created when missing.
#
#   bash scripts/services.sh up      choose/start, write var/run.env, leave them running
#   bash scripts/services.sh down    stop everything started under var/ (make stop)
#   bash scripts/services.sh status  what answers where
# Sourced by run.sh, test.sh, bench.sh and bootstrap.sh for the functions.

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HQ_DB_NAME="${HQ_DB_NAME:-gearman_hq}"
HQ_LOCAL_DATABASE_URL="${HQ_LOCAL_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/$HQ_DB_NAME}"
HQ_LOCAL_REDIS_URL="${HQ_LOCAL_REDIS_URL:-redis://127.0.0.1:6379/0}"
HQ_PG_PRIVATE_PORT="${HQ_PG_PRIVATE_PORT:-54329}"
HQ_REDIS_PRIVATE_PORT="${HQ_REDIS_PRIVATE_PORT:-63799}"

HQ_STARTED_PG=0
HQ_STARTED_REDIS=0

private_pg_url() { printf 'postgres://postgres@127.0.0.1:%s/%s' "$HQ_PG_PRIVATE_PORT" "$HQ_DB_NAME"; }
private_redis_url() { printf 'redis://127.0.0.1:%s/0' "$HQ_REDIS_PRIVATE_PORT"; }

# Newest /usr/lib/postgresql/N/bin holding initdb (or $HQ_PG_BINDIR); empty when none.
pg_bindir() {
    if [ -n "${HQ_PG_BINDIR:-}" ]; then
        printf '%s' "$HQ_PG_BINDIR"
        return
    fi
    local d best=""
    for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V); do
        [ -x "$d/initdb" ] && best="$d"
    done
    printf '%s' "$best"
}

# ---------------------------------------------------------------- probes
pg_answers() {
    if have pg_isready; then
        pg_isready -q -t 3 -d "$1" >/dev/null 2>&1
    else
        parse_url "$1" && tcp_open "$U_HOST" "${U_PORT:-5432}"
    fi
}

redis_answers() {
    if have redis-cli; then
        [ "$(timeout 3 redis-cli -u "$1" ping 2>/dev/null)" = PONG ]
    else
        parse_url "$1" && tcp_open "$U_HOST" "${U_PORT:-6379}"
    fi
}

# Create the URL's database when missing; warn when pg_trgm is not available.
pg_ensure_db() {
    local url="$1" db
    if ! psql -X -d "$url" -tAc 'select 1' >/dev/null 2>&1; then
        parse_url "$url" || {
            warn "cannot parse $(mask_url "$url")"
            return 1
        }
        db="${U_PATH:-$HQ_DB_NAME}"
        say "creating database $db on $U_HOST:${U_PORT:-5432}"
        PGPASSWORD="$U_PASS" createdb -h "$U_HOST" -p "${U_PORT:-5432}" \
            -U "${U_USER:-postgres}" "$db" || return 1
    fi
    if [ "$(psql -X -d "$url" -tAc "select count(*) from pg_available_extensions where name = 'pg_trgm'" 2>/dev/null)" != 1 ]; then
        warn "extension pg_trgm is not available on $(mask_url "$url") (Debian: apt-get install postgresql-contrib)"
    fi
}

# ---------------------------------------------------------------- private postgres
# Run a command as the postgres user when we are root (initdb refuses root).
pg_as() {
    if is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# The private cluster's directory. As root it must be reachable by the postgres user: when
# a parent of the repo is not (e.g. a clone under /root), var/pg is a symlink to /var/tmp.
pg_private_home() {
    local home="$HQ_VAR/pg"
    if [ -L "$home" ]; then
        readlink -f "$home"
    else
        printf '%s' "$home"
    fi
}

pg_prepare_home() {
    local home alt
    mkdir -p "$HQ_VAR" "$HQ_LOG"
    [ -e "$HQ_VAR/pg" ] || mkdir -p "$HQ_VAR/pg"
    is_root || return 0
    if ! getent passwd postgres >/dev/null; then
        say "creating system user postgres"
        useradd --system --no-create-home --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
    home="$(pg_private_home)"
    chown postgres: "$home"
    chmod 700 "$home"
    if ! (cd / && runuser -u postgres -- test -w "$home" -a -x "$home"); then
        alt="/var/tmp/gearman-hq-$(printf '%s' "$HQ_ROOT" | md5sum | cut -c1-10)/pg"
        note "user postgres cannot reach $home (a parent directory is private); using $alt"
        mkdir -p "$alt"
        chmod 755 "$(dirname "$alt")"
        chown postgres: "$alt"
        chmod 700 "$alt"
        rmdir "$home" 2>/dev/null || die "$home is not empty; remove it (make clean)"
        ln -s "$alt" "$HQ_VAR/pg"
    fi
}

pg_private_start() {
    local bindir home data port="$HQ_PG_PRIVATE_PORT"
    bindir="$(pg_bindir)"
    [ -n "$bindir" ] || die "no Postgres server binaries (/usr/lib/postgresql/*/bin/initdb): run make deps as root, or apt-get install postgresql postgresql-contrib"
    pg_prepare_home
    home="$(pg_private_home)"
    data="$home/data"
    if [ ! -s "$data/PG_VERSION" ]; then
        say "initdb: private Postgres cluster in $home/data ($bindir)"
        if ! pg_as "$bindir/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 \
            --locale=C.UTF-8 >"$home/initdb.log" 2>&1; then
            log_tail "$home/initdb.log"
            die "initdb failed"
        fi
        pg_as tee -a "$data/postgresql.conf" >/dev/null <<EOF

# ---- gearman-hq private cluster (scripts/services.sh) ----
# A throwaway development/test database: speed over crash safety.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = ''
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    fi
    say "starting postgres on 127.0.0.1:$port (data in $data, log $home/postgres.log)"
    ln -sfn "$home/postgres.log" "$HQ_LOG/postgres.log"
    if ! pg_as "$bindir/pg_ctl" -D "$data" -l "$home/postgres.log" -o "-p $port" -w -t 60 \
        start >/dev/null; then
        log_tail "$home/postgres.log"
        die "private Postgres did not start on port $port"
    fi
}

pg_private_stop() {
    local bindir home data
    home="$(pg_private_home)"
    data="$home/data"
    [ -f "$data/postmaster.pid" ] || return 0
    bindir="$(pg_bindir)"
    say "stopping private postgres on 127.0.0.1:$HQ_PG_PRIVATE_PORT"
    pg_as "$bindir/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null ||
        warn "pg_ctl stop failed (see $home/postgres.log)"
}

# ---------------------------------------------------------------- private redis
redis_private_start() {
    local dir="$HQ_VAR/redis" port="$HQ_REDIS_PRIVATE_PORT" _
    have redis-server || die "redis-server not installed: run make deps as root, or apt-get install redis-server"
    mkdir -p "$dir" "$HQ_LOG"
    say "starting redis on 127.0.0.1:$port (dir $dir, log $HQ_LOG/redis.log)"
    redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --daemonize yes \
        --pidfile "$dir/redis.pid" --logfile "$HQ_LOG/redis.log" \
        --save '' --appendonly no >/dev/null
    for _ in $(seq 1 50); do
        redis_answers "$(private_redis_url)" && return 0
        sleep 0.2
    done
    log_tail "$HQ_LOG/redis.log"
    die "private Redis did not start on port $port"
}

redis_private_stop() {
    local pidfile="$HQ_VAR/redis/redis.pid" pid _
    [ -f "$pidfile" ] || return 0
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    if [[ $pid =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q redis-server; then
        say "stopping private redis (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            proc_running "$pid" || break
            sleep 0.2
        done
    fi
    rm -f "$pidfile"
}

# ---------------------------------------------------------------- choose
choose_postgres() {
    local url
    if [ -n "${DATABASE_URL:-}" ]; then
        if pg_answers "$DATABASE_URL"; then
            pg_ensure_db "$DATABASE_URL" || die "DATABASE_URL=$(mask_url "$DATABASE_URL") answers but its database cannot be created"
            say "postgres: using DATABASE_URL=$(mask_url "$DATABASE_URL")"
            return 0
        fi
        warn "DATABASE_URL=$(mask_url "$DATABASE_URL") does not answer; looking for another Postgres"
    fi
    url="$HQ_LOCAL_DATABASE_URL"
    if pg_answers "$url"; then
        if pg_ensure_db "$url"; then
            DATABASE_URL="$url"
            say "postgres: using the local one, DATABASE_URL=$(mask_url "$url")"
            return 0
        fi
        warn "local Postgres $(mask_url "$url") answers but is not usable; using a private one"
    fi
    url="$(private_pg_url)"
    if ! pg_answers "$url"; then
        pg_private_start
        HQ_STARTED_PG=1
    fi
    pg_ensure_db "$url" || die "cannot create database $HQ_DB_NAME in the private Postgres"
    DATABASE_URL="$url"
    say "postgres: using the private one, DATABASE_URL=$url"
}

choose_redis() {
    local url
    if [ -n "${REDIS_URL:-}" ]; then
        if redis_answers "$REDIS_URL"; then
            say "redis: using REDIS_URL=$(mask_url "$REDIS_URL")"
            return 0
        fi
        warn "REDIS_URL=$(mask_url "$REDIS_URL") does not answer; looking for another Redis"
    fi
    url="$HQ_LOCAL_REDIS_URL"
    if redis_answers "$url"; then
        REDIS_URL="$url"
        say "redis: using the local one, REDIS_URL=$url"
        return 0
    fi
    url="$(private_redis_url)"
    if ! redis_answers "$url"; then
        redis_private_start
        HQ_STARTED_REDIS=1
    fi
    REDIS_URL="$url"
    say "redis: using the private one, REDIS_URL=$url"
}

# Choose (and start when needed) Postgres and Redis; export DATABASE_URL and REDIS_URL.
services_up() {
    mkdir -p "$HQ_LOG" "$HQ_RUN"
    choose_postgres
    choose_redis
    export DATABASE_URL REDIS_URL
}

# Stop what services_up started in this shell (not a pre-existing Postgres or Redis).
services_stop_started() {
    if [ "$HQ_STARTED_REDIS" = 1 ]; then
        redis_private_stop
        HQ_STARTED_REDIS=0
    fi
    if [ "$HQ_STARTED_PG" = 1 ]; then
        pg_private_stop
        HQ_STARTED_PG=0
    fi
}

# var/run.env: KEY=value lines (dotenv style, no quoting).
write_run_env() {
    mkdir -p "$HQ_VAR"
    : >"$HQ_VAR/run.env"
    chmod 600 "$HQ_VAR/run.env"
    local kv
    for kv in "$@"; do
        printf '%s\n' "$kv" >>"$HQ_VAR/run.env"
    done
}

# ---------------------------------------------------------------- processes of make run
# Processes started by run.sh have var/run/NAME.pid holding their process group id.
# Stop one when its command line still mentions this checkout (the pid was not reused).
stop_pidfile() {
    local pidfile="$1" name pid _
    name="$(basename "$pidfile" .pid)"
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    rm -f "$pidfile"
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    [ -r "/proc/$pid/cmdline" ] || return 0
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$HQ_ROOT" || return 0
    say "stopping $name (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        proc_running "$pid" || return 0
        sleep 0.2
    done
    warn "$name (pid $pid) still running after 10 s: SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}

services_down() {
    local f
    # Reverse start order: demo, tap, web, worker, then gearmand.
    for f in demo tap web worker gearmand; do
        [ -f "$HQ_RUN/$f.pid" ] && stop_pidfile "$HQ_RUN/$f.pid"
    done
    for f in "$HQ_RUN"/*.pid; do
        [ -f "$f" ] && stop_pidfile "$f"
    done
    redis_private_stop
    pg_private_stop
    return 0
}

services_status() {
    local url
    for url in "${DATABASE_URL:-}" "$HQ_LOCAL_DATABASE_URL" "$(private_pg_url)"; do
        [ -n "$url" ] || continue
        if pg_answers "$url"; then note "postgres  up    $(mask_url "$url")"; else note "postgres  down  $(mask_url "$url")"; fi
    done
    for url in "${REDIS_URL:-}" "$HQ_LOCAL_REDIS_URL" "$(private_redis_url)"; do
        [ -n "$url" ] || continue
        if redis_answers "$url"; then note "redis     up    $(mask_url "$url")"; else note "redis     down  $(mask_url "$url")"; fi
    done
    [ -f "$HQ_VAR/run.env" ] && note "var/run.env:" && sed -E 's/^(HQ_ADMIN_PASSWORD|HQ_API_TOKEN)=.*/\1=***/; s/^/      /' "$HQ_VAR/run.env"
    return 0
}

services_main() {
    set -euo pipefail
    case "${1:-}" in
    up)
        umask 077 # var/: this user's only (database files, logs, run.env)
        services_up
        write_run_env "DATABASE_URL=$DATABASE_URL" "REDIS_URL=$REDIS_URL"
        say "wrote var/run.env; these stay running until: make stop"
        ;;
    down) services_down ;;
    status) services_status ;;
    *) die "usage: $0 up|down|status" ;;
    esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    services_main "$@"
fi
