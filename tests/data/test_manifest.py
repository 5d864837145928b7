"""The dataset manifest is sealed: an edit after ingest stops every reader, a re-sealed manifest is a
different dataset to runs and cards, and with a key the seal cannot be forged without it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from galaxy_models.cli import app
from galaxy_models.data.manifest import (
    SEAL_KEY_ENV,
    DatasetManifest,
    ManifestSealError,
    compute_seal,
    read_manifest,
)
from galaxy_models.registry.cards import production_version, read_card
from galaxy_models.storage import LocalStore
from galaxy_models.training.config import TrainConfig
from galaxy_models.training.evaluation import evaluate_run
from galaxy_models.training.launch import launch
from galaxy_models.training.runs import read_run

NAME = "synthetic"


def _manifest_path(root: Path) -> Path:
    (path,) = (root / "datasets" / NAME).glob("*/manifest.json")
    return path


def _edit(root: Path, *, reseal: bool = False, **changes: object) -> Path:
    """Change fields of the stored manifest by hand, as an operator or attacker would."""
    path = _manifest_path(root)
    content = json.loads(path.read_text())
    content.update(changes)
    if reseal:
        content["seal"] = compute_seal(DatasetManifest.model_validate(content))
    path.write_text(json.dumps(content, indent=2))
    return path


@pytest.fixture
def dataset(synthetic_dataset: Path, tmp_path: Path) -> Path:
    root = tmp_path / "store"
    shutil.copytree(synthetic_dataset, root)
    return root


def test_ingest_seals_the_manifest_and_readers_check_it(dataset: Path) -> None:
    manifest = read_manifest(LocalStore(dataset), NAME)
    assert manifest.seal.startswith("sha256:")
    assert manifest.seal == compute_seal(manifest)
    normalization = manifest.normalization.model_dump()
    normalization["mean"][0] += 0.1
    path = _edit(dataset, normalization=normalization)
    with pytest.raises(ManifestSealError, match="was changed after ingest") as caught:
        read_manifest(LocalStore(dataset), NAME)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "field", ["normalization", "totals", "shards", "counts", "crop_size", "created_at", "quarantine"]
)
def test_every_field_is_covered_by_the_seal(dataset: Path, field: str) -> None:
    content = json.loads(_manifest_path(dataset).read_text())
    value = content[field]
    if field == "normalization":
        value["std"][2] *= 2
    elif field == "totals":
        value["train"]["0"] += 1
    elif field == "shards":
        value = value[:-1]
    elif field == "counts":
        value["sharded"] -= 1
    elif field == "crop_size":
        value = 32
    elif field == "created_at":
        value = "2030-01-01T00:00:00Z"
    else:
        value = [*value, {"source_key": "x.jpg", "galaxy_id": "x", "reason": "added"}]
    _edit(dataset, **{field: value})
    with pytest.raises(ManifestSealError, match="was changed after ingest"):
        read_manifest(LocalStore(dataset), NAME)


def test_datasets_verify_and_training_refuse_an_edited_manifest(dataset: Path) -> None:
    _edit(dataset, totals={"train": {"0": 1}})
    result = CliRunner().invoke(app, ["datasets", "verify", "--store", str(dataset), "--name", NAME])
    assert result.exit_code == 2, result.output
    assert "was changed after ingest" in result.stderr
    assert "Traceback" not in result.output
    with pytest.raises(ManifestSealError):
        launch(TrainConfig(preset="smoke", store=str(dataset)), log=lambda _: None)
    assert not (dataset / "runs").exists()  # refused before the run's first write


def test_an_unsealed_or_moved_manifest_is_refused(dataset: Path) -> None:
    path = _edit(dataset, seal="")
    with pytest.raises(ManifestSealError, match="has no seal"):
        read_manifest(LocalStore(dataset), NAME)
    _edit(dataset, reseal=True)  # a valid seal again
    moved = path.parent.parent / "v0000000000000000"
    moved.mkdir()
    shutil.copy(path, moved / "manifest.json")
    with pytest.raises(ManifestSealError, match=f"describes dataset {NAME}/v"):
        read_manifest(LocalStore(dataset), NAME, "v0000000000000000")


def test_a_resealed_manifest_is_another_dataset_to_runs_and_cards(root: Path) -> None:
    """Someone edits the manifest and recomputes the unkeyed seal: readers accept it, but the run id
    covers the seal (a new run, never the old checkpoints), and the published run refuses it."""
    store = LocalStore(root)
    card = read_card(store, "cs_resnet_tiny", production_version(store, "cs_resnet_tiny") or "")
    run = read_run(store, card.name, card.version)
    assert run is not None
    before = read_manifest(store, NAME)
    assert card.dataset["manifest_seal"] == before.seal == run.manifest_seal
    totals = before.model_dump(mode="json")["totals"]
    totals["train"]["0"] += 1
    _edit(root, reseal=True, totals=totals)
    after = read_manifest(store, NAME)
    assert after.version == before.version
    assert after.seal != before.seal
    assert run.config.run_id(after, 1) != run.config.run_id(before, 1) == run.run_id
    here = run.model_copy(update={"config": run.config.model_copy(update={"store": str(root)})})
    with pytest.raises(ManifestSealError, match="is not what run"):
        evaluate_run(here, workers=0)


def test_a_keyed_seal_cannot_be_forged_without_the_key(
    synthetic_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from galaxy_models.data.ingest import IngestConfig, ingest

    raw = synthetic_dataset / "raw" / "synthetic"
    config = IngestConfig(
        images=str(raw / "images"), labels=str(raw / "labels.csv"), store=str(tmp_path / "keyed"), name=NAME,
        samples_per_shard=50, workers=2,
    )  # fmt: skip
    monkeypatch.setenv(SEAL_KEY_ENV, "secret-from-the-vault")
    manifest = ingest(config, progress=False).manifest
    assert manifest.seal.startswith("hmac-sha256:")
    store = LocalStore(tmp_path / "keyed")
    assert read_manifest(store, NAME) == manifest
    monkeypatch.delenv(SEAL_KEY_ENV)
    with pytest.raises(ManifestSealError, match=f"set {SEAL_KEY_ENV}"):
        read_manifest(store, NAME)
    _edit(tmp_path / "keyed", reseal=True, crop_size=32)  # re-sealed without the key: plain sha256
    monkeypatch.setenv(SEAL_KEY_ENV, "secret-from-the-vault")
    with pytest.raises(ManifestSealError, match="only keyed seals are trusted"):
        read_manifest(store, NAME)
    monkeypatch.setenv(SEAL_KEY_ENV, "a-guess")
    _edit(tmp_path / "keyed", reseal=True)  # sealed with the wrong key
    monkeypatch.setenv(SEAL_KEY_ENV, "secret-from-the-vault")
    with pytest.raises(ManifestSealError, match="was changed after ingest"):
        read_manifest(store, NAME)
