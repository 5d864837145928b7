"""A corpus of bad survey images, built with Pillow, shared by the image and ingest tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

CORPUS_BATCH = "synthetic-batch-001"  # the incoming batch of the ``trained_store`` fixture that holds the corpus


def jpeg(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def good_rgb(seed: int = 0, size: int = 424) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), "RGB")


def corpus() -> dict[str, tuple[bytes, str | None]]:
    """file name -> (content, expected quarantine reason fragment, or None if it must be accepted)."""
    good = jpeg(good_rgb())
    return {
        "truncated.jpg": (good[: len(good) // 2], "truncated"),
        "empty.jpg": (b"", "empty file"),
        "png_named.jpg": (png(good_rgb(1)), "PNG data in a file named"),
        "text.jpg": (b"this is not an image at all\n" * 10, "not a JPEG or PNG"),
        "tiny.jpg": (jpeg(Image.new("RGB", (1, 1))), "size 1x1"),
        "wrong_size.jpg": (jpeg(good_rgb(2, size=300)), "size 300x300, expected 424x424"),
        "bomb.jpg": (jpeg(Image.new("L", (5000, 5000)), quality=10), "decompression bomb"),
        "cmyk.jpg": (jpeg(good_rgb(3).convert("CMYK")), None),
        "grey.jpg": (jpeg(good_rgb(4).convert("L")), None),
    }
