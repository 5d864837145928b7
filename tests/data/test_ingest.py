"""Ingest: real GZ2 counts (local and S3), quarantine, idempotence, kill and resume, verification."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import pytest
from badimages import corpus

from galaxy_models.data.ingest import WINDOW_PER_WORKER, IngestConfig, bounded_map, ingest
from galaxy_models.data.manifest import DatasetManifest, read_manifest
from galaxy_models.data.shards import CorruptShardError, verify_dataset
from galaxy_models.data.splits import SPLITS
from galaxy_models.domain import CLASS_NAMES
from galaxy_models.storage import LocalStore, S3Config, S3Store, Store
from galaxy_models.synth.survey import SynthConfig, synthesize_survey

GZ2_TOTALS = {"0": 607, "1": 589, "2": 39, "3": 294, "4": 717}


class CountingStore(LocalStore):
    """A local store that counts every write."""

    writes = 0

    def write_bytes(self, key: str, data: bytes) -> None:
        self.writes += 1
        super().write_bytes(key, data)

    def upload_file(self, key: str, path: str | os.PathLike[str]) -> None:
        self.writes += 1
        super().upload_file(key, path)

    def create_if_absent(self, key: str, data: bytes) -> bool:
        self.writes += 1
        return super().create_if_absent(key, data)


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic survey (images + vote table) in a local folder."""
    root = tmp_path_factory.mktemp("survey")
    synthesize_survey(SynthConfig(store=str(root), n=160, seed=5, workers=2), progress=False)
    return root / "raw" / "synthetic"


def config_for(images: str | Path, labels: str | Path, store: Store | str, **extra: object) -> IngestConfig:
    uri = store if isinstance(store, str) else store.uri
    return IngestConfig(images=str(images), labels=str(labels), store=uri, **extra)  # type: ignore[arg-type]


def assert_gz2_dataset(store: Store, result_manifest_version: str) -> None:
    manifest = read_manifest(store, "gz2", result_manifest_version)
    totals = {k: sum(manifest.totals[s][k] for s in SPLITS) for k in GZ2_TOTALS}
    assert totals == GZ2_TOTALS
    assert manifest.counts.sharded == 2246
    assert manifest.counts.adds_up
    for k, n in GZ2_TOTALS.items():
        for split, share in zip(SPLITS, (0.8, 0.1, 0.1), strict=True):
            assert abs(manifest.totals[split][k] - share * n) <= 1, (k, split)
    assert verify_dataset(store, manifest) == len(manifest.shards)


def test_real_gz2_local(gz2_dir: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    labelled = gz2_dir / "labelled"
    result = ingest(config_for(labelled / "images", labelled / "training_solutions_rev1.csv", store), progress=False)
    assert result.created
    assert result.manifest.counts.images_listed == 4665
    assert result.manifest.counts.labels_without_image == 12917 - 4665
    assert result.manifest.counts.without_class == 4665 - 2246
    assert_gz2_dataset(store, result.manifest.version)


def test_real_gz2_through_s3(
    gz2_dir: Path, s3_bucket: str, s3_config: S3Config, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Images, labels and the dataset all in S3 (moto over HTTP), configured from the environment: the
    same dataset as a local ingest of the same files (the full set's counts are checked locally above;
    here 600 real images keep the upload short)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", str(s3_config.endpoint_url))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    labelled = gz2_dir / "labelled"
    images = sorted((labelled / "images").iterdir())[:600]
    local_images = tmp_path / "images"
    local_images.mkdir()
    for path in images:
        (local_images / path.name).write_bytes(path.read_bytes())
    local = LocalStore(tmp_path / "store")
    expected = ingest(config_for(local_images, labelled / "training_solutions_rev1.csv", local), progress=False)
    raw = S3Store(s3_bucket, "raw/gz2")
    raw.upload_file("labels.csv", labelled / "training_solutions_rev1.csv")
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda p: raw.write_bytes(f"images/{p.name}", p.read_bytes()), images))
    store = S3Store(s3_bucket, "galaxy-data")
    config = config_for(f"s3://{s3_bucket}/raw/gz2/images", f"s3://{s3_bucket}/raw/gz2/labels.csv", store)
    result = ingest(config, store=store, progress=False)
    assert result.manifest_uri.startswith(f"s3://{s3_bucket}/galaxy-data/datasets/gz2/")
    manifest = read_manifest(store, "gz2", result.manifest.version)
    assert manifest.counts == expected.manifest.counts
    assert manifest.counts.images_listed == 600
    assert manifest.counts.adds_up
    assert manifest.totals == expected.manifest.totals

    # the same galaxies in the same shards (each sample's json says where its image came from, so the
    # shards' bytes differ)
    assert _layout(manifest) == _layout(expected.manifest)
    assert verify_dataset(store, manifest) == len(manifest.shards)


def _layout(manifest: DatasetManifest) -> list[tuple[str, list[str], dict[str, int]]]:
    return [(s.key.rsplit("/", 1)[1], s.sample_keys, s.classes) for s in manifest.shards]


def test_bad_images_are_quarantined_and_counts_add_up(survey: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for path in (survey / "images").iterdir():
        (images / path.name).write_bytes(path.read_bytes())
    votes = pd.read_csv(survey / "labels.csv", dtype={"GalaxyID": str})
    template = votes.iloc[[0]]  # any row: give every bad file a label row so it reaches the checks
    bad = corpus()
    extra = []
    for i, (_name, (data, _)) in enumerate(sorted(bad.items())):
        gid = f"9{i:05d}"
        (images / f"{gid}.jpg").write_bytes(data)
        extra.append(
            template.assign(GalaxyID=gid, **{"Class1.1": 0.9, "Class7.1": 0.8, "Class7.2": 0.05, "Class7.3": 0.05})
        )
    (images / "notes.txt").write_bytes(b"observing log")  # no label row: counted, not fatal
    (images / "bad id!.jpg").write_bytes(b"x")  # not a valid GalaxyID: quarantined
    labels = tmp_path / "labels.csv"
    pd.concat([votes, *extra]).to_csv(labels, index=False)

    store = LocalStore(tmp_path / "store")
    manifest = ingest(config_for(images, labels, store, samples_per_shard=40), progress=False).manifest
    counts = manifest.counts
    assert counts.adds_up
    assert counts.images_listed == 160 + len(bad) + 2
    assert counts.without_label == 1
    reasons = {q.source_key.rsplit("/", 1)[-1]: q.reason for q in manifest.quarantine}
    expected = {f"9{i:05d}.jpg": reason for i, (_, (_, reason)) in enumerate(sorted(bad.items())) if reason}
    for name, fragment in expected.items():
        assert fragment in reasons[name], (name, reasons.get(name))
    assert "not a valid GalaxyID" in reasons["bad id!.jpg"]
    assert counts.quarantined == len(expected) + 1
    assert counts.converted_to_rgb == 2  # the CMYK and grey images went in as RGB
    sharded_keys = {k for s in manifest.shards for k in s.sample_keys}
    assert {
        f"9{i:05d}" for i, (name, _) in enumerate(sorted(bad.items())) if name in ("cmyk.jpg", "grey.jpg")
    } <= sharded_keys
    assert verify_dataset(store, manifest) == len(manifest.shards)


def test_second_run_writes_nothing(survey: Path, tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    config = config_for(survey / "images", survey / "labels.csv", store, samples_per_shard=30)
    first = ingest(config, store=store, progress=False)
    writes = store.writes
    assert writes == len(first.manifest.shards) + 1  # every shard once, then the manifest
    second = ingest(config, store=store, progress=False)
    assert not second.created
    assert store.writes == writes
    assert second.manifest == first.manifest


def test_invalid_labels_stop_before_anything_is_written(survey: Path, tmp_path: Path) -> None:
    votes = pd.read_csv(survey / "labels.csv", dtype={"GalaxyID": str})
    votes.loc[3, "Class4.1"] = float("nan")
    labels = tmp_path / "bad.csv"
    votes.to_csv(labels, index=False)
    store = LocalStore(tmp_path / "store")
    with pytest.raises(ValueError, match=r"bad\.csv.*Class4\.1.*row 3"):
        ingest(config_for(survey / "images", labels, store), progress=False)
    assert store.list() == []


def test_killed_run_is_completed_by_the_next(survey: Path, tmp_path: Path) -> None:
    """Kill the CLI once its first shard is in the store: no manifest; the next run finishes the
    version, and the result is byte-identical to an uninterrupted run."""
    store = LocalStore(tmp_path / "store")
    args = [
        sys.executable, "-m", "galaxy_models.cli", "ingest", "--images", str(survey / "images"),
        "--labels", str(survey / "labels.csv"), "--store", str(store.root), "--samples-per-shard", "3",
        "--workers", "1", "--json",
    ]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any(k.endswith(".tar") for k in store.list("datasets/")):
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = store.list("datasets/")
    assert partial
    assert not any(k.endswith("manifest.json") for k in partial), "the run finished before it was killed"
    with pytest.raises(FileNotFoundError, match="no complete version"):
        read_manifest(store, "gz2")

    config = config_for(survey / "images", survey / "labels.csv", store, samples_per_shard=3, workers=1)
    resumed = ingest(config, progress=False)
    assert resumed.created
    assert verify_dataset(store, resumed.manifest) == len(resumed.manifest.shards)
    clean = LocalStore(tmp_path / "clean")
    reference = ingest(config.model_copy(update={"store": clean.uri}), progress=False)
    assert [(s.key, s.sha256) for s in resumed.manifest.shards] == [
        (s.key, s.sha256) for s in reference.manifest.shards
    ]
    assert len(store.list("datasets/")) == len(resumed.manifest.shards) + 1  # no stray leftovers


def test_corrupted_shards_are_caught(survey: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    manifest = ingest(
        config_for(survey / "images", survey / "labels.csv", store, samples_per_shard=25), progress=False
    ).manifest
    shard = manifest.shards[1]
    path = store.path(shard.key)
    data = bytearray(path.read_bytes())
    data[2000] ^= 0xFF  # one flipped byte inside an image
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match=shard.key):
        verify_dataset(store, manifest)
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(CorruptShardError, match=shard.key):
        verify_dataset(store, manifest)
    store.delete(shard.key)
    with pytest.raises(CorruptShardError, match="missing"):
        verify_dataset(store, manifest)
    # the other splits are still fine
    others = [s for s in SPLITS if s != shard.split]
    assert verify_dataset(store, manifest, splits=others) == sum(s.split in others for s in manifest.shards)


def test_version_changes_with_content(survey: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    a = ingest(config_for(survey / "images", survey / "labels.csv", store), progress=False).manifest
    b = ingest(config_for(survey / "images", survey / "labels.csv", store, seed=1), progress=False).manifest
    assert a.version != b.version
    assert read_manifest(store, "gz2").version == b.version  # the newest complete one
    assert read_manifest(store, "gz2", a.version) == a


def test_manifest_records_provenance(survey: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    manifest = ingest(config_for(survey / "images", survey / "labels.csv", store), progress=False).manifest
    assert manifest.class_names == list(CLASS_NAMES)
    assert len(manifest.labels_sha256) == 64
    assert manifest.config["crop_size"] == 224
    assert len(manifest.normalization.mean) == 3
    assert all(0 < s < 1 for s in manifest.normalization.std)
    sample_json = io.BytesIO(store.read_bytes(manifest.shards[0].key))
    import tarfile

    with tarfile.open(fileobj=sample_json) as tar:
        names = tar.getnames()[:3]
    assert [n.rsplit(".", 1)[1] for n in names] == ["cls", "jpg", "json"]


def _labelled_copy(survey: Path, tmp_path: Path, gids: list[str]) -> Path:
    """The survey's vote table with a smooth-round row for each of ``gids``."""
    votes = pd.read_csv(survey / "labels.csv", dtype={"GalaxyID": str})
    extra = [
        votes.iloc[[0]].assign(GalaxyID=g, **{"Class1.1": 0.9, "Class7.1": 0.8, "Class7.2": 0.05, "Class7.3": 0.05})
        for g in gids
    ]
    labels = tmp_path / "labels.csv"
    pd.concat([votes, *extra]).to_csv(labels, index=False)
    return labels


def test_an_odd_source_key_is_quarantined_not_fatal(survey: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(survey / "images", images)
    (images / "night\\2").mkdir()  # a backslash in a folder name
    (images / "night\\2" / "900001.jpg").write_bytes(next((survey / "images").iterdir()).read_bytes())
    labels = _labelled_copy(survey, tmp_path, ["900001"])
    manifest = ingest(config_for(images, labels, LocalStore(tmp_path / "store")), progress=False).manifest
    (entry,) = [q for q in manifest.quarantine if q.galaxy_id == "900001"]
    assert "backslash" in entry.reason
    assert manifest.counts.adds_up
    assert manifest.counts.sharded == 160 - manifest.counts.without_class


def test_an_empty_segment_in_an_s3_key_is_quarantined(
    survey: Path, tmp_path: Path, s3_bucket: str, s3_config: S3Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = S3Store(s3_bucket, "", s3_config)
    for path in sorted((survey / "images").iterdir())[:20]:
        source.write_bytes(f"survey/images/{path.name}", path.read_bytes())
    first = sorted((survey / "images").iterdir())[0].read_bytes()
    source.client.put_object(Bucket=s3_bucket, Key="survey/images//900002.jpg", Body=first)
    labels = _labelled_copy(survey, tmp_path, ["900002"])
    for name, value in (
        ("AWS_ENDPOINT_URL", str(s3_config.endpoint_url)), ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1"),
    ):  # fmt: skip
        monkeypatch.setenv(name, value)
    config = config_for(f"s3://{s3_bucket}/survey/images", labels, LocalStore(tmp_path / "store"))
    manifest = ingest(config, progress=False).manifest
    (entry,) = [q for q in manifest.quarantine if q.galaxy_id == "900002"]
    assert "invalid storage key" in entry.reason
    assert manifest.counts.adds_up


T = TypeVar("T")


class SubmitCountingPool(ThreadPoolExecutor):
    """A thread pool that records, at every submission, how many submitted items the consumer (which
    counts in ``consumed``) has not yet taken."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.submitted = self.consumed = self.most_outstanding = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        self.submitted += 1
        self.most_outstanding = max(self.most_outstanding, self.submitted - self.consumed)
        return super().submit(fn, *args, **kwargs)


def _consume_slowly(pool: SubmitCountingPool, results: Any, into: list[Any]) -> None:
    for value in results:
        time.sleep(0.002)  # a consumer slower than the workers, like a shard writer behind its readers
        into.append(value)
        pool.consumed += 1


def test_bounded_map_keeps_at_most_window_items_unconsumed() -> None:
    """Fast workers, slow consumer: never more than ``window`` items submitted or running ahead of
    what the consumer has taken, where ``Executor.map`` has all of them."""
    window, n = 6, 200
    started = most_ahead = 0
    lock = threading.Lock()
    with SubmitCountingPool(4) as pool:

        def square(x: int) -> int:
            nonlocal started, most_ahead
            with lock:
                started += 1
                most_ahead = max(most_ahead, started - pool.consumed)
            return x * x

        results: list[int] = []
        _consume_slowly(pool, bounded_map(pool, square, range(n), window), results)
    assert results == [x * x for x in range(n)]
    assert pool.most_outstanding == window
    assert most_ahead <= window
    with SubmitCountingPool(4) as pool:  # the instrument sees the unbounded map for what it is
        _consume_slowly(pool, pool.map(square, range(n)), [])
    assert pool.most_outstanding == n


def test_bounded_map_keeps_input_order() -> None:
    """Early items finish last, and still come first."""

    def slow_then_fast(x: int) -> int:
        time.sleep(0.02 if x % 5 == 0 else 0.0)
        return -x

    with ThreadPoolExecutor(4) as pool:
        assert list(bounded_map(pool, slow_then_fast, range(50), 8)) == [-x for x in range(50)]


def test_bounded_map_raises_the_error_in_order_and_submits_no_more() -> None:
    calls: list[int] = []

    def fail_at_five(x: int) -> int:
        calls.append(x)
        if x == 5:
            raise ValueError("item 5 is bad")
        return x

    taken: list[int] = []
    with ThreadPoolExecutor(2) as pool, pytest.raises(ValueError, match="item 5 is bad"):  # noqa: PT012
        for value in bounded_map(pool, fail_at_five, range(1000), 4):
            taken.append(value)
    assert taken == [0, 1, 2, 3, 4]
    assert max(calls) < 5 + 4  # nothing submitted after the failing item's result was reached


def test_bounded_map_stopped_early_cancels_the_rest() -> None:
    calls: list[int] = []

    def record(x: int) -> int:
        calls.append(x)
        return x

    with ThreadPoolExecutor(1) as pool:
        results = bounded_map(pool, record, range(1000), 3)
        assert isinstance(results, Generator)
        assert [next(results), next(results)] == [0, 1]
        results.close()
    assert len(calls) <= 2 + 3


def test_bounded_map_needs_a_window() -> None:
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="window"):
        next(bounded_map(pool, str, [1], 0))


def test_ingest_bounds_each_split_by_its_workers(survey: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every split goes through the bounded window, sized by the configured threads."""
    windows: list[int] = []

    def spy(pool: Any, fn: Any, items: Any, window: int) -> Any:
        windows.append(window)
        return bounded_map(pool, fn, items, window)

    monkeypatch.setattr("galaxy_models.data.ingest.bounded_map", spy)
    config = config_for(survey / "images", survey / "labels.csv", LocalStore(tmp_path / "store"), workers=3)
    manifest = ingest(config, progress=False).manifest
    assert windows == [WINDOW_PER_WORKER * 3] * len(SPLITS)
    assert manifest.counts.adds_up
