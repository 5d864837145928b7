"""Which numeric precision serves a model, decided per model and checked before it is trusted.

A reduced precision changes a few answers; how many depends on the weights (one CS_ResNet50 kept
every class in bf16, another changed 7 of 512). So ``auto`` serves a model in the fastest precision
whose classes agree with fp32 on at least ``MIN_PRECISION_AGREEMENT`` of its validation split:

- on a CPU with OpenVINO: int8 where the model has a quantised copy (``quantization``; built by
  ``galaxy-pipeline models quantize`` or by a run asking for ``--precision int8``), else bf16 where
  the CPU has native bf16, else fp32;
- on a GPU (eager PyTorch): bf16 autocast, else fp32;
- on a CPU without OpenVINO: fp32.

Each check runs once per model, runtime and precision (and per int8 copy), and is recorded in the
model's card (``precision_checks``), so later runs only read it. A precision that fails its check,
or cannot be checked (the model's dataset is not in the store), is passed over with a note saying
why, which classification logs. A precision asked for by name is served as asked; if its recorded
check failed, every catalog it writes says so in its warnings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from galaxy_models.inference.agreement import NoSplitError, measure_agreement
from galaxy_models.inference.config import EngineName, PrecisionName
from galaxy_models.inference.embeddings import WithFeatures
from galaxy_models.inference.engines import Engine, OpenVINOEngine, cpu_has_bf16, create_engine, engine_for
from galaxy_models.inference.quantization import (
    DEFAULT_CALIBRATION_IMAGES,
    build_int8_copy,
    read_int8_copy,
    weights_sha256,
)
from galaxy_models.registry.cards import ModelCard, PrecisionCheck, read_card, record_precision_check
from galaxy_models.storage import Store

EngineBuilder = Callable[[str], Engine]  # precision -> the engine serving the model in it


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # fp32, bf16 or int8
    engine: str  # torch or openvino
    notes: tuple[str, ...] = ()  # why auto passed a faster precision over (its rows are then the safer one's)
    warnings: tuple[str, ...] = ()  # a precision named explicitly whose check failed: its catalogs must say so


def check_key(engine: str, device: torch.device, precision: str) -> str:
    """The card's name for a check: ``openvino-bf16``, ``openvino-int8``, ``torch-cuda-bf16``."""
    return f"{engine}-{precision}" if engine == "openvino" else f"{engine}-{device.type}-{precision}"


def recorded_check(card: ModelCard, key: str, artifact_sha256: str | None = None) -> PrecisionCheck | None:
    check = card.precision_checks.get(key)
    if check is None or check.artifact_sha256 != artifact_sha256:
        return None
    return check


def run_check(
    store: Store, card: ModelCard, key: str, build: EngineBuilder, precision: str, weights: str
) -> PrecisionCheck:
    """Compare ``precision`` with fp32 on the validation split and record the result in the card,
    naming the weights checked (``weights``: their sha256).

    Raises:
        NoSplitError: if the validation split is not in ``store``.
    """
    reference = build("fp32")
    check = measure_agreement(
        store, card, build(precision), reference, reference_name=f"fp32 ({reference.name})", split="val"
    )
    return _record(store, card, key, check.model_copy(update={"artifact_sha256": weights}))


def _record(store: Store, card: ModelCard, key: str, check: PrecisionCheck) -> PrecisionCheck:
    record_precision_check(store, card, key, check)
    return check


def ensure_int8_copy(
    store: Store, card: ModelCard, model: nn.Module, *, calibration_images: int = DEFAULT_CALIBRATION_IMAGES
) -> PrecisionCheck:
    """The model's int8 copy, built (and checked against fp32 on the validation split, the check
    recorded in the card) unless a usable one exists with its check recorded. Returns the check.

    Raises:
        NoSplitError: if the training split (to calibrate on) or the validation split is not in ``store``.
    """
    found = read_int8_copy(store, card)
    if found is None:
        graph, meta = build_int8_copy(store, card, model, calibration_images=calibration_images)
    else:
        graph, meta = found
    key = check_key("openvino", torch.device("cpu"), "int8")
    check = recorded_check(read_card(store, card.name, card.version), key, meta.sha256)
    if check is not None:
        return check
    size = card.preprocessing.input_size
    candidate = OpenVINOEngine(graph, size, precision="int8")
    reference = OpenVINOEngine(model, size, precision="fp32")
    check = measure_agreement(store, card, candidate, reference, reference_name="fp32 (openvino)", split="val")
    return _record(store, card, key, check.model_copy(update={"artifact_sha256": meta.sha256}))


def choose_precision(
    store: Store,
    card: ModelCard,
    model: Callable[[], nn.Module],
    device: torch.device,
    engine: EngineName,
    requested: PrecisionName,
    build: EngineBuilder,
) -> PrecisionChoice:
    """The precision that serves ``card``'s model on ``device`` (see the module docstring). ``model``
    loads the published network (needed only to build an int8 copy); ``build`` makes the engine for a
    precision (a cached one, so that the chosen engine is built once).

    Raises:
        ValueError: for int8 or bf16 where the engine cannot run it.
        NoSplitError: for ``int8`` asked for by name, when the model has no copy and its dataset is
            not in the store to calibrate on.
    """
    name = engine_for(device, engine)
    if requested == "int8":
        if name != "openvino":
            raise ValueError(f"precision 'int8' runs on engine 'openvino' on a CPU, not on engine {name!r}")
        check = ensure_int8_copy(store, card, model())
        return _as_asked("int8", name, check)
    if requested == "bf16":
        key = check_key(name, device, "bf16")
        current = read_card(store, card.name, card.version)
        return _as_asked("bf16", name, recorded_check(current, key, weights_sha256(store, card)))
    if requested != "auto":
        return PrecisionChoice(requested, name)
    candidates = _candidates(store, card, device, name)
    notes: list[str] = []
    for precision, artifact in candidates:
        key = check_key(name, device, precision)
        recorded = recorded_check(read_card(store, card.name, card.version), key, artifact)
        if recorded is not None:
            check = recorded
        else:
            try:
                if precision == "int8":  # a copy without its check: checked now
                    check = ensure_int8_copy(store, card, model())
                else:
                    check = run_check(store, card, key, build, precision, artifact)
            except NoSplitError as err:
                notes.append(f"{precision} not checked against fp32 ({err}); not used")
                continue
        if check.passed:
            return PrecisionChoice(precision, name, tuple(notes))
        notes.append(f"{check.describe()}; not used")
    if candidates:
        notes[-1] += f"; {card.name}/{card.version} is served in fp32"
    return PrecisionChoice("fp32", name, tuple(notes))


def _as_asked(precision: str, engine: str, check: PrecisionCheck | None) -> PrecisionChoice:
    if check is None or check.passed:
        return PrecisionChoice(precision, engine)
    return PrecisionChoice(precision, engine, warnings=(f"{check.describe()}; served in {precision} as asked",))


def _candidates(store: Store, card: ModelCard, device: torch.device, engine: str) -> list[tuple[str, str]]:
    """Reduced precisions worth checking, fastest first, each with the sha256 of what its check must
    have checked: the int8 copy, or the weights."""
    if engine == "torch" and device.type != "cuda":
        return []
    weights = weights_sha256(store, card)  # read and hashed once: a ResNet50's weights are about 100 MB
    if engine == "torch":
        return [("bf16", weights)]
    found: list[tuple[str, str]] = []
    copy = read_int8_copy(store, card, weights)
    if copy is not None:
        found.append(("int8", copy[1].sha256))
    if cpu_has_bf16():
        found.append(("bf16", weights))
    return found


def serving_engine(
    store: Store, card: ModelCard, model: nn.Module, device: torch.device, engine: str, precision: str, *, outputs: int
) -> Engine:
    """The engine for a chosen precision. ``model``: the network to serve (with ``embeddings.WithFeatures``
    when features are wanted); ``outputs``: the columns it returns (an int8 copy returns logits and features,
    and keeps only these). An int8 copy missing since the choice is built again."""
    if precision == "int8":
        found = read_int8_copy(store, card)
        if found is None:
            ensure_int8_copy(store, card, model.model if isinstance(model, WithFeatures) else model)
            found = read_int8_copy(store, card)
        if found is None:
            raise RuntimeError(f"the int8 copy of {card.name}/{card.version} could not be read back after building it")
        return OpenVINOEngine(found[0], card.preprocessing.input_size, precision="int8", outputs=outputs)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"unknown precision {precision!r}; known: fp32, bf16, int8")
    return create_engine(model, device, card.preprocessing.input_size, engine, precision)  # type: ignore[arg-type]
