"""Checking and cropping one survey image: bytes in, a centre-cropped RGB JPEG out, or a reason why not.

Rules (from the pipeline's reliability norms): Pillow opens only JPEG and PNG, and the content must
match the file's extension; truncated files are errors (``LOAD_TRUNCATED_IMAGES`` stays off);
oversized images are refused before they are decoded (decompression bombs); grey, palette and CMYK
images are converted to RGB and the conversion is recorded.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from galaxy_models.storage import AccessDeniedError, ObjectTooLargeError, Store, UnsafeObjectError

FORMATS_BY_EXTENSION = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
DEFAULT_MAX_PIXELS = 4096 * 4096
# Bytes read of one image file at most: a survey cut-out is tens of kilobytes; anything far larger is
# refused unread (and a link to /dev/zero can never be read until memory runs out).
DEFAULT_MAX_IMAGE_BYTES = 32 * 1024 * 1024


class ImageRejected(ValueError):
    """An image that cannot enter a dataset; ``reason`` says why, for the quarantine list."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PreparedImage:
    """A cropped image ready for a shard, with what is needed for normalisation statistics."""

    jpeg: bytes
    source_mode: str  # the mode before conversion: "RGB", "L", "CMYK", ...
    channel_mean: tuple[float, float, float]  # of the crop, in [0, 1]
    channel_sq_mean: tuple[float, float, float]  # mean of squares, for the variance


def read_image_bytes(store: Store, key: str, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> bytes:
    """The bytes of one image file, or ``ImageRejected`` saying why it was not read: over the size
    cap, not a regular file (a symbolic link, FIFO or device in a local store), or access to it denied
    (S3 ``403``; other storage errors, such as an unreachable store, still raise).

    Raises:
        KeyNotFoundError: if the file is gone (the caller decides what a vanished image means).
    """
    try:
        return store.read_bytes(key, max_bytes=max_bytes)
    except ObjectTooLargeError:
        raise ImageRejected(f"file larger than the {max_bytes}-byte cap; not read") from None
    except (UnsafeObjectError, AccessDeniedError) as err:
        raise ImageRejected(f"refused: {err}") from None


_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB. 16-bit (and 32-bit integer) grey is scaled to 8 bits over the full 16-bit range
    (v / 257), not clipped at 255 as Pillow's own conversion would; floating-point images and integers
    beyond 16 bits are refused, since no scale is known for them.

    Raises:
        ImageRejected: for a mode with no known 8-bit scale.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_GREY:
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageRejected(f"{image.mode} image with values outside 0-65535: no known 8-bit scale")
        grey = np.rint(values.astype(np.float32) / 257.0).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "F":
        raise ImageRejected("floating-point image (mode F): no known 8-bit scale; store 8- or 16-bit images")
    return image.convert("RGB")


def _extension(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot >= 0 else ""


def prepare_image(
    data: bytes,
    *,
    name: str,
    crop_size: int = 224,
    expected_size: int | None = 424,
    quality: int = 95,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> PreparedImage:
    """Validate an image file's bytes and return its centre crop as an RGB JPEG.

    Args:
        data: the file's content.
        name: the file name (its extension must agree with the content).
        crop_size: side of the square centre crop (224 in the paper).
        expected_size: the square side every image must have (424 for SDSS/GZ2), None for any
            size at least ``crop_size``.
        quality: JPEG quality of the stored crop.
        max_pixels: larger images are refused unread.

    Raises:
        ImageRejected: with a reason fit for a quarantine record.
    """
    crop, source_mode = crop_image(
        data, name=name, crop_size=crop_size, expected_size=expected_size, max_pixels=max_pixels
    )
    pixels = np.asarray(crop, dtype=np.float32) / 255.0
    buffer = io.BytesIO()
    crop.save(buffer, format="JPEG", quality=quality)
    return PreparedImage(
        jpeg=buffer.getvalue(),
        source_mode=source_mode,
        channel_mean=tuple(float(v) for v in pixels.mean(axis=(0, 1))),  # type: ignore[arg-type]
        channel_sq_mean=tuple(float(v) for v in np.square(pixels).mean(axis=(0, 1))),  # type: ignore[arg-type]
    )


def check_header(
    image: Image.Image, expected_format: str, name: str, crop_size: int, expected_size: int | None, max_pixels: int
) -> None:
    """The checks an opened (not yet decoded) image must pass: its format is the one its file name
    says, it is not a decompression bomb, it has the expected size and room for the crop.

    Raises:
        ImageRejected: saying which check failed.
    """
    if image.format != expected_format:
        raise ImageRejected(f"{image.format} data in a file named {name!r}")
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(f"decompression bomb: {width}x{height} pixels exceeds {max_pixels}")
    if expected_size is not None and (width, height) != (expected_size, expected_size):
        raise ImageRejected(f"size {width}x{height}, expected {expected_size}x{expected_size}")
    if width < crop_size or height < crop_size:
        raise ImageRejected(f"size {width}x{height} is smaller than the {crop_size}x{crop_size} crop")


def crop_image(
    data: bytes,
    *,
    name: str,
    crop_size: int = 224,
    expected_size: int | None = 424,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[Image.Image, str]:
    """The checks of ``prepare_image`` and the RGB centre crop, not re-encoded: (crop, source mode).

    Raises:
        ImageRejected: with a reason fit for a quarantine record or a catalog flag.
    """
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    expected_format = FORMATS_BY_EXTENSION.get(_extension(name))
    if expected_format is None:
        raise ImageRejected(f"unsupported file type {_extension(name) or '(no extension)'!r}; expected .jpg or .png")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=["JPEG", "PNG"])
        except UnidentifiedImageError:
            raise ImageRejected("not a JPEG or PNG image") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageRejected(f"decompression bomb: {err}") from None
        check_header(image, expected_format, name, crop_size, expected_size, max_pixels)
        width, height = image.size
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageRejected(f"corrupt or truncated image: {err}") from None
    source_mode = image.mode
    rgb = to_rgb(image)
    left, top = (width - crop_size) // 2, (height - crop_size) // 2
    crop = rgb.crop((left, top, left + crop_size, top + crop_size))
    return crop, source_mode
