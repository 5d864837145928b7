"""The tables and markdown the CLI prints and the flows publish as Prefect artifacts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from galaxy_models.catalogs.drift import BatchDrift
from galaxy_models.catalogs.export import ExportSummary
from galaxy_models.catalogs.manifest import CatalogManifest
from galaxy_models.metrics import Metrics
from galaxy_models.models.preprocessing import Preprocessing
from galaxy_models.registry.cards import ModelCard
from galaxy_models.reports import (
    artifact_key,
    classify_rows,
    export_markdown,
    export_rows,
    late_rows,
    training_markdown,
    training_rows,
)
from galaxy_models.storage import LocalStore

NOW = datetime(2026, 11, 29, tzinfo=UTC)


def _metrics(accuracy: float) -> Metrics:
    return Metrics(
        samples=10, accuracy=accuracy, precision=0.5, recall=0.25, f1=0.3333, per_class_accuracy=[1.0, None, 0, 0, 1],
        support=[2, 0, 1, 1, 6], confusion=[[2, 0, 0, 0, 0]] + [[0] * 5] * 3 + [[0, 0, 0, 0, 6]],
    )  # fmt: skip


def _card() -> ModelCard:
    return ModelCard(
        name="cs_resnet_tiny", version="abc123", architecture="cs_resnet_tiny", parameters=552_869,
        class_names=["round", "in-between", "cigar", "edge-on", "spiral"],
        preprocessing=Preprocessing(crop_size=224, mean=[0.1] * 3, std=[0.2] * 3, image_size=64), config={},
        dataset={"name": "synthetic", "version": "v1", "manifest_sha256": "0" * 64},
        metrics={"val": _metrics(0.8), "test": _metrics(0.9)}, best_epoch=1, history=[],
        hardware={"device": "cpu", "processes": 1}, training_seconds=3.0, training_images_per_second=41.25,
        figures=["confusion_test.png"], created_at=NOW,
    )  # fmt: skip


def test_artifact_keys_are_lowercase_with_dashes() -> None:
    assert artifact_key("train", "CS_ResNet50") == "train-cs-resnet50"


def test_training_table_and_markdown(tmp_path: Path) -> None:
    card = _card()
    rows = training_rows(card)
    assert [r["split"] for r in rows] == ["val", "test"]
    assert rows[1]["accuracy %"] == 90.0
    assert rows[1]["F1 %"] == 33.33
    markdown = training_markdown(card, LocalStore(tmp_path))
    assert markdown.startswith("# cs_resnet_tiny abc123")
    assert "552,869 parameters" in markdown
    assert "best epoch 2" in markdown
    assert "41.2 training images/s on cpu x1" in markdown
    assert "| cs_resnet_tiny | 90.00% | 50.00% | 25.00% | 33.33% |" in markdown
    assert "| n/a |" in markdown  # a class the split does not hold
    assert f"- {tmp_path.as_uri()}/models/cs_resnet_tiny/abc123/confusion_test.png" in markdown


def test_classify_rows() -> None:
    manifest = CatalogManifest(
        batch_id="b1", model_name="m", model_version="v", model_card="c", rows=3, parts=[],
        flags={"ok": 2, "unreadable": 1}, classes={"0": 1, "4": 1}, created_at=NOW,
    )  # fmt: skip
    assert classify_rows([manifest]) == [
        {"batch": "b1", "rows": 3, "tta": False, "ok": 2, "unreadable": 1, "class 0": 1, "class 4": 1}
    ]
    shares = {"round": 0.5, "spiral": 0.5}
    drift = BatchDrift(
        reference="train", reference_shares=shares, batch_shares={"round": 1.0}, js_divergence=0.31127,
        mean_confidence=0.8, reference_mean_confidence=0.8, confidence_drop=0.0, js_threshold=0.1,
        confidence_threshold=0.1, drifted=True, reasons=["class shares diverge"],
    )  # fmt: skip
    drifted = manifest.model_copy(update={"drift": drift, "warnings": ["batch b1 drifts"]})
    (row,) = classify_rows([drifted])
    assert (row["drift JS (bits)"], row["drifted"], row["warnings"]) == (0.3113, True, "batch b1 drifts")


def test_late_rows_name_the_batch_and_the_first_newcomer() -> None:
    late = {"b1": ["incoming/b1/7.jpg", "incoming/b1/9.jpg"]}
    assert late_rows(late) == [
        {"batch": "b1", "images not in catalog": 2, "first": "incoming/b1/7.jpg", "to classify them": "use a new batch"}
    ]


def test_export_table_and_markdown() -> None:
    summary = ExportSummary(
        model_name="m", model_version="v", batches=["b1", "b2"], rows=5, classes={"round": 3, "spiral": 2},
        flags={"ok": 5}, out="/x/m.parquet", figure="/x/m.parquet.png",
    )  # fmt: skip
    assert export_rows(summary) == [
        {"class": "round", "galaxies": 3}, {"class": "spiral", "galaxies": 2}, {"class": "flag: ok", "galaxies": 5}
    ]  # fmt: skip
    text = export_markdown(summary)
    assert "5 galaxies from batches b1, b2." in text
    assert "- file: /x/m.parquet" in text
