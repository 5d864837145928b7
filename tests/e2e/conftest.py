"""A temporary Prefect server (SQLite) for the flow tests, started once per session, and the
environment that `infra/serve.sh` runs its own stack with."""

from __future__ import annotations

import os
import socket
import sys
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


@pytest.fixture
def serve_env(tmp_path: Path) -> dict[str, str]:
    """The environment for `infra/serve.sh`: a free port, a fresh PREFECT_HOME, this checkout."""
    port = free_port()
    return {
        **os.environ,
        "PREFECT_PORT": str(port),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT": str(PREFECT),
        "GALAXY_PIPELINE_HOME": str(REPO),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
