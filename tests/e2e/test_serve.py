"""`infra/serve.sh` (what `make serve` runs) stops the whole local stack on a SIGTERM to the script alone: the
worker first, then the server, then PostgreSQL where the stack runs on it (see `serve_env`), and the script exits;
within 10 s, with no process of its session left behind (every process the script started, or those started,
spawned). Both once the worker runs, and while the script still waits for the server to come up. Whatever happens,
every process of the session is killed at the end."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "infra" / "serve.sh"
STOP_SECONDS = 10.0

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")


def _wait_for(log: Path, pattern: str, server: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not re.search(pattern, log.read_text(errors="replace")):
        if server.poll() is not None:
            pytest.fail(f"infra/serve.sh exited with {server.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {pattern!r} from infra/serve.sh within {seconds:.0f} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def _session(sid: int) -> dict[int, str]:
    """The live (not zombie) processes of session `sid`: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        # the fields after "(comm)": state, ppid, pgrp, session, ...
        state, _ppid, _pgrp, session = stat[stat.rindex(")") + 2 :].split()[:4]
        if int(session) == sid and state not in ("Z", "X"):
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def _kill_session(sid: int) -> None:
    """SIGKILL to every process group in session `sid` (the script puts each service in a group of its own)."""
    for _ in range(3):
        pids = _session(sid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["worker running", "waiting for the server"])
def test_sigterm_stops_worker_then_server_and_the_script_within_10_s(
    stage: str, tmp_path: Path, serve_env: dict[str, str]
) -> None:
    env = serve_env
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        script = subprocess.Popen(
            [str(SERVE)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    sid = script.pid  # start_new_session: the script leads a session of its own
    try:
        if stage == "worker running":
            _wait_for(log, r"Prefect UI:", script, 300)
            _wait_for(log, r"Prefect UI:(.|\n)*Worker '[^']*' started!", script, 120)
        else:
            _wait_for(log, r"waiting for the Prefect server", script, 60)
        before = _session(sid)
        servers = {pid for pid, cmd in before.items() if "server start" in cmd}
        workers = {pid for pid, cmd in before.items() if "worker start" in cmd}
        # the postmaster (and, as root, the runuser above it); its children leave the session (setsid)
        databases = {pid for pid, cmd in before.items() if re.search(r"/postgres -D ", cmd)}
        assert servers, before
        assert bool(workers) == (stage == "worker running"), before
        assert bool(databases) == (env["PREFECT_DB"] == "postgres"), before

        signalled = time.monotonic()
        os.kill(script.pid, signal.SIGTERM)
        gone: dict[int, float] = {}  # pid -> seconds after the signal when it was seen gone
        left = before
        while time.monotonic() - signalled < STOP_SECONDS:
            left = _session(sid)
            now = time.monotonic() - signalled
            gone.update({pid: now for pid in before if pid not in left and pid not in gone})
            if not left and script.poll() is not None:
                break
            time.sleep(0.02)
        tail = log.read_text(errors="replace")[-3000:]
        assert script.poll() is not None, f"infra/serve.sh still runs {STOP_SECONDS:.0f} s after SIGTERM:\n{tail}"
        assert not left, f"still alive {STOP_SECONDS:.0f} s after SIGTERM: {left}\n{tail}"
        if workers:  # the worker goes first (it still needs the server to stop cleanly), then the server
            assert max(gone[pid] for pid in workers) <= min(gone[pid] for pid in servers), (gone, before, tail)
        if databases:  # and the database last
            assert max(gone[pid] for pid in servers) <= min(gone[pid] for pid in databases), (gone, before, tail)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(script.pid, signal.SIGKILL)
        _kill_session(sid)
        script.wait(timeout=30)
