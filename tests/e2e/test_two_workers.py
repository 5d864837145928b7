"""Several hosts, one store: two process workers (separate processes, separate working directories)
serve one work pool against one S3 store (moto over HTTP); classify-flow runs for many batches, each
batch named by two runs, are submitted at once. Every batch ends with exactly one catalog, one row
per image, and both workers took runs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from galaxy_models.catalogs.incoming import batch_images
from galaxy_models.catalogs.manifest import read_catalog, read_catalog_manifest
from galaxy_models.registry.cards import read_card
from galaxy_models.storage import S3Config, S3Store

REPO = Path(__file__).resolve().parents[2]
PREFECT = Path(sys.executable).with_name("prefect")
BATCHES = 3  # each named by two runs: 6 flow runs
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _upload(local: Path, store: S3Store, prefixes: tuple[str, ...]) -> None:
    for prefix in prefixes:
        for path in sorted((local / prefix).rglob("*")):
            if path.is_file():
                store.write_bytes(path.relative_to(local).as_posix(), path.read_bytes())


def _batches(trained_store: Path, store: S3Store) -> list[str]:
    """The model and BATCHES small batches (5 synthetic images each, from the fixture's batch 002)."""
    _upload(trained_store, store, ("models",))
    images = sorted((trained_store / "incoming" / "synthetic-batch-002").glob("*.jpg"))
    names = [f"night-{i:02d}" for i in range(BATCHES)]
    for i, batch in enumerate(names):
        for image in images[5 * i : 5 * i + 5]:
            store.write_bytes(f"incoming/{batch}/{image.name}", image.read_bytes())
    return names


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.usefixtures("prefect_server")
def test_two_workers_on_one_pool_classify_every_batch_exactly_once(
    trained_store: Path, s3_config: S3Config, s3_bucket: str, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    store = S3Store(s3_bucket, "survey", s3_config)
    batches = _batches(trained_store, store)
    env = {
        **os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "GALAXY_PIPELINE_HOME": str(REPO),
        "AWS_ENDPOINT_URL": str(s3_config.endpoint_url), "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "OMP_NUM_THREADS": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # a worker asks for runs every second, not every 10 s
    }  # fmt: skip
    subprocess.run([str(PREFECT), "work-pool", "create", "hosts", "--type", "process", "--overwrite"],
                   env=env, check=True, capture_output=True)  # fmt: skip
    subprocess.run([str(PREFECT), "--no-prompt", "deploy", "flows/classify.py:classify_flow", "--name", "hosts",
                    "--pool", "hosts"], cwd=REPO, env=env, check=True, capture_output=True)  # fmt: skip
    workers, logs = [], []
    for host in ("host-a", "host-b"):
        home = tmp_path / host
        home.mkdir()
        logs.append(home / "worker.log")
        workers.append(
            subprocess.Popen(
                [str(PREFECT), "worker", "start", "--pool", "hosts", "--limit", "2", "--name", host],
                cwd=home, env=env, stdout=logs[-1].open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
            )
        )  # fmt: skip

    async def run_all() -> dict[str, str]:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("classify-flow/hosts")
            ids = []
            for batch in batches * 2:
                config = {"store": store.uri, "model": "cs_resnet_tiny", "batches": [batch], "engine": "torch"}
                run = await client.create_flow_run_from_deployment(deployment.id, parameters={"config": config})
                ids.append(run.id)
            deadline = time.monotonic() + 400
            while True:
                runs = [await client.read_flow_run(i) for i in ids]
                states = {str(r.id): r.state.type.value if r.state else "NONE" for r in runs}
                if set(states.values()) <= FINAL or time.monotonic() > deadline:
                    return states
                await asyncio.sleep(2)

    try:
        states = asyncio.run(run_all())
    finally:
        for worker in workers:
            _stop(worker)
    assert set(states.values()) == {"COMPLETED"}, states
    version = read_card(store, "cs_resnet_tiny").version
    for batch in batches:
        manifest = read_catalog_manifest(store, batch, version)
        assert manifest is not None, batch
        assert [k for k in store.list(f"catalogs/{batch}/") if k.endswith("_manifest.json")] == [
            f"catalogs/{batch}/{version}/_manifest.json"
        ]
        keys = read_catalog(store, manifest).column("source_key").to_pylist()
        assert sorted(keys) == batch_images(store, batch)  # one row per image, none twice
    # both hosts worked (a worker may also try a run the other has just claimed: the server lets one have it)
    taken = [log.read_text(errors="replace").count("submitting flow run") for log in logs]
    assert all(n > 0 for n in taken), taken
    assert sum(taken) >= 2 * BATCHES
