"""Agreement of a reduced precision with fp32: the share of a split's images (the validation split by
default) that an engine gives the same class as the fp32 reference does, with the largest difference
in probability (softmax with the card's temperature, as catalogs are written).

The images come from the model's own dataset through the project's loader (no augmentation) and
go through the preprocessing the card records, so the check sees exactly what classification does.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import torch

from galaxy_models.data.manifest import read_manifest
from galaxy_models.inference.engines import Engine
from galaxy_models.inference.probabilities import card_temperature
from galaxy_models.models.preprocessing import to_model_input
from galaxy_models.registry.cards import MIN_PRECISION_AGREEMENT, ModelCard, PrecisionCheck
from galaxy_models.storage import KeyNotFoundError, Store


class NoSplitError(KeyNotFoundError):
    """The model's dataset (or the split asked for) is not in the store."""


def split_images(
    store: Store, card: ModelCard, split: str, *, batch_size: int = 64, limit: int | None = None
) -> Iterator[torch.Tensor]:
    """uint8 batches (N, 3, crop, crop) of ``split`` of the model's dataset, in shard order, at most
    ``limit`` images in all.

    Raises:
        NoSplitError: if the dataset is not in ``store`` or the split is empty.
    """
    from galaxy_models.data.loader import make_loader

    name, version = card.dataset.get("name", ""), card.dataset.get("version", "")
    try:
        manifest = read_manifest(store, name, version)
    except KeyNotFoundError as err:
        raise NoSplitError(f"dataset {name}/{version} of {card.name}/{card.version} is not in {store.uri}") from err
    if not sum(manifest.totals.get(split, {}).values()):
        raise NoSplitError(f"dataset {name}/{version} of {card.name}/{card.version} has no {split} images")
    loader = make_loader(store, manifest, split, batch_size=batch_size, train=False, workers=0, distributed=False)
    left = limit
    for images, _ in loader:
        if left is not None:
            images = images[:left]
            left -= len(images)
        yield images
        if left is not None and left <= 0:
            return


def model_inputs(images: torch.Tensor, card: ModelCard, engine: Engine) -> torch.Tensor:
    return to_model_input(images, card.preprocessing, engine.device, engine.channels_last)


def measure_agreement(
    store: Store, card: ModelCard, candidate: Engine, reference: Engine, *, reference_name: str, split: str = "val"
) -> PrecisionCheck:
    """How often ``candidate`` gives ``split``'s images the class ``reference`` (fp32) gives them.

    Raises:
        NoSplitError: if the split cannot be read from ``store``.
    """
    classes = len(card.class_names)
    temperature = card_temperature(card)
    images = agreeing = 0
    largest = 0.0
    with torch.inference_mode():
        for batch in split_images(store, card, split):
            expected = reference(model_inputs(batch, card, reference))[:, :classes]
            got = candidate(model_inputs(batch, card, candidate))[:, :classes]
            agreeing += int((expected.argmax(dim=1) == got.argmax(dim=1)).sum())
            images += len(batch)
            difference = (torch.softmax(expected / temperature, 1) - torch.softmax(got / temperature, 1)).abs()
            largest = max(largest, float(difference.max()))
    return PrecisionCheck(
        precision=candidate.precision, images=images, agreeing=agreeing, max_probability_difference=largest,
        threshold=MIN_PRECISION_AGREEMENT, reference=reference_name, runtime=runtime_name(candidate),
        checked_at=datetime.now(UTC), split=split,
    )  # fmt: skip


def runtime_name(engine: Engine) -> str:
    if engine.name == "openvino":
        import openvino

        return f"openvino {openvino.__version__} on {engine.device.type}"
    return f"torch {torch.__version__} on {engine.device.type}"
