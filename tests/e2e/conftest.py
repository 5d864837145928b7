"""A temporary Prefect server (SQLite) for the flow tests, started once per session."""

from __future__ import annotations

from collections.abc import Iterator

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
