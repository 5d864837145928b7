"""Training augmentation as the paper names it (rotation, flips, brightness and contrast), in 8 bits.

Rotation and flips are one OpenCV resampling of the (H, W, 3) uint8 image; brightness and contrast
are one 256-entry lookup table. No float image is made: standardisation happens later, on the
device that trains (``models.preprocessing``).
"""

from __future__ import annotations

import math
import random
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, Field

# OpenCV runs sequentially in this process and its DataLoader workers: the workers are the
# parallelism, a 224x224 image is too small to split across threads, and a worker that resizes a
# thread pool inherited through fork() deadlocks.
cv2.setNumThreads(1)


class Augmentation(BaseModel):
    """Training augmentation strengths (the paper names the kinds, not the amounts)."""

    rotation: bool = Field(True, description="uniform random rotation in [0, 360) degrees")
    interpolation: Literal["nearest", "bilinear"] = Field(
        "nearest", description="rotation resampling; nearest is torchvision's default and 13x cheaper"
    )
    flips: bool = Field(True, description="random horizontal and vertical flips")
    brightness: float = Field(0.2, ge=0.0, lt=1.0, description="factor drawn from [1-b, 1+b]")
    contrast: float = Field(0.2, ge=0.0, lt=1.0, description="factor drawn from [1-c, 1+c]")


def orient(pixels: np.ndarray, augmentation: Augmentation, rng: random.Random) -> np.ndarray:
    """Random rotation and flips of one (H, W, 3) uint8 image, as a single OpenCV resampling pass.

    A uniform rotation followed by random horizontal and vertical flips is the same distribution as
    one uniform rotation of an image mirrored with probability 1/2 (a vertical flip is a horizontal
    one turned by 180 degrees), so rotation and mirror become one affine map. The map turns about the
    image centre with pixel centres on integer coordinates: quarter turns and the mirror are exact
    pixel permutations. Corners that rotate in from outside the image are black (the sky is dark).
    Returns a new array, or ``pixels`` itself when nothing moves.
    """
    mirror = augmentation.flips and rng.random() < 0.5
    if not augmentation.rotation:
        flip_up_down = augmentation.flips and rng.random() < 0.5
        if mirror or flip_up_down:  # OpenCV's codes: 1 left-right, 0 up-down, -1 both
            return cv2.flip(pixels, -1 if mirror and flip_up_down else int(mirror))
        return pixels
    angle = math.radians(rng.uniform(0.0, 360.0))
    cos, sin = math.cos(angle), math.sin(angle)
    sx = -1.0 if mirror else 1.0
    height, width = pixels.shape[:2]
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    # output (x, y) -> source: centre, rotate, mirror, back
    a, b, d, e = sx * cos, sx * sin, -sin, cos
    matrix = np.array([[a, b, cx - a * cx - b * cy], [d, e, cy - d * cx - e * cy]])
    resample = cv2.INTER_NEAREST if augmentation.interpolation == "nearest" else cv2.INTER_LINEAR
    return cv2.warpAffine(
        pixels, matrix, (width, height), flags=resample | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT
    )


_LEVELS = np.arange(256, dtype=np.float64)
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's and torchvision's grey


def colour_table(pixels: np.ndarray, augmentation: Augmentation, rng: random.Random) -> np.ndarray | None:
    """A random brightness-then-contrast change of one (H, W, 3) uint8 image, as a 256-entry table.

    torchvision's ``ColorJitter`` maths: brightness scales by b and clips; contrast blends with the
    image's mean grey level by c. Once that mean is known both act on each pixel value alone, so
    the pair is one lookup table (``cv2.LUT``: no float image). The mean is b times the grey mean of
    the original: saturated pixels are not clipped before averaging, which moves it by well under a
    grey level on GZ2 crops. ``None`` when both strengths are zero.
    """
    if augmentation.brightness == 0.0 and augmentation.contrast == 0.0:
        return None
    b = rng.uniform(1.0 - augmentation.brightness, 1.0 + augmentation.brightness)
    c = rng.uniform(1.0 - augmentation.contrast, 1.0 + augmentation.contrast)
    red, green, blue, _ = cv2.mean(pixels)
    grey = min(255.0, b * (_LUMA[0] * red + _LUMA[1] * green + _LUMA[2] * blue))
    levels = np.minimum(_LEVELS * b, 255.0)
    levels -= grey
    levels *= c
    levels += grey + 0.5  # then truncation rounds
    return np.clip(levels, 0.0, 255.0).astype(np.uint8)


def recolour(pixels: np.ndarray, augmentation: Augmentation, rng: random.Random) -> np.ndarray:
    """``colour_table`` applied: a new (H, W, 3) uint8 image."""
    table = colour_table(pixels, augmentation, rng)
    return pixels.copy() if table is None else cv2.LUT(pixels, table)
