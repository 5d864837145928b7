"""Per-model precision: ``auto`` serves bf16 or int8 only after it agreed with fp32 on the model's
validation split (checked once, recorded in the card) and falls back to fp32 otherwise, saying so;
the int8 copy is built once, kept beside the weights and built again when they change.

Real engines throughout. The models are the trained tiny model with its linear head rewritten: with
a wide margin between classes (every precision agrees); with every row of the head equal up to 1e-4
of a common weight (fp32 still tells the classes apart, bf16 weights cannot); or with a wide margin
and one pooled feature in the thousands that the head does not read (fp32 and bf16 are unmoved, but
int8's one activation scale for the head's input then rounds every other feature away)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from galaxy_models.inference.classify import _cached_engine, choose_serving_precision, classify_batch, classify_pending
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.inference.engines import cpu_has_bf16, openvino_available
from galaxy_models.inference.precision import ensure_int8_copy
from galaxy_models.inference.quantization import int8_key, read_int8_copy
from galaxy_models.models.serialization import save_checkpoint
from galaxy_models.registry.cards import model_prefix, read_card
from galaxy_models.registry.weights import load_model
from galaxy_models.storage import LocalStore

pytestmark = pytest.mark.skipif(not openvino_available(), reason="the openvino package is not installed")
MODEL = "cs_resnet_tiny"
BATCH = "synthetic-batch-002"


def _rewrite_head(root: Path, mode: str) -> LocalStore:
    """Give the published model new weights (see the module docstring) and return its store."""
    store = LocalStore(root)
    model, card = load_model(store, MODEL)
    generator = torch.Generator().manual_seed(5)
    head = model.head  # type: ignore[union-attr]
    with torch.no_grad():
        spread = torch.randn(head.weight.shape, generator=generator)
        head.weight.copy_(1.0 + 1e-4 * spread if mode == "collapsing" else 50.0 * spread)
        head.bias.zero_()
        if mode == "outlier":  # pooled feature 0 near 1e4 (by the last shortcut's BatchNorm), unread by the head
            model.stages[-1][-1].downsample[-1].bias[0] = 1e4  # type: ignore[index, union-attr]
            head.weight[:, 0] = 0.0
    save_checkpoint(store, f"{model_prefix(card.name, card.version)}/model.pt", model.state_dict())
    return store


def _config(root: Path, **settings: object) -> ClassifyConfig:
    return ClassifyConfig(**{"store": str(root), "model": MODEL, "workers": 2, "engine": "openvino", **settings})


@pytest.mark.skipif(not openvino_available() or not cpu_has_bf16(), reason="this CPU has no native bf16")
def test_bf16_that_disagrees_with_fp32_is_passed_over_for_fp32_saying_so(root: Path) -> None:
    store = _rewrite_head(root, "collapsing")
    card = read_card(store, MODEL)
    said: list[str] = []
    report = classify_pending(_config(root, batches=(BATCH,)), progress=False, log=said.append)
    (note,) = [line for line in said if line.startswith("note:")]
    assert "bf16 gave" in note
    assert "images of the val split the fp32 class" in note
    assert "served in fp32" in note
    check = read_card(store, MODEL).precision_checks["openvino-bf16"]
    assert not check.passed
    assert check.images == card.metrics["val"].samples
    assert check.agreeing < check.images
    assert check.reference == "fp32 (openvino)"
    (result,) = report.batches
    assert not any("bf16" in w for w in result.manifest.warnings)  # the rows are fp32's: nothing to warn of
    # bf16 asked for by name is served, and every catalog it writes says that it failed its check
    twin = root.parent / "twin"
    shutil.copytree(root, twin)
    asked, _ = classify_batch(_config(twin, precision="bf16"), "synthetic-batch-001", progress=False)
    assert any(w.startswith("bf16 gave") and w.endswith("served in bf16 as asked") for w in asked.warnings)


@pytest.mark.skipif(not openvino_available() or not cpu_has_bf16(), reason="this CPU has no native bf16")
def test_bf16_that_agrees_is_chosen_checked_once_and_rechecked_for_new_weights(root: Path) -> None:
    store = _rewrite_head(root, "wide")
    card = read_card(store, MODEL)
    choice = choose_serving_precision(_config(root), card)
    assert (choice.precision, choice.notes) == ("bf16", ())
    recorded = read_card(store, MODEL).precision_checks["openvino-bf16"]
    assert recorded.passed
    assert recorded.agreeing == recorded.images > 0
    assert choose_serving_precision(_config(root), card).precision == "bf16"
    assert (
        read_card(store, MODEL).precision_checks["openvino-bf16"].checked_at == recorded.checked_at
    )  # read, not rerun
    _rewrite_head(root, "collapsing")  # other weights under the same version: the record no longer applies
    _cached_engine.cache_clear()  # a process keeps its engines; a version's weights are never rewritten but here
    assert choose_serving_precision(_config(root), card).precision == "fp32"


def test_int8_copy_is_built_once_checked_recorded_and_rebuilt_when_the_weights_change(root: Path) -> None:
    store = _rewrite_head(root, "wide")
    model, card = load_model(store, MODEL)
    check = ensure_int8_copy(store, card, model, calibration_images=24)
    assert check.passed
    assert check.precision == "int8"
    assert check.images > 0
    recorded = read_card(store, MODEL).precision_checks["openvino-int8"]
    copy = read_int8_copy(store, card)
    assert copy is not None
    assert recorded.artifact_sha256 == copy[1].sha256 == check.artifact_sha256
    assert copy[1].calibration_images == 24
    meta = store.read_bytes(int8_key(card, "int8.json"))
    ensure_int8_copy(store, card, model, calibration_images=24)
    assert store.read_bytes(int8_key(card, "int8.json")) == meta  # a current copy is not built again
    # auto serves the copy; its catalog agrees with fp32's
    choice = choose_serving_precision(_config(root), card)
    assert (choice.precision, choice.notes) == ("int8", ())
    twin = root.parent / "twin"
    shutil.copytree(root, twin)
    int8, _ = classify_batch(_config(root), BATCH, card=card, progress=False)
    fp32, _ = classify_batch(_config(twin, precision="fp32"), BATCH, progress=False)
    # the check promises 99.5% of the validation split's classes, not every row of every batch: int8's
    # rounding may move a galaxy that sits on a class boundary (one of these 30 in fp32 does)
    moved = sum(abs(int8.classes.get(c, 0) - fp32.classes.get(c, 0)) for c in {*int8.classes, *fp32.classes}) / 2
    assert moved <= 1, (int8.classes, fp32.classes)
    assert sum(int8.classes.values()) == sum(fp32.classes.values())
    # new weights: the copy is stale, auto does not serve it, and int8 asked for builds it again
    _rewrite_head(root, "outlier")
    _cached_engine.cache_clear()
    assert read_int8_copy(store, card) is None
    rebuilt = choose_serving_precision(_config(root, precision="int8"), card)
    assert rebuilt.precision == "int8"
    assert rebuilt.warnings[0].startswith("int8 gave")
    assert rebuilt.warnings[0].endswith("served in int8 as asked")
    assert store.read_bytes(int8_key(card, "int8.json")) != meta
    fallback = choose_serving_precision(_config(root), card)  # the new copy failed its check; bf16 passes
    assert fallback.precision == ("bf16" if cpu_has_bf16() else "fp32")
    assert fallback.notes[0].startswith("int8 gave")
    assert fallback.notes[0].endswith("not used")


def test_int8_needs_openvino_on_a_cpu(root: Path) -> None:
    with pytest.raises(ValueError, match="precision 'int8' runs on engine 'openvino' on a CPU, not on engine 'torch'"):
        choose_serving_precision(_config(root, engine="torch", precision="int8"), read_card(LocalStore(root), MODEL))
