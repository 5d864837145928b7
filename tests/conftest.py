"""Shared fixtures: an S3 server over HTTP (moto), stores on both backends, the real GZ2 data."""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from galaxy_models.storage import LocalStore, S3Config, S3Store, Store

GZ2_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "gz2"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_config() -> Iterator[S3Config]:
    """A moto S3 server on a free loopback port, reached over HTTP like MinIO would be."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Config(
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            access_key_id="testing",
            secret_access_key="testing",  # type: ignore[arg-type]
            max_attempts=2,
        )
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_config: S3Config) -> str:
    """A fresh, empty bucket on the moto server."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=s3_config.endpoint_url,
        region_name=s3_config.region_name,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The same tests, once against a local directory and once against S3 over HTTP."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    config = request.getfixturevalue("s3_config")
    return S3Store(request.getfixturevalue("s3_bucket"), "galaxy-data", config)


@pytest.fixture
def gz2_dir() -> Path:
    if not (GZ2_DIR / "labelled" / "training_solutions_rev1.csv").is_file():
        pytest.skip(f"real GZ2 data not found at {GZ2_DIR} (it lives in ../shared/gz2 beside the checkout)")
    return GZ2_DIR


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding an ingested synthetic survey as dataset ``synthetic`` (what the smoke preset
    trains on): 160 galaxies, 10 per shard, and two incoming batches of 30 unlabelled images.
    Tests copy it when they need to write."""
    from galaxy_models.data.ingest import IngestConfig, ingest
    from galaxy_models.synth.survey import SynthConfig, synthesize_survey

    root = tmp_path_factory.mktemp("synthetic-store")
    synthesize_survey(
        SynthConfig(store=str(root), n=160, seed=11, workers=2, incoming_batches=2, batch_size=30), progress=False
    )
    raw = root / "raw" / "synthetic"
    ingest(
        IngestConfig(
            images=str(raw / "images"), labels=str(raw / "labels.csv"), store=str(root), name="synthetic",
            samples_per_shard=10,
        ),
        progress=False,
    )  # fmt: skip
    return root


@pytest.fixture(scope="session")
def trained_store(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic store with a promoted one-epoch ``cs_resnet_tiny`` and the bad-image corpus
    added to incoming batch 001. Tests copy it when they need to write."""
    from badimages import CORPUS_BATCH, corpus

    from galaxy_models.inference.classify import choose_serving_precision
    from galaxy_models.inference.config import ClassifyConfig
    from galaxy_models.registry.cards import promote
    from galaxy_models.training.config import TrainConfig
    from galaxy_models.training.evaluation import evaluate_run
    from galaxy_models.training.loop import train
    from galaxy_models.training.publishing import publish_run

    root = tmp_path_factory.mktemp("classify") / "store"
    shutil.copytree(synthetic_dataset, root)
    store = LocalStore(root)
    run = train(TrainConfig(preset="smoke", store=str(root), epochs=1, workers=0), progress=False, log=lambda _: None)
    card = publish_run(store, run, evaluate_run(run, workers=0))
    promote(store, card.name, card.version, force=True)  # one epoch: the gate is not what these tests test
    # the serving precision is checked once here, as the first classification would, so that every copy
    # carries the check in its card (tests/inference/test_precision.py tests the check itself)
    choose_serving_precision(ClassifyConfig(store=str(root), model=card.name), card)
    for name, (data, _) in corpus().items():
        store.write_bytes(f"incoming/{CORPUS_BATCH}/{name}", data)
    return root


@pytest.fixture
def root(trained_store: Path, tmp_path: Path) -> Path:
    """A writable copy of ``trained_store``."""
    target = tmp_path / "store"
    shutil.copytree(trained_store, target)
    return target
