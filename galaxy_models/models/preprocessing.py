"""Preprocessing: what turns a stored crop into model input, saved with every published model.

Training, evaluation and inference all go through ``to_model_input``, so a model sees at
inference exactly what it saw in training: the dataset's per-channel standardisation and, where
the model runs at a smaller side than the stored crop, the same bilinear antialiased resize.

``Preprocessing`` is part of every model card, and reading a card must not load torch (listing
models, exporting catalogs), so the two functions that compute import torch when first called;
their callers have always imported it already.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    import torch

    from galaxy_models.data.manifest import DatasetManifest


class Preprocessing(BaseModel):
    """What turns a stored crop into model input; saved with a model so inference repeats it."""

    crop_size: int = Field(description="side of the stored centre crop, pixels")
    mean: list[float]
    std: list[float]
    image_size: int | None = Field(None, description="side the model sees, if the crop is resized (None: as stored)")

    @property
    def input_size(self) -> int:
        """Side of the square the model sees."""
        return self.image_size or self.crop_size

    @classmethod
    def from_manifest(cls, manifest: DatasetManifest, image_size: int | None = None) -> Preprocessing:
        size = None if image_size in (None, manifest.crop_size) else image_size
        return cls(
            crop_size=manifest.crop_size,
            mean=manifest.normalization.mean,
            std=manifest.normalization.std,
            image_size=size,
        )


def standardize(
    images: torch.Tensor,
    preprocessing: Preprocessing,
    out: torch.Tensor | None = None,
    memory_format: torch.memory_format | None = None,
) -> torch.Tensor:
    """uint8 batch (N, 3, H, W) -> standardised float32, on whatever device the batch is on.

    Three cheap passes (cast, scale, shift; the 1/255 folds into the scale), in ``memory_format``
    (the loaders' batches are channels-last views; per-channel arithmetic is much faster on CPU in
    the contiguous format, the GPU path asks for channels-last). ``out``, a float32 tensor of the
    same shape, is reused if given: on CPU a fresh 4-bytes-per-pixel batch costs more in page faults
    than the arithmetic.
    """
    import torch

    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise TypeError(f"standardize expects a uint8 (N, 3, H, W) batch, got {images.dtype} {tuple(images.shape)}")
    scale, shift = _scale_and_shift(images.device, tuple(preprocessing.mean), tuple(preprocessing.std))
    memory_format = torch.contiguous_format if memory_format is None else memory_format
    x = images.to(torch.float32, memory_format=memory_format) if out is None else out.copy_(images)
    return x.mul_(scale).add_(shift)


@functools.lru_cache(maxsize=16)
def _scale_and_shift(
    device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (1, 3, 1, 1) factors of ``standardize`` on ``device``, made once: building them from Python
    lists copies from pageable memory, which on a GPU waits for every queued kernel, once per batch."""
    import torch

    deviation = torch.tensor(std).view(1, 3, 1, 1)
    scale = 1.0 / (255.0 * deviation)
    shift = -torch.tensor(mean).view(1, 3, 1, 1) / deviation
    return scale.to(device), shift.to(device)


def to_model_input(
    images: torch.Tensor, preprocessing: Preprocessing, device: torch.device, channels_last: bool = False
) -> torch.Tensor:
    """A loader's uint8 batch -> the model's float input on ``device``: copied over (asynchronously
    from pinned memory), standardised there, resized if the preprocessing asks for it (bilinear
    with antialiasing), in the memory format the model runs in."""
    import torch

    x = standardize(
        images.to(device, non_blocking=True),
        preprocessing,
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
    )
    if preprocessing.image_size is not None:
        x = torch.nn.functional.interpolate(
            x, size=(preprocessing.image_size, preprocessing.image_size), mode="bilinear", antialias=True
        )
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
    return x
