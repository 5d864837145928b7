"""A batch's catalog covers the images it held when its plan was written: images added later are
reported as not in the catalog (every run, until they are moved to a batch of their own), and a
planned image that has gone gets a row flagged ``missing`` instead of failing the batch forever."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from galaxy_models.catalogs.incoming import batch_images
from galaxy_models.catalogs.manifest import read_catalog
from galaxy_models.cli import app
from galaxy_models.domain import Flag
from galaxy_models.inference.classify import GONE, classify_batch, classify_pending, plan_batch
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.registry.cards import resolve
from galaxy_models.storage import LocalStore

BATCH = "synthetic-batch-002"


def _config(root: Path) -> ClassifyConfig:
    return ClassifyConfig(
        store=str(root), model="cs_resnet_tiny", workers=2, part_size=16, batches=(BATCH,), engine="torch"
    )


def _add_image(root: Path, name: str) -> str:
    """A new file in the batch folder: a copy of one of its images under another galaxy id."""
    folder = root / "incoming" / BATCH
    shutil.copy(sorted(folder.glob("*.jpg"))[0], folder / f"{name}.jpg")
    return f"incoming/{BATCH}/{name}.jpg"


def test_an_image_added_after_the_catalog_is_reported_not_in_it(root: Path) -> None:
    store = LocalStore(root)
    config = _config(root)
    first = classify_pending(config, progress=False, log=lambda _: None)
    catalog = first.batches[0].manifest
    assert first.late == {}
    key = _add_image(root, "late-arrival")
    warnings: list[str] = []
    again = classify_pending(config, progress=False, log=warnings.append)
    assert not again.batches[0].committed
    assert again.batches[0].manifest == catalog
    assert again.late == {BATCH: [key]}
    assert again.summary()["not_in_catalog"] == {BATCH: 1}
    (line,) = [w for w in warnings if "arrived after" in w]  # the tiny model's drift warning may come too
    assert f"incoming/{BATCH}/" in line
    assert key in line
    assert "new batch" in line
    assert key not in read_catalog(store, catalog).column("source_key").to_pylist()
    # the nightly run (no batches named) reports it too, and the CLI says so on stderr
    nightly = classify_pending(_config(root).model_copy(update={"batches": None}), progress=False, log=lambda _: None)
    assert nightly.late == {BATCH: [key]}
    result = CliRunner().invoke(app, ["classify", "--store", str(root), "--model", "cs_resnet_tiny", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["not_in_catalog"] == {BATCH: 1}
    assert "arrived after its catalog was planned" in result.stderr


def test_after_a_killed_run_the_plan_in_force_decides_the_rows(root: Path) -> None:
    """A run killed after planning; an image arrives; the next run completes the planned catalog
    and reports the newcomer instead of silently dropping or half-adding it."""
    store = LocalStore(root)
    config = _config(root)
    card = resolve(store, config.ref)
    planned = plan_batch(store, config, card, BATCH)  # what the killed run left
    key = _add_image(root, "arrived-between-runs")
    report = classify_pending(config, progress=False, log=lambda _: None)
    rows = read_catalog(store, report.batches[0].manifest).column("source_key").to_pylist()
    assert sorted(rows) == sorted(planned.source_keys) == sorted(set(batch_images(store, BATCH)) - {key})
    assert report.late == {BATCH: [key]}


def test_a_planned_image_that_has_gone_gets_a_missing_row(root: Path) -> None:
    store = LocalStore(root)
    config = _config(root)
    planned = plan_batch(store, config, resolve(store, config.ref), BATCH)
    gone = planned.source_keys[3]
    (root / gone).unlink()
    manifest, wrote = classify_batch(config, BATCH, progress=False)
    assert wrote
    assert manifest.rows == len(planned.source_keys)
    assert manifest.flags[Flag.MISSING.value] == 1
    rows = {r["source_key"]: r for r in read_catalog(store, manifest).to_pylist()}
    assert rows[gone]["flag"] == "missing"
    assert rows[gone]["reason"] == GONE
    assert rows[gone]["predicted_class"] is None
    assert rows[gone]["confidence"] is None
    assert all(r["flag"] != "missing" for k, r in rows.items() if k != gone)


def test_a_plan_from_an_earlier_run_decides_tta_and_says_so(root: Path) -> None:
    store = LocalStore(root)
    config = _config(root)
    plan_batch(store, config, resolve(store, config.ref), BATCH)  # a killed run, without --tta
    manifest, _ = classify_batch(config.model_copy(update={"tta": True}), BATCH, progress=False)
    assert not manifest.tta
    assert any("planned with tta=False by an earlier run; tta=True ignored" in w for w in manifest.warnings)
