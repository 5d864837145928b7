"""The user path against real parts: `infra/serve.sh` (what `make serve` runs) starts `prefect
server start` on a free port with a temporary PREFECT_HOME, creates the pools, runs `prefect deploy
--all` and a process worker; then `prefect deployment run train-flow/smoke --watch` trains on a
store holding ingested synthetic shards, and `classify-flow/nightly` (whose schedule is checked)
classifies only the batch that has no catalog yet. The server runs on PostgreSQL where it is
available (see `serve_env`), else on SQLite, and the test reads the finished run from that database
itself. Every process is stopped whatever happens."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from galaxy_models.catalogs.manifest import read_catalog_manifest
from galaxy_models.domain import CLASS_NAMES
from galaxy_models.inference.classify import classify_batch
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.registry.cards import promote
from galaxy_models.storage import LocalStore

REPO = Path(__file__).resolve().parents[2]
PREFECT = Path(sys.executable).with_name("prefect")


def _wait_for(log: Path, text: str, server: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while text not in log.read_text(errors="replace"):
        if server.poll() is not None:
            pytest.fail(f"infra/serve.sh exited with {server.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {text!r} from infra/serve.sh within {seconds:.0f} s:\n{log.read_text()[-4000:]}")
        time.sleep(1)


def _recorded_state(env: dict[str, str], flow_run_id: str) -> str | None:
    """The state type of flow run `flow_run_id` in the database that `infra/serve.sh` was given, read
    from that database directly (not through the server): PostgreSQL's or SQLite's table flow_run."""
    home = Path(env["PREFECT_HOME"])
    if env["PREFECT_DB"] == "sqlite":
        with contextlib.closing(sqlite3.connect(f"file:{home / 'prefect.db'}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT state_type FROM flow_run WHERE id = ?", (flow_run_id,)).fetchone()
        return None if row is None else str(row[0])
    assert not (home / "prefect.db").exists(), "PREFECT_DB=postgres, yet the server made a SQLite database"
    import asyncpg

    async def fetch() -> str | None:
        connection = await asyncpg.connect(
            host="127.0.0.1",
            port=int(env["PREFECT_POSTGRES_PORT"]),
            user="prefect",
            password=(Path(env["PREFECT_POSTGRES_DIR"]) / "password").read_text(),
            database="prefect",
        )
        try:
            state = await connection.fetchval("SELECT state_type FROM flow_run WHERE id = $1", uuid.UUID(flow_run_id))
        finally:
            await connection.close()
        return None if state is None else str(state)

    return asyncio.run(fetch())


def test_smoke_deployment_runs_on_a_real_server_and_worker(
    synthetic_dataset: Path, tmp_path: Path, serve_env: dict[str, str]
) -> None:
    store = tmp_path / "store"
    shutil.copytree(synthetic_dataset, store)
    env = {**serve_env, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            ["infra/serve.sh"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_for(log, "Prefect UI:", server, 300)
        listed = subprocess.run(
            [str(PREFECT), "deployment", "ls"], env=env, capture_output=True, text=True, timeout=120, check=True
        ).stdout
        for name in (
            "train-flow/cs-resnet50", "train-flow/resnet50", "train-flow/smoke", "ingest-flow/synthetic",
            "classify-flow/nightly", "export-flow/catalog", "classify-flow/demo", "export-flow/demo",
        ):  # fmt: skip
            assert name in listed, listed
        nightly = subprocess.run(
            [str(PREFECT), "deployment", "inspect", "classify-flow/nightly"],
            env=env, capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        assert "0 2 * * *" in nightly, nightly
        assert "UTC" in nightly, nightly
        config = {"preset": "smoke", "store": str(store), "workers": 0}
        run = subprocess.run(
            [str(PREFECT), "deployment", "run", "train-flow/smoke", "--param", f"config={json.dumps(config)}",
             "--watch", "--watch-timeout", "600"],
            env=env, capture_output=True, text=True, timeout=660,
        )  # fmt: skip
        assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n--- serve.log ---\n{log.read_text()[-6000:]}"
        assert "Completed" in run.stdout, run.stdout
        flow_run = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout)
        assert flow_run, run.stdout
        assert _recorded_state(env, flow_run[1]) == "COMPLETED", env["PREFECT_DB"]
        cards = list((store / "models" / "cs_resnet_tiny").glob("*/card.json"))
        assert len(cards) == 1, sorted(p.as_posix() for p in store.rglob("*"))
        card = json.loads(cards[0].read_text())
        assert set(card["metrics"]) == {"val", "test"}
        assert 0.0 <= card["metrics"]["test"]["accuracy"] <= 1.0
        assert card["config"]["store"] == str(store)
        figures = sorted(card["figures"])
        explained = [f for f in figures if f.startswith("explain_")]  # one panel per class the val split holds
        assert [f for f in figures if f not in explained] == [
            "confusion_test.png",
            "confusion_val.png",
            "reliability.png",
            "training_curves.png",
        ]
        assert explained
        assert set(explained) <= {f"explain_{label}.png" for label in CLASS_NAMES}

        # The nightly classification, started from its deployment, classifies only the new batch.
        promote(LocalStore(store), "cs_resnet_tiny", card["version"], force=True)
        old, _ = classify_batch(
            ClassifyConfig(store=str(store), model="cs_resnet_tiny"), "synthetic-batch-001", progress=False
        )
        classify = {"store": str(store), "model": "cs_resnet_tiny", "workers": 2}
        run = subprocess.run(
            [str(PREFECT), "deployment", "run", "classify-flow/nightly", "--param", f"config={json.dumps(classify)}",
             "--watch", "--watch-timeout", "600"],
            env=env, capture_output=True, text=True, timeout=660,
        )  # fmt: skip
        assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n--- serve.log ---\n{log.read_text()[-6000:]}"
        assert read_catalog_manifest(LocalStore(store), "synthetic-batch-001", card["version"]) == old
        new = read_catalog_manifest(LocalStore(store), "synthetic-batch-002", card["version"])
        assert new is not None
        assert new.rows == 30
        assert new.created_at > old.created_at
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        # anything the script started in its session (server, worker, flow runs) goes too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
