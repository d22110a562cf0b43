# shellcheck shell=bash
# shellcheck disable=SC2034,SC2016  # variables are used by the sourcing scripts; bash -c bodies use their own $1 $2
# Helpers shared by the scripts under scripts/. Source this file; do not run it.

HQ_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HQ_VAR="$HQ_ROOT/var"
HQ_LOG="$HQ_VAR/log"
HQ_RUN="$HQ_VAR/run"
HQ_VENV="$HQ_ROOT/.venv"
HQ_PY="$HQ_VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf '!!! %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

is_root() { [ "$(id -u)" -eq 0 ]; }
have() { command -v "$1" >/dev/null 2>&1; }

# The process may open raw sockets (root normally has it; a container may not).
has_cap_net_raw() {
    local hex
    hex="$(awk '/^CapEff:/ {print $2}' /proc/self/status 2>/dev/null)"
    [ -n "$hex" ] && (((16#$hex >> 13) & 1))
}

# proc_running PID: the process exists and is not a zombie (an orphan whose exit status
# nobody collected stays a zombie where pid 1 does not reap).
proc_running() {
    [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# tcp_open HOST PORT: something accepts TCP connections there.
tcp_open() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" >/dev/null 2>&1
}

# gear_answers HOST PORT: a Gearman job server answers the admin command "version".
gear_answers() {
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "version\n" >&3
        IFS= read -r -t 2 line <&3 || exit 1
        [[ $line == OK* ]]' _ "$1" "$2" >/dev/null 2>&1
}

# split_hostport "host:port" DEFAULT_PORT -> sets HP_HOST, HP_PORT
split_hostport() {
    local value="$1" default_port="${2:-}"
    if [[ $value == *:* ]]; then
        HP_HOST="${value%:*}"
        HP_PORT="${value##*:}"
    else
        HP_HOST="$value"
        HP_PORT="$default_port"
    fi
    [ -n "$HP_HOST" ] || HP_HOST=127.0.0.1
    [[ $HP_PORT =~ ^[0-9]+$ ]] || die "bad host:port '$value'"
}

# parse_url URL -> sets U_SCHEME U_USER U_PASS U_HOST U_PORT U_PATH (U_PATH without '/')
parse_url() {
    local re='^([a-zA-Z][a-zA-Z0-9+.-]*)://(([^:@/]*)(:([^@/]*))?@)?([^:/?]*)(:([0-9]+))?(/([^?]*))?(\?.*)?$'
    [[ $1 =~ $re ]] || return 1
    U_SCHEME="${BASH_REMATCH[1]}"
    U_USER="${BASH_REMATCH[3]}"
    U_PASS="${BASH_REMATCH[5]}"
    U_HOST="${BASH_REMATCH[6]:-127.0.0.1}"
    U_PORT="${BASH_REMATCH[8]}"
    U_PATH="${BASH_REMATCH[10]}"
}

# URL with the password replaced by ***, for printing.
mask_url() { printf '%s' "$1" | sed -E 's#(://[^:@/]*):[^@/]*@#\1:***@#'; }

# The loopback addresses, where capture uses interface lo.
is_loopback() { [[ $1 == 127.* || $1 == localhost || $1 == ::1 ]]; }

# Print the last lines of a log file, indented, to stderr.
log_tail() {
    local file="$1" lines="${2:-25}"
    if [ -s "$file" ]; then
        printf '    --- last %s lines of %s ---\n' "$lines" "$file" >&2
        tail -n "$lines" "$file" | sed 's/^/    | /' >&2
    else
        printf '    (log %s is empty)\n' "$file" >&2
    fi
}
