#!/usr/bin/env bash
# A local Prefect stack for this checkout: server, the cpu and gpu work pools, every deployment in
# prefect.yaml, and a process worker on one pool, in the foreground. The server keeps its state in
# SQLite ($PREFECT_HOME/prefect.db), or with PREFECT_DB=postgres in a PostgreSQL cluster of its own
# (infra/postgres.sh): created in PREFECT_POSTGRES_DIR on first use, started before the server on
# 127.0.0.1 (PREFECT_POSTGRES_PORT, or a free port), and given to the server as
# PREFECT_SERVER_DATABASE_CONNECTION_URL (postgresql+asyncpg, database prefect).
#
# Ctrl-C, SIGTERM or SIGHUP to this script, at any point (also while it still waits for the server
# or deploys), stops the stack in order and the script exits within about 10 s: the worker (or the
# setup step then running) first, then the server, then PostgreSQL (pg_ctl stop -m fast; -m
# immediate after 3 s). Each of them runs in a process group of its own, which gets SIGTERM and,
# whatever of it is left after 3 s, SIGKILL; so nothing they spawned stays behind. The script
# itself only ever waits in `wait`, so its trap runs as soon as a signal comes.
#
# The gpu pool gets a concurrency limit, GPU_POOL_LIMIT (1): one flow run at a time, so two training
# runs never share the GPUs of one host. With N GPU hosts, set it to N and start each host's worker
# with `prefect worker start --pool gpu --limit 1`.
#
#   PREFECT_PORT   server port (4200)          POOL     pool the worker serves (cpu)
#   PREFECT_HOME   Prefect's state directory   PREFECT  the prefect executable (.venv/bin/prefect)
#   PREFECT_DB     sqlite (default) or postgres
#   PREFECT_POSTGRES_DIR   the cluster's directory: $PREFECT_HOME/postgres (PREFECT_HOME: ~/.prefect);
#                  as root /var/lib/galaxy-pipeline/postgres, since PostgreSQL then runs as user
#                  postgres (or nobody), which cannot reach a directory under /root
#   PREFECT_POSTGRES_PORT  its port (a free one)   PREFECT_POSTGRES_OPTIONS  more `postgres` arguments
#   GPU_POOL_LIMIT the gpu pool's concurrency limit (1)
set -euo pipefail

port="${PREFECT_PORT:-4200}"
pool="${POOL:-cpu}"
prefect="${PREFECT:-.venv/bin/prefect}"
python="$(dirname "$prefect")/python"
export PREFECT_API_URL="http://127.0.0.1:${port}/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export GALAXY_PIPELINE_HOME="${GALAXY_PIPELINE_HOME:-$(pwd)}"
db="${PREFECT_DB:-sqlite}"
case "$db" in
    sqlite) ;;
    postgres)
        postgres="$(dirname "$0")/postgres.sh"
        pg_dir="${PREFECT_HOME:-$HOME/.prefect}/postgres"
        if [[ "$(id -u)" -eq 0 ]]; then pg_dir=/var/lib/galaxy-pipeline/postgres; fi
        pg_dir="${PREFECT_POSTGRES_DIR:-$pg_dir}"
        free_port='import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        pg_port="${PREFECT_POSTGRES_PORT:-$("$python" -c "$free_port")}"
        read -ra pg_options <<<"${PREFECT_POSTGRES_OPTIONS:-}"
        ;;
    *)
        echo "serve.sh: PREFECT_DB=${db@Q}: expected sqlite or postgres" >&2
        exit 2
        ;;
esac

grace=3   # seconds a process group gets between SIGTERM and SIGKILL
database="" server="" step="" worker=""   # process group ids (= the pids of the processes started)

# Runs "$@" in the background, stdin from /dev/null, in a process group of its own, and sets $last
# to its pid. Job control is on just for the `&`: it makes the new group, and it keeps bash from
# starting the command with SIGINT ignored (what it does to background commands without job
# control), which made the worker ignore the SIGINT its own SIGTERM handler sends it.
start() {
    set -m
    "$@" </dev/null &
    last=$!
    set +m
}

# A setup step, waited for with `wait` so that a signal to the script is handled at once.
run_step() {
    start "$@"
    step=$last
    wait "$step"
    step=""
}

# Whether any process of group $1 is still alive (zombies do not count; without ps, they do).
alive() {
    if command -v ps >/dev/null; then
        ps -A -o pgid= -o stat= | awk -v group="$1" '$1 == group && $2 !~ /^Z/ { found = 1 } END { exit !found }'
    else
        kill -0 -- "-$1" 2>/dev/null
    fi
}

# SIGTERM to group $1, then SIGKILL to what is left of it after $grace seconds.
stop_group() {
    local group="$1" i
    kill -TERM -- "-$group" 2>/dev/null || return 0
    for ((i = 0; i < grace * 10; i++)); do
        alive "$group" || return 0
        sleep 0.1
    done
    echo "serve.sh: process group $group did not stop within ${grace} s; killing it" >&2
    kill -KILL -- "-$group" 2>/dev/null || true
}

stop() {
    trap '' INT TERM HUP   # one stop at a time
    trap - EXIT
    set +m
    # The worker (or the setup step then running) first, then the server, the database last; in
    # between, anything started but not yet recorded when the signal came (`jobs -p` lists what this
    # shell started).
    local group others=()
    for group in $(jobs -p); do
        [[ " $worker $step $server $database " == *" $group "* ]] || others+=("$group")
    done
    for group in "$worker" "$step" "${others[@]}" "$server" "$database"; do
        [[ -n "$group" ]] || continue
        # PostgreSQL first gets its own fast shutdown (then an immediate one), which pg_ctl waits for.
        [[ "$group" != "$database" ]] || "$postgres" stop "$pg_dir" || true
        stop_group "$group"
        wait "$group" 2>/dev/null || true   # reap it, so that no zombie outlives the script
    done
}
trap stop EXIT
trap 'stop; exit 129' HUP
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM

if [[ "$db" == postgres ]]; then
    run_step "$postgres" init "$pg_dir"
    pg_dir="$(cd "$pg_dir" && pwd)"
    start "$postgres" run "$pg_dir" "$pg_port" "${pg_options[@]}"
    database=$last
    run_step "$postgres" ready "$pg_dir" "$pg_port" "$database"
    echo "PostgreSQL: 127.0.0.1:${pg_port}, database prefect, cluster in ${pg_dir}"
    # For the server only (the name that wins over PREFECT_API_DATABASE_CONNECTION_URL); the
    # worker and the flow runs it starts never see the password.
    PREFECT_SERVER_DATABASE_CONNECTION_URL="$("$postgres" url "$pg_dir" "$pg_port")"
    export PREFECT_SERVER_DATABASE_CONNECTION_URL
fi
start "$prefect" server start --host 127.0.0.1 --port "$port"
server=$last
if [[ "$db" == postgres ]]; then unset PREFECT_SERVER_DATABASE_CONNECTION_URL; fi
echo "waiting for the Prefect server on port ${port}..."
health_check=$(cat <<'PY'
import sys, time, urllib.request
url, deadline = sys.argv[1] + "/health", time.monotonic() + 180
while True:
    try:
        urllib.request.urlopen(url, timeout=2).read()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(f"the Prefect server did not answer at {url} within 180 s")
        time.sleep(1)
PY
)
run_step "$python" -c "$health_check" "$PREFECT_API_URL"
for name in cpu gpu; do
    run_step "$prefect" work-pool create "$name" --type process --overwrite >/dev/null
done
run_step "$prefect" work-pool set-concurrency-limit gpu "${GPU_POOL_LIMIT:-1}" >/dev/null
run_step "$prefect" --no-prompt deploy --all
echo "Prefect UI: http://127.0.0.1:${port}   worker: pool ${pool}"
start "$prefect" worker start --pool "$pool"
worker=$last
wait "$worker"
