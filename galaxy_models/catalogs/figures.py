"""Images for the catalog report (``catalogs.report``): its charts (matplotlib, headless, PNG), galaxy
thumbnails (the classifier's crop, scaled down), and the data: URIs that embed them. Same input, same
bytes: nothing here reads a clock."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from galaxy_models.catalogs.thumbnails import cutout
from galaxy_models.domain import CLASS_NAMES
from galaxy_models.storage import Store

UNIFORM_ENTROPY = math.log(len(CLASS_NAMES))  # nats: a uniform guess over the five classes
MIME_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg"}


def data_uri(data: bytes) -> str | None:
    """``data:image/...;base64,...`` for PNG or JPEG bytes that decode; None for anything else."""
    try:
        with Image.open(io.BytesIO(data), formats=list(MIME_TYPES)) as image:
            kind = MIME_TYPES[str(image.format)]
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


def as_jpeg(data: bytes, quality: int = 90) -> bytes:
    """A PNG or JPEG re-encoded as an RGB JPEG (a Grad-CAM panel: about a quarter of its PNG's bytes);
    bytes that do not decode come back unchanged."""
    try:
        with Image.open(io.BytesIO(data), formats=list(MIME_TYPES)) as image:
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return data
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def thumbnail_jpeg(crop: Image.Image, side: int, quality: int = 85) -> bytes:
    """The crop scaled down to ``side`` pixels square (antialiased), as a JPEG."""
    small = crop.resize((side, side), Image.Resampling.LANCZOS) if crop.size != (side, side) else crop
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def thumbnail(store: Store, key: str, crop_size: int, side: int, max_bytes: int) -> tuple[str | None, str | None]:
    """The classifier's centre crop of the image at ``key`` (``thumbnails.cutout``), scaled to ``side``
    pixels, as a data: URI; or (None, why there is none)."""
    crop, reason = cutout(store, key, crop_size=crop_size, max_bytes=max_bytes)
    if crop is None:
        return None, reason
    uri = data_uri(thumbnail_jpeg(crop, side))
    return uri, None if uri else "thumbnail not decodable"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def class_shares_png(batches: Mapping[str, Mapping[str, float]], reference: Mapping[str, float]) -> bytes:
    """Grouped bars: per class, the training share (grey) and each batch's share of its readable rows."""
    plt = _pyplot()
    series = {"training": reference, **batches}
    width = 0.8 / len(series)
    figure, axes = plt.subplots(figsize=(max(7.0, 1.2 * len(CLASS_NAMES) * len(series) ** 0.5), 3.8))
    x = np.arange(len(CLASS_NAMES))
    for i, (name, shares) in enumerate(series.items()):
        values = [100 * shares.get(label, 0.0) for label in CLASS_NAMES]
        colour = "0.55" if i == 0 else None
        axes.bar(x - 0.4 + width * (i + 0.5), values, width, label=name, color=colour)
    axes.set_xticks(x, CLASS_NAMES)
    axes.set_ylabel("% of readable rows")
    axes.set_title("predicted class per batch against the training split")
    axes.legend(fontsize=8, ncol=min(len(series), 4), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def _integer_counts(axes: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("galaxies")
    axes.grid(axis="y", alpha=0.3)


def confidence_png(confidence: np.ndarray, thresholds: Sequence[float]) -> bytes:
    """Histogram of the top class probability (at least 1/5) with each low-confidence threshold marked."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.0, 3.6))
    axes.hist(confidence, bins=np.linspace(1 / len(CLASS_NAMES), 1.0, 33), color="tab:orange")
    for threshold in sorted(set(thresholds)):
        below = int((confidence < threshold).sum())
        label = f"low-confidence threshold {threshold:g} ({below} below)"
        axes.axvline(threshold, color="tab:red", linestyle="--", linewidth=1.5, label=label)
    axes.set_xlabel("confidence (top class probability)")
    axes.set_title(f"confidence, {len(confidence)} readable rows")
    _integer_counts(axes)
    if thresholds:
        axes.legend(fontsize=8, loc="upper right")
    return _png(figure)


def entropy_png(entropy: np.ndarray) -> bytes:
    """Histogram of the predictive entropy (nats) with the uniform guess, ln 5, marked."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.0, 3.6))
    axes.hist(entropy, bins=np.linspace(0.0, UNIFORM_ENTROPY, 33), color="tab:purple")
    axes.axvline(UNIFORM_ENTROPY, color="black", linestyle="--", linewidth=1.5, label="uniform guess ln 5 = 1.609")
    axes.set_xlabel("entropy of the class probabilities (nats)")
    axes.set_title(f"entropy, {len(entropy)} readable rows")
    _integer_counts(axes)
    axes.legend(fontsize=8, loc="upper left")
    return _png(figure)
