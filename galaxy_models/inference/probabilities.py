"""From a model's logits to the probabilities a catalog publishes: the card's temperature, and, as an
option, test-time augmentation (TTA) over the 8 dihedral views of each image.

Temperature: the card's ``calibration`` (fitted on the validation split after training) says by how
much to divide the logits before the softmax; a card without one (published before calibration
existed) gets T = 1, the raw softmax.

TTA: a galaxy has no preferred orientation, so its 4 rotations by 90 degrees and their mirror images
are equally valid pictures of it. With TTA every image is classified in all 8 views, run as one
forward pass of 8N images (one engine call, so the engine's batching pays for it once), and the 8
calibrated probability vectors are averaged. The views are exact pixel permutations of the square
model input (no interpolation), taken after standardisation, which they commute with.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from galaxy_models.registry.cards import ModelCard

DIHEDRAL_VIEWS = 8


def card_temperature(card: ModelCard) -> float:
    """The temperature inference divides the logits by: the card's calibration, or 1 without one."""
    return card.calibration.temperature if card.calibration is not None else 1.0


def dihedral_views(images: torch.Tensor) -> torch.Tensor:
    """(N, C, S, S) -> (8N, C, S, S): the 4 rotations by 90 degrees of the batch, then those of its
    mirror image (left-right flip); view ``v`` of image ``i`` is row ``v * N + i``.

    Raises:
        ValueError: if the batch is not 4-D with square images (a rotation would change the shape).
    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"dihedral views need a (N, C, S, S) batch of square images, got {tuple(images.shape)}")
    mirrored = torch.flip(images, dims=(3,))
    return torch.cat([torch.rot90(view, k, dims=(2, 3)) for view in (images, mirrored) for k in range(4)])


def class_probabilities(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    *,
    temperature: float = 1.0,
    tta: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """softmax(logits / ``temperature``) of a standardised batch (N, 3, S, S) as float32 on the CPU;
    with ``tta``, the mean over the 8 dihedral views of each image, computed in one call of
    ``forward`` on 8N images (an engine, or any module returning logits).

    Raises:
        ValueError: if ``temperature`` is not positive, or (with ``tta``) the images are not square.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    if not tta:
        return torch.softmax(forward(inputs).float().cpu() / temperature, dim=1)
    views = dihedral_views(inputs)
    if channels_last:  # rotations leave arbitrary strides; the engine expects its memory format
        views = views.contiguous(memory_format=torch.channels_last)
    probabilities = torch.softmax(forward(views).float().cpu() / temperature, dim=1)
    return probabilities.view(DIHEDRAL_VIEWS, inputs.shape[0], -1).mean(dim=0)
