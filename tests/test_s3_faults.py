"""S3 under faults, through a proxy in front of moto (``faultproxy``): throttling, a denied key, and
conditional writes whose answers go missing.

* With one request in six answered ``503 SlowDown`` (unforwarded), ingest, training, classify and
  export over S3 give what a fault-free run gives: the same shards, weights, catalog rows and export.
* A ``403 AccessDenied`` on one image is one quarantine entry (ingest) or one ``unreadable`` catalog row
  (classify) naming the key and saying access was denied; the image is asked for once, not retried.
* Conditional writes: with the proxy serialising conditional PUTs per key, of eight racing
  ``create_if_absent`` / ``replace_if`` calls exactly one wins and the object is its bytes; a write
  whose answer was lost (a 503 or a closed connection after it landed) is still reported as this
  call's write when botocore's retry meets ``412``, and a genuine conflict is still refused.

Left to a real S3 or MinIO: whether the server's own conditional check is atomic under real
concurrency. moto checks and then writes without a lock, so the proxy serialises conditional PUTs
per key; these tests prove the client's decisions given an atomic server, not the server.
"""

from __future__ import annotations

import http.client
import io
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from faultproxy import FaultProxy
from pydantic import SecretStr

from galaxy_models.catalogs.export import ExportConfig, export_catalogs
from galaxy_models.catalogs.manifest import read_catalog
from galaxy_models.data.ingest import IngestConfig, ingest
from galaxy_models.inference.classify import classify_pending
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.labels import ID_COLUMN, NO_CLASS, assign_classes, read_votes
from galaxy_models.models.serialization import load_checkpoint
from galaxy_models.registry.cards import promote
from galaxy_models.storage import AccessDeniedError, S3Config, S3Store
from galaxy_models.synth.survey import SynthConfig, synthesize_survey
from galaxy_models.training.config import TrainConfig
from galaxy_models.training.evaluation import evaluate_run
from galaxy_models.training.loop import train
from galaxy_models.training.publishing import publish_run

SURVEY = "raw/synthetic"
BATCH = "synthetic-batch-001"
SLOWDOWN_EVERY = 6


@pytest.fixture(scope="module")
def proxy(s3_config: S3Config) -> Iterator[FaultProxy]:
    with FaultProxy(str(s3_config.endpoint_url)) as running:
        yield running


@pytest.fixture
def faults(proxy: FaultProxy) -> Iterator[FaultProxy]:
    """The proxy with no rules and no counts; the test sets the faults it wants."""
    proxy.reset()
    yield proxy
    proxy.reset()


def through(endpoint: str, max_attempts: int = 2) -> S3Config:
    return S3Config(
        endpoint_url=endpoint, region_name="us-east-1", access_key_id="testing",
        secret_access_key=SecretStr("testing"), max_attempts=max_attempts,
    )  # fmt: skip


def new_bucket(s3_config: S3Config) -> str:
    name = f"faults-{uuid.uuid4().hex[:12]}"
    S3Store(name, "", s3_config).client.create_bucket(Bucket=name)
    return name


def use_endpoint(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Steps that open stores from URIs find S3 through the environment, as in production."""
    for name, value in (
        ("AWS_ENDPOINT_URL", endpoint), ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1"),
    ):  # fmt: skip
        monkeypatch.setenv(name, value)


def upload(local: Path, store: S3Store, prefix: str) -> None:
    """Copy every file under ``local`` to ``prefix/`` in ``store``."""
    files = {f"{prefix}/{p.relative_to(local).as_posix()}": p for p in local.rglob("*") if p.is_file()}
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda key: store.write_bytes(key, files[key].read_bytes()), sorted(files)))


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic survey on disk: 60 labelled galaxies and one incoming batch of 12."""
    root = tmp_path_factory.mktemp("faults-survey")
    synthesize_survey(
        SynthConfig(store=str(root), n=60, seed=23, workers=2, incoming_batches=1, batch_size=12), progress=False
    )
    return root


# --- the whole pipeline, with and without throttling ------------------------------------------------


@dataclass
class Outputs:
    shards: list[tuple[str, str]]  # (key, sha256)
    quarantine: list[tuple[str, str]]
    weights: dict[str, torch.Tensor]
    catalog: list[dict[str, Any]]  # rows without processed_at and model_version
    export: list[dict[str, Any]]  # the same


def without_run_columns(table: pa.Table) -> list[dict[str, Any]]:
    """Catalog rows less what differs between two runs by design: the time, and the model version (a
    run id covers the dataset manifest's seal, which covers its creation time)."""
    return table.drop(["processed_at", "model_version"]).to_pylist()


def run_pipeline(bucket: str, prefix: str) -> Outputs:
    """Ingest, train one epoch, publish and promote, classify the incoming batch, export: all in S3."""
    uri = f"s3://{bucket}/{prefix}"
    store = S3Store(bucket, prefix)
    images, labels = f"s3://{bucket}/{SURVEY}/images", f"s3://{bucket}/{SURVEY}/labels.csv"
    dataset = ingest(
        IngestConfig(images=images, labels=labels, store=uri, name="synthetic", samples_per_shard=10, workers=2),
        progress=False,
    ).manifest
    run = train(
        TrainConfig(preset="smoke", store=uri, epochs=1, workers=0, deterministic=True),
        progress=False, log=lambda _: None,
    )  # fmt: skip
    card = publish_run(store, run, evaluate_run(run, workers=0))
    promote(store, card.name, card.version, force=True)
    report = classify_pending(
        ClassifyConfig(store=uri, model="cs_resnet_tiny", engine="torch", workers=2), progress=False, log=lambda _: None
    )
    (batch,) = report.batches
    summary = export_catalogs(ExportConfig(store=uri, model="cs_resnet_tiny"))
    assert summary.out.startswith(f"{uri}/exports/")
    return Outputs(
        shards=[(s.key, s.sha256) for s in dataset.shards],
        quarantine=[(q.source_key, q.reason) for q in dataset.quarantine],
        weights=load_checkpoint(store, run.best_key)["model"],
        catalog=without_run_columns(read_catalog(store, batch.manifest)),
        export=without_run_columns(pq.read_table(io.BytesIO(store.read_bytes(summary.out[len(uri) + 1 :])))),
    )


@dataclass
class Runs:
    bucket: str
    clean: Outputs
    throttled: Outputs
    slowdowns: int
    requests: int


@pytest.fixture(scope="module")
def runs(proxy: FaultProxy, s3_config: S3Config, survey: Path) -> Runs:
    """The pipeline twice in one bucket, from the same inputs: straight to moto, then through the
    proxy answering one request in six with 503 SlowDown."""
    bucket = new_bucket(s3_config)
    direct = S3Store(bucket, "", s3_config)
    upload(survey / SURVEY, direct, SURVEY)
    for prefix in ("clean", "throttled"):
        upload(survey / "incoming", direct, f"{prefix}/incoming")
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_endpoint(monkeypatch, str(s3_config.endpoint_url))
        clean = run_pipeline(bucket, "clean")
        proxy.reset()
        proxy.slowdown_every = SLOWDOWN_EVERY
        use_endpoint(monkeypatch, proxy.endpoint_url)
        try:
            throttled = run_pipeline(bucket, "throttled")
            slowdowns, requests = proxy.faults["slowdown"], sum(proxy.counts.values())
        finally:
            proxy.reset()
    return Runs(bucket, clean, throttled, slowdowns, requests)


@pytest.mark.slow  # the module's pipeline runs, about a minute on two cores
def test_throttling_was_injected_and_retried(runs: Runs) -> None:
    assert runs.slowdowns >= runs.requests // SLOWDOWN_EVERY - 1
    assert runs.slowdowns >= 15, f"only {runs.slowdowns} of {runs.requests} requests throttled"


@pytest.mark.slow  # the module's pipeline runs, about a minute on two cores
def test_ingest_under_throttling_writes_the_same_shards(runs: Runs) -> None:
    assert runs.throttled.shards == runs.clean.shards
    assert len(runs.clean.shards) >= 3
    assert runs.throttled.quarantine == runs.clean.quarantine == []


@pytest.mark.slow  # the module's pipeline runs, about a minute on two cores
def test_training_under_throttling_ends_with_the_same_weights(runs: Runs) -> None:
    clean, throttled = runs.clean.weights, runs.throttled.weights
    assert clean.keys() == throttled.keys()
    different = [name for name in clean if not torch.equal(clean[name], throttled[name])]
    assert not different, f"weights differ: {different[:5]}"


@pytest.mark.slow  # the module's pipeline runs, about a minute on two cores
def test_classify_and_export_under_throttling_give_the_same_rows(runs: Runs) -> None:
    assert len(runs.clean.catalog) == 12
    assert runs.throttled.catalog == runs.clean.catalog
    assert runs.throttled.export == runs.clean.export == runs.clean.catalog


# --- one key denied ---------------------------------------------------------------------------------


def test_a_denied_key_is_an_access_denied_error_asked_once(faults: FaultProxy, s3_bucket: str) -> None:
    """GET names the code in its body, HEAD only has the status: both say access denied, neither is
    taken for an absent key, and botocore does not retry a 403."""
    store = S3Store(s3_bucket, "p", through(faults.endpoint_url, max_attempts=5))
    store.write_bytes("images/1.jpg", b"jpeg")
    faults.deny = ("p/images/1.jpg",)
    with pytest.raises(AccessDeniedError, match=r"access denied to 'images/1\.jpg' in s3://.*/p \(S3 AccessDenied\)"):
        store.read_bytes("images/1.jpg")
    with pytest.raises(AccessDeniedError, match=r"access denied to 'images/1\.jpg' .*\(S3 403\)"):
        store.exists("images/1.jpg")
    assert faults.count("GET", "images/1.jpg") == faults.count("HEAD", "images/1.jpg") == 1


def classified_image(survey: Path) -> str:
    """The file name of a labelled image whose votes give a Table I class (so ingest reads it)."""
    votes = read_votes(str(survey / SURVEY / "labels.csv"))
    classes = assign_classes(votes)
    ids = [str(gid) for gid, c in zip(votes[ID_COLUMN], classes, strict=True) if c != NO_CLASS]
    return f"{sorted(ids)[0]}.jpg"


def test_a_denied_image_is_quarantined_once_and_not_retried(
    faults: FaultProxy, s3_config: S3Config, survey: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = new_bucket(s3_config)
    upload(survey / SURVEY, S3Store(bucket, "", s3_config), SURVEY)
    name = classified_image(survey)
    faults.deny = (f"{SURVEY}/images/{name}",)
    use_endpoint(monkeypatch, faults.endpoint_url)
    config = IngestConfig(
        images=f"s3://{bucket}/{SURVEY}/images", labels=f"s3://{bucket}/{SURVEY}/labels.csv",
        store=f"s3://{bucket}/data", name="synthetic", samples_per_shard=10, workers=2,
    )  # fmt: skip
    dataset = ingest(config, progress=False).manifest
    (entry,) = dataset.quarantine
    assert entry.source_key == name
    assert "access denied" in entry.reason, entry.reason
    assert name in entry.reason
    assert faults.count("GET", name) == 1, faults.counts
    assert dataset.counts.adds_up
    assert dataset.counts.sharded > 0


@pytest.mark.slow  # the module's pipeline runs, about a minute on two cores
def test_a_denied_incoming_image_gets_one_unreadable_row(
    runs: Runs, faults: FaultProxy, s3_config: S3Config, survey: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the clean run's store (its model is in production), a new batch with one key denied."""
    store = S3Store(runs.bucket, "clean", s3_config)
    upload(survey / "incoming" / BATCH, store, "incoming/denied-batch")
    names = sorted(p.name for p in (survey / "incoming" / BATCH).glob("*.jpg"))
    denied = f"clean/incoming/denied-batch/{names[0]}"
    faults.deny = (denied,)
    use_endpoint(monkeypatch, faults.endpoint_url)
    config = ClassifyConfig(
        store=f"s3://{runs.bucket}/clean", model="cs_resnet_tiny", batches=("denied-batch",), engine="torch"
    )
    (batch,) = classify_pending(config, progress=False, log=lambda _: None).batches
    rows = read_catalog(store, batch.manifest).to_pylist()
    unreadable = [r for r in rows if r["flag"] == "unreadable"]
    assert len(rows) == len(names)
    assert [r["source_key"] for r in unreadable] == [f"incoming/denied-batch/{names[0]}"]
    assert "access denied" in unreadable[0]["reason"]
    assert names[0] in unreadable[0]["reason"]
    assert faults.count("GET", denied) == 1, faults.counts


# --- conditional writes -----------------------------------------------------------------------------

RACERS = 8
ROUNDS = 3


def race(stores: list[S3Store], write: Callable[[S3Store, bytes], bool]) -> dict[bytes, bool]:
    """Every store calls ``write`` with its own bytes at the same moment; bytes -> whether it won."""
    start = threading.Barrier(len(stores))

    def one(index: int) -> tuple[bytes, bool]:
        data = f"writer {index}".encode()
        start.wait()
        return data, write(stores[index], data)

    with ThreadPoolExecutor(len(stores)) as pool:
        return dict(pool.map(one, range(len(stores))))


@pytest.fixture
def racers(faults: FaultProxy, s3_bucket: str) -> list[S3Store]:
    """Eight clients of one bucket through the proxy, which serialises conditional PUTs per key."""
    faults.serialise_conditional_puts = True
    return [S3Store(s3_bucket, "race", through(faults.endpoint_url)) for _ in range(RACERS)]


def test_racing_creates_have_exactly_one_winner(racers: list[S3Store]) -> None:
    for round_ in range(ROUNDS):
        key = f"manifest-{round_}.json"
        outcome = race(racers, lambda store, data, key=key: store.create_if_absent(key, data))  # type: ignore[misc]
        (winner,) = [data for data, won in outcome.items() if won]
        assert racers[0].read_bytes(key) == winner


def test_racing_replacements_of_one_version_have_exactly_one_winner(racers: list[S3Store]) -> None:
    for round_ in range(ROUNDS):
        key = f"production-{round_}.json"
        racers[0].write_bytes(key, b"version 1")
        _, tag = racers[0].read_tagged(key)
        outcome = race(racers, lambda store, data, key=key, tag=tag: store.replace_if(key, data, tag))  # type: ignore[misc]
        (winner,) = [data for data, won in outcome.items() if won]
        assert racers[0].read_bytes(key) == winner


@pytest.mark.parametrize("lose_by", ["503", "close"])
def test_a_create_whose_answer_was_lost_is_still_ours(faults: FaultProxy, s3_bucket: str, lose_by: str) -> None:
    """The PUT lands, its answer is lost, botocore retries, the retry meets 412: the object is ours."""
    store = S3Store(s3_bucket, "lost", through(faults.endpoint_url))
    faults.lose_by = lose_by  # type: ignore[assignment]
    faults.lose_response = ["lost/manifest.json"]
    assert store.create_if_absent("manifest.json", b"ours")
    assert faults.faults["lose"] == 1
    assert faults.count("PUT", "lost/manifest.json") == 2  # the write, and the retry that met 412
    assert store.read_bytes("manifest.json") == b"ours"


@pytest.mark.parametrize("lose_by", ["503", "close"])
def test_a_replacement_whose_answer_was_lost_is_still_ours(faults: FaultProxy, s3_bucket: str, lose_by: str) -> None:
    store = S3Store(s3_bucket, "lost", through(faults.endpoint_url))
    store.write_bytes("production.json", b"version 1")
    _, tag = store.read_tagged("production.json")
    faults.lose_by = lose_by  # type: ignore[assignment]
    faults.lose_response = ["lost/production.json"]
    assert store.replace_if("production.json", b"version 2", tag)
    assert faults.count("PUT", "lost/production.json") == 3  # the first write, ours, and our retry
    assert store.read_bytes("production.json") == b"version 2"


def test_a_genuine_conflict_is_refused_without_retries(faults: FaultProxy, s3_bucket: str) -> None:
    store = S3Store(s3_bucket, "conflict", through(faults.endpoint_url))
    store.write_bytes("manifest.json", b"theirs")
    assert not store.create_if_absent("manifest.json", b"ours")
    _, tag = store.read_tagged("manifest.json")
    store.write_bytes("manifest.json", b"theirs, again")
    assert not store.replace_if("manifest.json", b"ours", tag)
    assert store.read_bytes("manifest.json") == b"theirs, again"
    assert faults.count("PUT", "conflict/manifest.json") == 4  # two writes of theirs, two refusals of ours


def test_the_proxy_forwards_a_chunked_body(faults: FaultProxy, s3_bucket: str) -> None:
    """botocore 1.44 sends Content-Length (and Expect: 100-continue, which every PUT above passes);
    a chunked upload, as other clients send, reaches moto whole."""
    host, port = faults.server_address[:2]
    connection = http.client.HTTPConnection(str(host), int(port), timeout=10)
    connection.request("PUT", f"/{s3_bucket}/chunked.bin", body=iter([b"first ", b"second"]), encode_chunked=True)
    assert connection.getresponse().status == 200
    connection.close()
    assert S3Store(s3_bucket, "", through(faults.endpoint_url)).read_bytes("chunked.bin") == b"first second"
