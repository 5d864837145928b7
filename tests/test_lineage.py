"""Lineage: a synthetic survey says so, ingest and training carry the kind into the model card, and
classifying a survey of the other kind warns in the log, the catalog manifest and the flow's table."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from galaxy_models.data.ingest import IngestConfig, resolve_survey_kind
from galaxy_models.data.manifest import read_manifest
from galaxy_models.inference.classify import classify_pending
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.lineage import SURVEY_FILE, lineage_warning, survey_kind
from galaxy_models.registry.cards import read_card
from galaxy_models.reports import classify_rows
from galaxy_models.storage import LocalStore


def test_a_synthetic_survey_says_so_and_anything_else_is_real(synthetic_dataset: Path, tmp_path: Path) -> None:
    store = LocalStore(synthetic_dataset)
    assert survey_kind(store, "raw/synthetic") == "synthetic"
    assert survey_kind(store, "incoming/synthetic-batch-001") == "synthetic"
    assert survey_kind(store, "datasets") == "real"  # no survey.json
    raw = synthetic_dataset / "raw" / "synthetic"
    config = IngestConfig(images=str(raw / "images"), labels=str(raw / "labels.csv"), store=str(tmp_path))
    assert resolve_survey_kind(config) == "synthetic"
    assert resolve_survey_kind(config.model_copy(update={"survey": "real"})) == "real"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / SURVEY_FILE).write_text('{"kind": "simulated"}')
    with pytest.raises(ValueError, match=r"bad/survey.json is not a valid survey provenance record"):
        survey_kind(LocalStore(bad), "")


def test_the_kind_travels_from_ingest_to_the_model_card(root: Path) -> None:
    store = LocalStore(root)
    assert read_manifest(store, "synthetic").survey == "synthetic"
    assert read_card(store, "cs_resnet_tiny").dataset["survey"] == "synthetic"


def test_classifying_a_survey_of_the_other_kind_warns(root: Path) -> None:
    """The tiny model was trained on the synthetic survey: a batch without survey.json is real."""
    real = root / "incoming" / "real-batch"
    real.mkdir()
    for image in sorted((root / "incoming" / "synthetic-batch-002").glob("*.jpg"))[:6]:
        shutil.copy(image, real / image.name)
    logged: list[str] = []
    config = ClassifyConfig(
        store=str(root),
        model="cs_resnet_tiny",
        workers=2,
        batches=("real-batch", "synthetic-batch-002"),
        engine="torch",
    )
    report = classify_pending(config, progress=False, log=logged.append)
    manifests = {r.manifest.batch_id: r.manifest for r in report.batches}

    def lineage(warnings: list[str]) -> list[str]:  # the one-epoch model's batches may drift too
        return [w for w in warnings if "drifts from the training data" not in w]

    (warning,) = lineage(manifests["real-batch"].warnings)
    assert "trained on a synthetic survey but batch real-batch is real" in warning
    assert lineage(manifests["synthetic-batch-002"].warnings) == []
    assert lineage(logged) == [f"warning: {warning}"]
    rows = {row["batch"]: row for row in classify_rows(list(manifests.values()))}
    assert warning in rows["real-batch"]["warnings"]
    assert "synthetic survey" not in rows["synthetic-batch-002"].get("warnings", "")


def test_no_warning_when_the_kinds_agree_or_the_card_predates_lineage() -> None:
    assert lineage_warning("m/v", "real", "b", "real") is None
    assert lineage_warning("m/v", None, "b", "synthetic") is None
    assert lineage_warning("m/v", "real", "b", "synthetic") is not None
