"""What a catalog's probabilities are: softmax(logits / T) with the card's temperature on every engine,
and with test-time augmentation the mean over the 8 dihedral views, in one forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from galaxy_models.calibration import Calibration
from galaxy_models.catalogs.incoming import batch_images
from galaxy_models.catalogs.manifest import read_catalog
from galaxy_models.catalogs.schema import PROBABILITY_COLUMNS
from galaxy_models.cli import app
from galaxy_models.data.images import DEFAULT_MAX_IMAGE_BYTES, crop_image, read_image_bytes
from galaxy_models.inference.classify import _cached_engine, classify_batch, classify_images
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.inference.engines import TorchEngine, openvino_available
from galaxy_models.inference.probabilities import DIHEDRAL_VIEWS, card_temperature, class_probabilities, dihedral_views
from galaxy_models.models.preprocessing import to_model_input
from galaxy_models.registry.cards import ModelCard, read_card
from galaxy_models.registry.weights import load_model
from galaxy_models.storage import LocalStore, Store

MODEL = "cs_resnet_tiny"
BATCH = "synthetic-batch-002"  # 30 clean synthetic images
needs_openvino = pytest.mark.skipif(not openvino_available(), reason="the openvino package is not installed")
ENGINES = ["torch", pytest.param("openvino", marks=needs_openvino)]
# OpenVINO runs in bf16 where the CPU has native bf16: close to eager PyTorch, not equal; against its
# own logits it agrees to rounding (batches of another size may take other kernels)
TOLERANCE = {"torch": 1e-5, "openvino": 1e-3}
BF16_GAP = 0.02


def _with_temperature(root: Path, temperature: float) -> ModelCard:
    """Rewrite the production card's calibration (cards are write-once in real use) and drop the
    engine cache, which holds the card it loaded with the model."""
    card = read_card(LocalStore(root), MODEL)
    card = card.model_copy(update={"calibration": Calibration(temperature=temperature, splits={})})
    (root / "models" / MODEL / card.version / "card.json").write_text(card.model_dump_json(indent=2))
    _cached_engine.cache_clear()
    return card


def _inputs(store: Store, keys: list[str], card: ModelCard) -> torch.Tensor:
    """The model input of ``keys``, built outside classify from the same public pieces."""
    crops = [
        np.asarray(
            crop_image(
                read_image_bytes(store, k, DEFAULT_MAX_IMAGE_BYTES), name=k, crop_size=card.preprocessing.crop_size
            )[0]
        )
        for k in keys
    ]
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
    return to_model_input(images, card.preprocessing, torch.device("cpu"))


def _forward(root: Path, engine: str, card: ModelCard) -> tuple[nn.Module, object]:
    """The eager model, and the forward pass classify ran: the model itself for engine torch, the
    compiled OpenVINO engine (from classify's cache) for openvino."""
    model, _ = load_model(LocalStore(root), MODEL)
    if engine == "torch":
        return model, model
    compiled, _ = _cached_engine(LocalStore(root).uri, MODEL, card.version, "cpu", "openvino", "fp32", False)
    return model, compiled


def _probabilities(table: object) -> np.ndarray:
    return np.stack([table.column(c).to_numpy() for c in PROBABILITY_COLUMNS], axis=1)  # type: ignore[attr-defined]


def _classified(root: Path, **config: object) -> tuple[list[str], np.ndarray, dict[str, object]]:
    settings: dict[str, object] = {"store": str(root), "model": MODEL, "workers": 2, "batches": [BATCH], **config}
    manifest, wrote = classify_batch(ClassifyConfig.model_validate(settings), BATCH, progress=False)
    assert wrote
    table = read_catalog(LocalStore(root), manifest)
    return table.column("source_key").to_pylist(), _probabilities(table), manifest.model_dump()


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_applies_the_cards_temperature(root: Path, engine: str) -> None:
    card = _with_temperature(root, 2.0)
    keys, p, _ = _classified(root, engine=engine, precision="fp32")  # the cached fp32 engine is compared
    model, forward = _forward(root, engine, card)
    inputs = _inputs(LocalStore(root), keys, card)
    with torch.inference_mode():
        logits = forward(inputs).float()  # type: ignore[operator]
        eager = torch.softmax(model(inputs) / 2.0, dim=1).numpy()
    np.testing.assert_allclose(p, torch.softmax(logits / 2.0, dim=1).numpy(), atol=TOLERANCE[engine])
    np.testing.assert_allclose(p, eager, atol=BF16_GAP)  # and close to the model run directly
    raw = torch.softmax(logits, dim=1).numpy()
    assert np.abs(p - raw).max() > 3 * TOLERANCE[engine]  # T = 2 is told apart from no temperature
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_a_card_without_calibration_gives_the_raw_softmax(root: Path) -> None:
    card = read_card(LocalStore(root), MODEL)
    assert card.calibration is None  # published by the fixture without one, like cards older than calibration
    assert card_temperature(card) == 1.0
    keys, p, _ = _classified(root, engine="torch")
    model, _ = load_model(LocalStore(root), MODEL)
    with torch.inference_mode():
        expected = torch.softmax(model(_inputs(LocalStore(root), keys, card)), dim=1).numpy()
    np.testing.assert_allclose(p, expected, atol=1e-5)


def test_the_dihedral_views_are_the_eight_symmetries_of_the_square() -> None:
    images = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    views = dihedral_views(images)
    assert views.shape == (DIHEDRAL_VIEWS * 2, 3, 5, 5)
    torch.testing.assert_close(views[:2], images)  # view 0 is the image itself
    first = {tuple(views[v * 2].flatten().tolist()) for v in range(DIHEDRAL_VIEWS)}
    assert len(first) == DIHEDRAL_VIEWS  # all distinct
    for v in range(DIHEDRAL_VIEWS):  # a group: the views of any view are the same eight
        again = dihedral_views(views[v * 2 : v * 2 + 1])
        assert {tuple(again[w].flatten().tolist()) for w in range(DIHEDRAL_VIEWS)} == first
    with pytest.raises(ValueError, match=r"square images, got \(1, 3, 4, 5\)"):
        dihedral_views(torch.zeros(1, 3, 4, 5))


class _Invariant(nn.Module):
    """Invariant to rotations and mirrors by construction: a 1x1 convolution sees no neighbours, and
    global average pooling forgets where everything was."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, kernel_size=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_tta_of_an_invariant_model_equals_its_plain_prediction(root: Path) -> None:
    """Through classify's own code path (``classify_images``) with an engine around the model."""
    store = LocalStore(root)
    card = read_card(store, MODEL)
    keys = batch_images(store, BATCH)
    engine = TorchEngine(_Invariant(), torch.device("cpu"))
    plain = _probabilities(classify_images(store, BATCH, keys, engine, card, batch_size=8, workers=2))
    tta = _probabilities(classify_images(store, BATCH, keys, engine, card, batch_size=8, workers=2, tta=True))
    np.testing.assert_allclose(tta, plain, atol=1e-6)
    model, _ = load_model(store, MODEL)  # a CNN with strides is not invariant: there TTA changes the answer
    real = TorchEngine(model, torch.device("cpu"))
    plain = _probabilities(classify_images(store, BATCH, keys, real, card, batch_size=8, workers=2))
    tta = _probabilities(classify_images(store, BATCH, keys, real, card, batch_size=8, workers=2, tta=True))
    assert np.abs(tta - plain).max() > 1e-3


def test_tta_runs_one_forward_pass_of_eight_times_the_batch() -> None:
    calls: list[int] = []
    model = _Invariant().eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return model(x)

    with torch.inference_mode():
        p = class_probabilities(forward, torch.randn(6, 3, 16, 16), temperature=1.5, tta=True)
    assert calls == [48]
    assert p.shape == (6, 5)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(6))
    with pytest.raises(ValueError, match="temperature must be positive, got 0.0"):
        class_probabilities(forward, torch.randn(1, 3, 16, 16), temperature=0.0)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_tta_catalog_averages_the_calibrated_views(root: Path, engine: str) -> None:
    """The catalog's probabilities are the mean of softmax(logits / T) over the 8 views; OpenVINO,
    exported with a free batch dimension, takes the 8N batch."""
    card = _with_temperature(root, 1.5)
    keys, p, manifest = _classified(root, engine=engine, precision="fp32", tta=True, batch_size=8)
    assert manifest["tta"] is True
    model, forward = _forward(root, engine, card)
    inputs = _inputs(LocalStore(root), keys, card)
    with torch.inference_mode():
        expected = class_probabilities(forward, inputs, temperature=1.5, tta=True).numpy()  # type: ignore[arg-type]
        eager = class_probabilities(model, inputs, temperature=1.5, tta=True).numpy()
        plain = class_probabilities(forward, inputs, temperature=1.5).numpy()  # type: ignore[arg-type]
    np.testing.assert_allclose(p, expected, atol=TOLERANCE[engine])
    np.testing.assert_allclose(p, eager, atol=BF16_GAP)
    assert np.abs(p - plain).max() > 3 * TOLERANCE[engine]


def test_the_classify_command_takes_tta(root: Path) -> None:
    args = ["classify", "--store", str(root), "--model", MODEL, "--batch", BATCH, "--workers", "2", "--engine", "torch"]
    result = CliRunner().invoke(app, [*args, "--tta", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["batches"][BATCH]["tta"] is True
    assert summary["temperature"] == 1.0
    table = CliRunner().invoke(
        app, ["classify", "--store", str(root), "--model", MODEL, "--batch", "synthetic-batch-001"]
    )
    assert table.exit_code == 0, table.output
    assert "temperature 1.000, one view" in table.output
