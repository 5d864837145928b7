"""Where the model looked: Grad-CAM and CBAM spatial-attention panels for single galaxies, from images,
from store keys, by galaxy ID (library and CLI), and one per validation class in a published model's card."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from badimages import CORPUS_BATCH, corpus
from clicheck import mistake
from PIL import Image
from typer.testing import CliRunner

from galaxy_models.catalogs.incoming import batch_images
from galaxy_models.catalogs.manifest import read_catalog, read_catalog_manifest
from galaxy_models.cli import app
from galaxy_models.data.manifest import read_manifest
from galaxy_models.inference.classify import classify_batch
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.inference.explain import (
    GalaxyNotFoundError,
    explain_images,
    explain_keys,
    find_galaxy,
    panel_png,
    validation_panels,
)
from galaxy_models.models.architectures import create_model
from galaxy_models.models.serialization import load_checkpoint
from galaxy_models.registry.cards import ModelCard, model_prefix, read_card
from galaxy_models.storage import LocalStore

MODEL = "cs_resnet_tiny"
CLEAN_BATCH = "synthetic-batch-002"  # no bad images in it
runner = CliRunner()


def _card(root: Path) -> ModelCard:
    return read_card(LocalStore(root), MODEL)


def _blobs(n: int, size: int) -> np.ndarray:
    """``n`` RGB cut-outs of a bright elliptical blob, each off centre in its own direction."""
    y, x = np.mgrid[:size, :size] / size - 0.5
    images = []
    for i in range(n):
        dx, dy = 0.2 * np.cos(2 * np.pi * i / n), 0.2 * np.sin(2 * np.pi * i / n)
        blob = np.exp(-(((x - dx) / 0.12) ** 2 + ((y - dy) / 0.06) ** 2))
        images.append(np.repeat((255 * blob)[..., None], 3, axis=2).astype(np.uint8))
    return np.stack(images)


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


@pytest.mark.parametrize("architecture", ["cs_resnet_tiny", "resnet_tiny"])
def test_explanations_and_panels_for_cbam_and_plain_networks(trained_store: Path, architecture: str) -> None:
    torch.manual_seed(0)
    model = create_model(architecture).eval()
    card = _card(trained_store)
    size = card.preprocessing.crop_size
    images = _blobs(3, size)
    explanations = explain_images(model, card, images, galaxy_ids=["a", "b", "c"], batch_size=2)
    assert [e.galaxy_id for e in explanations] == ["a", "b", "c"]
    for explanation in explanations:
        assert explanation.gradcam.shape == (size, size)
        assert np.isfinite(explanation.gradcam).all()
        assert explanation.gradcam.min() >= 0
        assert np.ptp(explanation.gradcam) > 0
        assert explanation.class_name == card.class_names[explanation.predicted_class]
        assert 0.2 <= explanation.probability <= 1  # the top of 5 classes
    cbam = architecture.startswith("cs_")
    attention = explanations[0].attention
    assert [a.stage for a in attention] == ([3, 4] if cbam else [])
    for gate in attention:
        assert gate.weights.shape == (size, size)
        assert 0 <= gate.weights.min() <= gate.weights.max() <= 1
    side = card.preprocessing.input_size
    assert [a.grid for a in attention] == ([(side // 16,) * 2, (side // 32,) * 2] if cbam else [])
    assert all(p.grad is None for p in model.parameters())  # Grad-CAM leaves the model as it was
    width, height = _png_size(panel_png(explanations[0], "test galaxy"))
    assert 150 <= height <= 400
    assert (width > 4 * 160) == cbam  # 160 px pictures: 4 with CBAM, 2 without
    again = explain_images(model, card, [Image.fromarray(i) for i in images[:1]])  # PIL input, default ids
    assert again[0].galaxy_id == "0"
    np.testing.assert_allclose(again[0].gradcam, explanations[0].gradcam, rtol=1e-4, atol=1e-6)


def test_images_of_another_shape_are_refused(trained_store: Path) -> None:
    model = create_model(MODEL).eval()
    with pytest.raises(ValueError, match=r"image 1 is uint8 \(32, 32\)"):
        explain_images(model, _card(trained_store), [np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8)])


def test_explain_keys_draws_readable_images_and_leaves_out_the_rest(trained_store: Path) -> None:
    store = LocalStore(trained_store)
    keys = [*batch_images(store, CORPUS_BATCH), f"incoming/{CLEAN_BATCH}/gone.jpg"]
    panels = explain_keys(store, _card(trained_store), keys)
    rejected = {f"incoming/{CORPUS_BATCH}/{name}" for name, (_, reason) in corpus().items() if reason}
    assert set(panels) == set(keys) - rejected - {f"incoming/{CLEAN_BATCH}/gone.jpg"}
    assert len(panels) > 30
    for png in panels.values():
        assert min(_png_size(png)) > 100
    assert explain_keys(store, _card(trained_store), []) == {}


def test_find_galaxy_prefers_the_catalog_then_incoming(root: Path) -> None:
    store = LocalStore(root)
    card = _card(root)
    config = ClassifyConfig(store=str(root), model=MODEL, workers=2, engine="torch", batches=(CLEAN_BATCH,))
    manifest, _ = classify_batch(config, CLEAN_BATCH, progress=False)
    galaxy = read_catalog(store, manifest).column("galaxy_id").to_pylist()[0]
    catalogued = f"incoming/{CLEAN_BATCH}/{galaxy}.jpg"
    (root / "incoming" / "a-copy").mkdir()
    shutil.copy(root / catalogued, root / "incoming" / "a-copy" / f"{galaxy}.JPG")  # found first among batches
    assert read_catalog_manifest(store, CLEAN_BATCH, card.version) is not None
    assert find_galaxy(store, card, galaxy) == catalogued
    other_version = card.model_copy(update={"version": "no-catalogs"})
    assert find_galaxy(store, other_version, galaxy) == f"incoming/a-copy/{galaxy}.JPG"
    with pytest.raises(GalaxyNotFoundError, match=rf"'nowhere-42' is in no catalog of {MODEL}/.* {store.uri}"):
        find_galaxy(store, card, "nowhere-42")
    with pytest.raises(ValueError, match=r"invalid galaxy id '\.\./x'"):
        find_galaxy(store, card, "../x")


def test_cli_writes_the_panel_and_reports_mistakes_in_one_line(
    trained_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    galaxy = batch_images(LocalStore(trained_store), CLEAN_BATCH)[0].rsplit("/", 1)[1].removesuffix(".jpg")
    monkeypatch.chdir(tmp_path)
    base = ["explain", "--store", str(trained_store), "--model", MODEL]
    result = runner.invoke(app, [*base, "--galaxy", galaxy])
    assert result.exit_code == 0, result.output
    assert f"galaxy {galaxy}: " in result.stdout
    assert "p = " in result.stdout
    assert f"-> {Path.cwd() / f'{galaxy}-explain.png'}" in result.stdout
    assert _png_size((tmp_path / f"{galaxy}-explain.png").read_bytes())[0] > 300
    assert runner.invoke(app, [*base, "--galaxy", galaxy, "--out", "sub.png"]).exit_code == 0
    assert (tmp_path / "sub.png").is_file()
    mistake([*base, "--galaxy", "../etc"], "invalid galaxy id '../etc'")
    mistake([*base, "--galaxy", "nowhere-42"], "'nowhere-42'", "no catalog", trained_store.as_uri())
    mistake([*base, "--galaxy", galaxy, "--out", str(tmp_path)], "is a directory")
    mistake([*base, "--galaxy", galaxy, "--out", "panel.jpg"], "not a .png")
    mistake([*base[:-1], "nope", "--galaxy", galaxy], "no model 'nope'")


def test_a_published_card_has_one_panel_per_class_in_val(trained_store: Path) -> None:
    store = LocalStore(trained_store)
    card = _card(trained_store)
    manifest = read_manifest(store, card.dataset["name"], card.dataset["version"])
    present = [card.class_names[int(k)] for k, n in manifest.totals["val"].items() if n > 0]
    assert len(present) >= 2
    panels = sorted(f for f in card.figures if f.startswith("explain_"))
    assert panels == sorted(f"explain_{name}.png" for name in present)
    for name in panels:
        _png_size(store.read_bytes(f"{model_prefix(card.name, card.version)}/{name}"))
    weights = load_checkpoint(store, f"{model_prefix(card.name, card.version)}/model.pt")
    first = next(k for k, n in manifest.totals["val"].items() if n > 0)
    without = manifest.model_copy(update={"totals": {**manifest.totals, "val": {**manifest.totals["val"], first: 0}}})
    assert set(validation_panels(store, card, weights, without)) == {f"explain_{n}.png" for n in present[1:]}
