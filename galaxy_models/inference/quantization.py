"""INT8 copies of published models for CPU inference: post-training quantisation with OpenVINO's NNCF.

The copy is of the network that returns logits and pooled features (``embeddings.WithFeatures``), so
one copy serves catalogs with and without embeddings. NNCF calibrates its activation ranges on
``calibration_images`` images of the model's own training split, read by the project's loader and
preprocessed as the card says, then bias-corrects the quantised layers. The copy is kept with the model:

    models/<name>/<version>/openvino-int8/model.xml, model.bin   the quantised OpenVINO graph
    models/<name>/<version>/openvino-int8/int8.json              written last: what it was built from

``int8.json`` names the sha256 of the weights it was built from and of its two files: a copy whose
weights have changed since, or whose files do not match (a half-written or mixed copy), is not used
and is built again. Building also checks the copy against fp32 on the validation split and records
the result in the card (``precision_checks["int8"]``), which ``precision`` reads to decide whether
``auto`` may serve the model in int8.
"""

from __future__ import annotations

import hashlib
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn

from galaxy_models.inference.agreement import split_images
from galaxy_models.inference.embeddings import WithFeatures
from galaxy_models.models.preprocessing import to_model_input
from galaxy_models.registry.cards import ModelCard, model_prefix
from galaxy_models.storage import KeyNotFoundError, Store

INT8_FOLDER = "openvino-int8"
DEFAULT_CALIBRATION_IMAGES = 300
MAX_INT8_BYTES = 1024 * 1024 * 1024  # a ResNet50's int8 graph is about 25 MB
MAX_META_BYTES = 64 * 1024


class Int8Copy(BaseModel):
    """What an int8 copy was built from (``int8.json``)."""

    weights_sha256: str = Field(description="sha256 of the model.pt it was quantised from")
    xml_sha256: str
    bin_sha256: str
    outputs: str = "logits, then pooled features"
    calibration_split: str = "train"
    calibration_images: int
    input_size: int
    nncf: str
    openvino: str
    created_at: datetime

    @property
    def sha256(self) -> str:
        """One name for the copy (both of its files)."""
        return hashlib.sha256(f"{self.xml_sha256}:{self.bin_sha256}".encode()).hexdigest()


def int8_key(card: ModelCard, filename: str) -> str:
    return f"{model_prefix(card.name, card.version)}/{INT8_FOLDER}/{filename}"


def weights_sha256(store: Store, card: ModelCard) -> str:
    return hashlib.sha256(store.read_bytes(f"{model_prefix(card.name, card.version)}/model.pt")).hexdigest()


def read_int8_copy(store: Store, card: ModelCard, weights_sha: str | None = None) -> tuple[Any, Int8Copy] | None:
    """The model's int8 graph (an ``openvino.Model``) and its record, or None where it has no usable
    copy: none built, built from other weights, or its files do not match its record. ``weights_sha``:
    the sha256 of the model's weights, where the caller has it already."""
    import openvino as ov

    try:
        meta = Int8Copy.model_validate_json(store.read_bytes(int8_key(card, "int8.json"), max_bytes=MAX_META_BYTES))
        xml = store.read_bytes(int8_key(card, "model.xml"), max_bytes=MAX_INT8_BYTES)
        weights = store.read_bytes(int8_key(card, "model.bin"), max_bytes=MAX_INT8_BYTES)
    except KeyNotFoundError:
        return None
    if (hashlib.sha256(xml).hexdigest(), hashlib.sha256(weights).hexdigest()) != (meta.xml_sha256, meta.bin_sha256):
        return None
    if meta.weights_sha256 != (weights_sha or weights_sha256(store, card)):
        return None
    graph = ov.Core().read_model(model=xml.decode(), weights=ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()))
    return graph, meta


def calibration_inputs(store: Store, card: ModelCard, images: int) -> list[np.ndarray]:
    """``images`` preprocessed training-split images, one (1, 3, S, S) float32 array each (NNCF counts
    calibration samples by item).

    Raises:
        NoSplitError: if the model's dataset is not in ``store``.
    """
    samples: list[np.ndarray] = []
    for batch in split_images(store, card, "train", limit=images):
        x = to_model_input(batch, card.preprocessing, torch.device("cpu"), False).numpy()
        samples += [x[i : i + 1] for i in range(len(x))]
    return samples


def build_int8_copy(
    store: Store, card: ModelCard, model: nn.Module, *, calibration_images: int = DEFAULT_CALIBRATION_IMAGES
) -> tuple[Any, Int8Copy]:
    """Quantise ``model`` (the published network of ``card``) to int8 and keep the copy in the store.

    Raises:
        NoSplitError: if the training split to calibrate on is not in ``store``.
        ValueError: if ``calibration_images`` is below 1.
    """
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    from galaxy_models.inference.engines import to_openvino

    if calibration_images < 1:
        raise ValueError(f"calibration_images must be at least 1, got {calibration_images}")
    samples = calibration_inputs(store, card, calibration_images)
    graph = to_openvino(WithFeatures(model), card.preprocessing.input_size)
    # Activation ranges from the extremes over the calibration images, not NNCF's default averages of
    # per-image extremes: galaxy images differ widely in brightness, and clipping the bright ones moved
    # 14 of 200 validation classes of a real CS_ResNet50 where the extremes moved 8.
    extremes = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    quantised = nncf.quantize(  # NNCF shows its own progress bars
        graph, nncf.Dataset(samples), subset_size=len(samples), preset=nncf.QuantizationPreset.MIXED,
        fast_bias_correction=True, advanced_parameters=extremes,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.xml"
        ov.save_model(quantised, path, compress_to_fp16=False)
        xml, weights = path.read_bytes(), path.with_suffix(".bin").read_bytes()
    meta = Int8Copy(
        weights_sha256=weights_sha256(store, card), xml_sha256=hashlib.sha256(xml).hexdigest(),
        bin_sha256=hashlib.sha256(weights).hexdigest(), calibration_images=len(samples),
        input_size=card.preprocessing.input_size, nncf=nncf.__version__, openvino=ov.__version__,
        created_at=datetime.now(UTC),
    )  # fmt: skip
    store.write_bytes(int8_key(card, "model.xml"), xml)
    store.write_bytes(int8_key(card, "model.bin"), weights)
    store.write_bytes(int8_key(card, "int8.json"), meta.model_dump_json(indent=2).encode())  # last: the copy is whole
    return quantised, meta
