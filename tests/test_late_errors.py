"""Errors that come early and name what is wrong: a full disk names the key, an empty labels file
names the file, weights of the wrong architecture are one line (exit 2), a shard sample without
its image names the shard and key, a read-only store stops training before torchrun starts, and a
killed ingest's work folder is removed by the next ingest."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from galaxy_models.cli import app
from galaxy_models.data.ingest import WORKDIR_PREFIX, IngestConfig, ingest, remove_stale_workdirs
from galaxy_models.data.loader import _decode
from galaxy_models.data.shards import CorruptShardError
from galaxy_models.models.architectures import create_model
from galaxy_models.models.serialization import save_checkpoint
from galaxy_models.registry.cards import read_card
from galaxy_models.storage import LocalStore, StorageError
from galaxy_models.training import launch as launch_module
from galaxy_models.training.config import TrainConfig
from galaxy_models.training.launch import launch

runner = CliRunner()


def test_a_full_disk_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path)
    store.write_bytes("catalogs/b/v/part-00000.parquet", b"old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match="no space left on the device writing 'catalogs/b/v/part-00000.parquet'"):
        store.write_bytes("catalogs/b/v/part-00000.parquet", b"new")
    monkeypatch.undo()
    assert store.read_bytes("catalogs/b/v/part-00000.parquet") == b"old"
    assert [p.name for p in (tmp_path / "catalogs" / "b" / "v").iterdir()] == ["part-00000.parquet"]


def test_an_empty_labels_file_is_named(tmp_path: Path) -> None:
    empty = tmp_path / "votes.csv"
    empty.write_bytes(b"")
    result = runner.invoke(app, ["labels", "summarize", str(empty)])
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == f"error: {empty} is empty; give the vote table (CSV with GalaxyID and the 37 vote columns)"
    )
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match=f"{empty} is empty"):
        ingest(
            IngestConfig(images=str(tmp_path / "images"), labels=str(empty), store=str(tmp_path / "s")), progress=False
        )


def test_weights_of_another_architecture_are_one_line(root: Path) -> None:
    store = LocalStore(root)
    card = read_card(store, "cs_resnet_tiny")
    save_checkpoint(store, f"models/{card.name}/{card.version}/model.pt", create_model("resnet_tiny").state_dict())
    result = runner.invoke(app, ["classify", "--store", str(root), "--model", "cs_resnet_tiny", "--engine", "torch"])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert "does not hold cs_resnet_tiny weights" in line
    assert "card and weights disagree" in line


def test_a_sample_without_its_image_names_the_shard_and_key() -> None:
    with pytest.raises(CorruptShardError, match=r"shard /data/train-000003.tar: sample '587722' has no jpg"):
        _decode({"__key__": "587722", "__url__": "/data/train-000003.tar", "cls": b"1"})


def test_a_read_only_store_stops_training_before_torchrun(
    synthetic_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "store"
    shutil.copytree(synthetic_dataset, root)

    def read_only(self: LocalStore, key: str, data: bytes) -> None:
        raise StorageError(f"cannot write {key!r} in {self.uri}: Read-only file system")

    def no_torchrun(*args: object, **kwargs: object) -> None:
        raise AssertionError("torchrun was started")

    monkeypatch.setattr(LocalStore, "write_bytes", read_only)
    monkeypatch.setattr(launch_module.subprocess, "Popen", no_torchrun)
    with pytest.raises(StorageError, match=r"cannot write 'runs/cs_resnet_tiny/[0-9a-f]+/config.json'"):
        launch(TrainConfig(preset="smoke", store=str(root), epochs=1, workers=0))


def test_the_next_ingest_removes_a_killed_ingests_work_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"{WORKDIR_PREFIX}{dead.pid}-x1y2"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "train-000000.tar").write_bytes(b"partial")
    alive = tmp_path / f"{WORKDIR_PREFIX}{os.getpid()}-z3"
    alive.mkdir()
    other = tmp_path / "someone-else"
    other.mkdir()
    assert remove_stale_workdirs() == [str(stale)]
    assert not stale.exists()
    assert alive.exists()
    assert other.exists()
