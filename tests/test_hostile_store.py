"""A hostile local store: symbolic links (to files outside, to /dev/zero, through a folder), FIFOs and
devices are never read, and every image read has a size cap, on both backends. Classify gives such
files an unreadable row with the reason and finishes; ingest quarantines them."""

from __future__ import annotations

import os
import shutil
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from badimages import good_rgb, jpeg

from galaxy_models.catalogs.manifest import read_catalog
from galaxy_models.data.images import ImageRejected, read_image_bytes
from galaxy_models.data.ingest import IngestConfig, ingest
from galaxy_models.inference.classify import classify_batch
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.labels import ID_COLUMN, NO_CLASS, assign_classes, read_votes
from galaxy_models.storage import LocalStore, ObjectTooLargeError, Store, UnsafeObjectError
from galaxy_models.synth.survey import SynthConfig, synthesize_survey


def _finishes(call: Callable[[], object], seconds: float = 20.0) -> object:
    """``call()`` in a thread; fails (instead of hanging the suite) if it has not returned in time."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as err:  # handed to the test below
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (blocked on a FIFO or device?)"
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome.get("value")


def _hostile_folder(folder: Path, outside: Path) -> dict[str, str]:
    """Plant every kind of non-regular file in ``folder``; returns name -> the reason's telltale."""
    folder.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "100001.jpg").write_bytes(jpeg(good_rgb(9)))
    os.symlink("/etc/passwd", folder / "100002.jpg")
    os.symlink(outside / "100001.jpg", folder / "100003.jpg")
    os.symlink("/dev/zero", folder / "100004.jpg")
    os.mkfifo(folder / "100005.jpg")
    planted = {
        "100002.jpg": "symbolic link", "100003.jpg": "symbolic link", "100004.jpg": "symbolic link",
        "100005.jpg": "FIFO",
    }  # fmt: skip
    try:
        os.mknod(folder / "100006.jpg", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # a copy of /dev/zero
        planted["100006.jpg"] = "character device"
    except PermissionError:  # not root, or a container without CAP_MKNOD
        pass
    return planted


def test_local_reads_refuse_links_fifos_and_devices(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    planted = _hostile_folder(tmp_path / "store" / "incoming" / "b1", tmp_path / "outside")
    for name, telltale in planted.items():
        with pytest.raises(UnsafeObjectError, match=telltale):
            _finishes(lambda name=name: store.read_bytes(f"incoming/b1/{name}"))  # type: ignore[misc]
        assert not store.exists(f"incoming/b1/{name}")
    os.symlink(tmp_path / "outside", tmp_path / "store" / "incoming" / "linked")
    with pytest.raises(UnsafeObjectError, match="passes through the symbolic link 'linked'"):
        store.read_bytes("incoming/linked/100001.jpg")
    assert (tmp_path / "outside" / "100001.jpg").is_file()  # the target is there: only the link is refused


def test_every_image_read_has_a_size_cap(store: Store) -> None:
    store.write_bytes("incoming/b1/100.jpg", b"x" * 1000)
    assert store.read_bytes("incoming/b1/100.jpg", max_bytes=1000) == b"x" * 1000
    with pytest.raises(ObjectTooLargeError, match="over the 999-byte cap"):
        store.read_bytes("incoming/b1/100.jpg", max_bytes=999)
    with pytest.raises(ImageRejected, match="larger than the 10-byte cap"):
        read_image_bytes(store, "incoming/b1/100.jpg", max_bytes=10)


def test_classify_flags_hostile_files_and_finishes(trained_store: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(trained_store, root)
    batch = root / "incoming" / "hostile"
    planted = _hostile_folder(batch, tmp_path / "outside")
    (batch / "100007.jpg").write_bytes(jpeg(good_rgb(7)))  # a good image
    (batch / "100008.jpg").write_bytes(jpeg(good_rgb(8), quality=100) + b"\0" * 300_000)  # over the cap below
    config = ClassifyConfig(store=str(root), model="cs_resnet_tiny", workers=2, max_image_bytes=200_000)
    manifest, wrote = _finishes(lambda: classify_batch(config, "hostile", progress=False), 120)  # type: ignore[misc]
    assert wrote
    rows = {r["galaxy_id"]: r for r in read_catalog(LocalStore(root), manifest).to_pylist()}
    assert rows["100007"]["flag"] != "unreadable"
    assert rows["100008"]["flag"] == "unreadable"
    assert "larger than the 200000-byte cap" in rows["100008"]["reason"]
    for name, telltale in planted.items():
        row = rows[name.removesuffix(".jpg")]
        assert row["flag"] == "unreadable", row
        assert telltale in row["reason"]


def test_ingest_quarantines_links_to_images_outside(tmp_path: Path) -> None:
    synthesize_survey(SynthConfig(store=str(tmp_path / "raw"), n=40, seed=5, workers=1), progress=False)
    images = tmp_path / "raw" / "raw" / "synthetic" / "images"
    planted = _hostile_folder(images, tmp_path / "outside")
    labels = tmp_path / "raw" / "raw" / "synthetic" / "labels.csv"
    votes = read_votes(labels)
    labelled = votes[assign_classes(votes) != NO_CLASS].iloc[0]  # votes that give a Table I class
    extra = pd.DataFrame([{**labelled.to_dict(), ID_COLUMN: name.removesuffix(".jpg")} for name in planted])
    pd.concat([votes, extra]).to_csv(labels, index=False)
    config = IngestConfig(
        images=str(images), labels=str(labels), store=str(tmp_path / "store"), name="hostile", samples_per_shard=10
    )
    result = _finishes(lambda: ingest(config, progress=False), 120)
    reasons = {q.source_key: q.reason for q in result.manifest.quarantine}  # type: ignore[attr-defined]
    for name, telltale in planted.items():
        assert name in reasons, reasons
        assert telltale in reasons[name]
    assert result.manifest.counts.adds_up  # type: ignore[attr-defined]
