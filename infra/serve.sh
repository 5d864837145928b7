#!/usr/bin/env bash
# A local Prefect stack for this checkout: server (SQLite), the cpu and gpu work pools, every
# deployment in prefect.yaml, and a process worker on one pool, in the foreground. Ctrl-C (or a
# SIGTERM to this script) stops the worker and the server.
#
#   PREFECT_PORT   server port (4200)          POOL     pool the worker serves (cpu)
#   PREFECT_HOME   Prefect's state directory   PREFECT  the prefect executable (.venv/bin/prefect)
set -euo pipefail

port="${PREFECT_PORT:-4200}"
pool="${POOL:-cpu}"
prefect="${PREFECT:-.venv/bin/prefect}"
python="$(dirname "$prefect")/python"
export PREFECT_API_URL="http://127.0.0.1:${port}/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export GALAXY_PIPELINE_HOME="${GALAXY_PIPELINE_HOME:-$(pwd)}"

pids=()
stop() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop EXIT INT TERM

"$prefect" server start --host 127.0.0.1 --port "$port" &
pids+=("$!")
echo "waiting for the Prefect server on port ${port}..."
"$python" - "$PREFECT_API_URL" <<'PY'
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
for name in cpu gpu; do
    "$prefect" work-pool create "$name" --type process --overwrite >/dev/null
done
"$prefect" --no-prompt deploy --all
echo "Prefect UI: http://127.0.0.1:${port}   worker: pool ${pool}"
"$prefect" worker start --pool "$pool" &
pids+=("$!")
wait "${pids[-1]}"
