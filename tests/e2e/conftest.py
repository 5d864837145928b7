"""A temporary Prefect server (SQLite) for the flow tests, started once per session, and the
environment that `infra/serve.sh` runs its own stack with: on PostgreSQL where `infra/postgres.sh
check` finds it usable, else on SQLite with a warning that says why. GALAXY_TEST_DB=sqlite or
=postgres picks one (postgres then fails where it cannot run, instead of falling back)."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    """Dask's nanny writes OMP_NUM_THREADS=1 (and friends) into os.environ of the process that starts a
    LocalCluster; keep that from leaking into later tests' subprocesses."""
    import os

    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


REPO = Path(__file__).resolve().parents[2]
PREFECT = Path(sys.executable).with_name("prefect")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@functools.cache
def serve_database() -> tuple[str, str]:
    """The database `serve_env` gives the server, ``"postgres"`` or ``"sqlite"``, and why."""
    choice = os.environ.get("GALAXY_TEST_DB", "auto")
    if choice not in ("auto", "postgres", "sqlite"):
        raise ValueError(f"GALAXY_TEST_DB={choice!r}: expected auto, postgres or sqlite")
    if choice == "sqlite":
        return "sqlite", "GALAXY_TEST_DB=sqlite"
    check = subprocess.run(
        [str(REPO / "infra" / "postgres.sh"), "check"], capture_output=True, text=True, timeout=60, check=False
    )
    if check.returncode == 0:
        return "postgres", check.stdout.strip()
    if choice == "postgres":
        pytest.fail(f"GALAXY_TEST_DB=postgres, but infra/postgres.sh cannot run it: {check.stderr.strip()}")
    return "sqlite", check.stderr.strip()


def pytest_report_header() -> str:
    """Which database the `infra/serve.sh` tests give the server, at the top of the run's output."""
    database, why = serve_database()
    return f"infra/serve.sh tests: Prefect server on {database} ({why})"


@pytest.fixture
def serve_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment for `infra/serve.sh`: a free port, a fresh PREFECT_HOME, this checkout, and
    PREFECT_DB=postgres with a fresh cluster directory where `serve_database()` says so."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_PORT": str(port),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT": str(PREFECT),
        "GALAXY_PIPELINE_HOME": str(REPO),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    database, why = serve_database()
    if database == "sqlite":
        warnings.warn(f"infra/serve.sh runs this test on SQLite: {why}", stacklevel=1)
        yield {**env, "PREFECT_DB": "sqlite"}
        return
    # Not under tmp_path: as root, PostgreSQL runs as an unprivileged user, which cannot enter
    # pytest's 0700 directories; mkdtemp's lies in /tmp, and serve.sh gives it to that user.
    cluster = Path(tempfile.mkdtemp(prefix="galaxy-postgres-"))
    try:
        yield {
            **env,
            "PREFECT_DB": "postgres",
            "PREFECT_POSTGRES_DIR": str(cluster),
            "PREFECT_POSTGRES_PORT": str(free_port()),
            # a throwaway cluster: no fsync (what PostgreSQL's docs advise for such; a crash of the
            # machine is the only thing it does not survive)
            "PREFECT_POSTGRES_OPTIONS": "-c fsync=off",
        }
    finally:
        shutil.rmtree(cluster, ignore_errors=True)
