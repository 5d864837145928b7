"""Reading a part's images for classification: store keys -> checked, centre-cropped RGB crops, or why not.

Every key gets a ``Decoded``: its crop as a uint8 (3, crop, crop) tensor, or the reason it has none (a
bad file name, a file refused or unreadable, exactly as ingest words it; a file gone since the batch was
planned is also flagged ``missing``). Threads read the files ahead of the model, a bounded window of
about two batches, so memory stays flat however many keys a part has. Two decoders give the same rows:

- ``pillow``: the threads check and crop each file with ``data.images.crop_image`` (Pillow releases the
  GIL); the crops are on the CPU.
- ``torchvision``: the threads read the bytes and only the header (Pillow opens lazily) and check it as
  ``crop_image`` would; 8-bit baseline RGB JPEGs that pass, whole up to their end marker, are decoded in
  one call per batch by ``torchvision.io.decode_jpeg`` on the engine's device (nvJPEG on a GPU) and
  cropped there by slicing. Everything else (PNG, grey, CMYK, progressive, truncated or odd files), and
  any image the device decoder refuses, goes through the Pillow path, so its row and reason are the same.
  On a CPU the pixels are Pillow's, bit for bit (both are libjpeg-turbo with the same IDCT and chroma
  upsampling); nvJPEG has its own, so on a GPU they may differ from Pillow's by a level or two.
"""

from __future__ import annotations

import functools
import io
import itertools
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from galaxy_models.data.images import DEFAULT_MAX_PIXELS, ImageRejected, check_header, crop_image, read_image_bytes
from galaxy_models.domain import galaxy_id_from_key, is_name
from galaxy_models.inference.config import DecodeName
from galaxy_models.storage import KeyNotFoundError, Store

GONE = "the image was in the batch when its catalog was planned and has since gone from the store"
EXPECTED_SIZE = 424  # the side every survey cut-out has (SDSS/GZ2), checked by both decoders
_EOI = b"\xff\xd9"  # a JPEG's end marker; a truncated file lacks it: Pillow refuses it, a decoder may pad it

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Decoded:
    key: str
    pixels: torch.Tensor | None  # (3, crop, crop) uint8: on the CPU (Pillow) or the decoding device
    reason: str | None
    missing: bool = False


@dataclass(frozen=True)
class _Jpeg:
    """A file read and checked by its header, for the device decoder."""

    key: str
    data: bytes
    encoded: torch.Tensor  # the same bytes, as decode_jpeg takes them
    width: int
    height: int


def decode_device(decode: DecodeName, engine_device: torch.device) -> torch.device | None:
    """Where JPEGs are decoded: None for Pillow in the reading threads, else the engine's device
    (``auto``: torchvision when the engine runs on a GPU)."""
    if decode == "pillow" or (decode == "auto" and engine_device.type != "cuda"):
        return None
    return engine_device


def decoded_batches(
    store: Store,
    keys: Iterable[str],
    crop_size: int,
    batch_size: int,
    workers: int,
    max_bytes: int,
    device: torch.device | None = None,
) -> Iterator[list[Decoded]]:
    """``Decoded`` for every key, in key order, ``batch_size`` at a time: read by ``workers`` threads, at
    most about two batches ahead, while the caller works on the batch before; JPEGs decoded on ``device``
    (None: all by Pillow, in the threads)."""
    ahead = 2 * batch_size + workers
    with ThreadPoolExecutor(max_workers=workers) as pool:
        if device is None:
            decoded = functools.partial(decode, store, crop_size=crop_size, max_bytes=max_bytes)
            yield from _chunks(read_ahead(pool, decoded, keys, ahead), batch_size)
            return
        read = functools.partial(_read_for_device, store, crop_size=crop_size, max_bytes=max_bytes)
        for batch in _chunks(read_ahead(pool, read, keys, ahead), batch_size):
            yield decode_on_device(batch, device, crop_size)


def decode(store: Store, key: str, crop_size: int, max_bytes: int) -> Decoded:
    """One image read, checked and cropped by Pillow, or the reason it has no crop."""
    data = _read(store, key, max_bytes)
    return data if isinstance(data, Decoded) else _pillow(key, data, crop_size)


def decode_on_device(batch: list[Decoded | _Jpeg], device: torch.device, crop_size: int) -> list[Decoded]:
    """The JPEGs of a batch decoded on ``device`` in one call and centre-cropped there; what the
    decoder refuses (or decodes to another size than its header says) is decoded by Pillow."""
    jpegs = [item for item in batch if isinstance(item, _Jpeg)]
    images = iter(decode_jpegs([j.encoded for j in jpegs], device))
    return [item if isinstance(item, Decoded) else _crop(item, next(images), crop_size) for item in batch]


def decode_jpegs(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """RGB uint8 (3, H, W) images on ``device``, decoded in one call; if that fails, one by one, with
    None for each image the decoder refuses."""
    if not encoded:
        return []
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        return [_decode_one(e, device) for e in encoded]


def _decode_one(encoded: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


def stack_crops(crops: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """(N, 3, S, S) uint8: crops all on one device stacked there (Pillow's go over in one copy later);
    a batch mixing the device's crops with Pillow's, on ``device``."""
    if all(c.device == crops[0].device for c in crops):
        return torch.stack(crops)
    return torch.stack([c.to(device) for c in crops])


def read_ahead(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[R]:
    """``fn`` over ``items`` in ``pool``, results in order, at most ``ahead`` of them running or waiting
    to be taken (``Executor.map`` would submit every item at once and hold all their results)."""
    todo = iter(items)
    running: deque[Future[R]] = deque(pool.submit(fn, item) for item in itertools.islice(todo, ahead))
    try:
        while running:
            result = running.popleft().result()
            running.extend(pool.submit(fn, item) for item in itertools.islice(todo, 1))
            yield result
    finally:  # the caller stopped early (an error): the reads not started are not wanted
        for future in running:
            future.cancel()


def _chunks(items: Iterator[T], size: int) -> Iterator[list[T]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _read(store: Store, key: str, max_bytes: int) -> bytes | Decoded:
    """The file's bytes, or the row of one that cannot be read: a bad name, refused, or gone."""
    name = key.rsplit("/", 1)[-1]
    if not is_name(galaxy_id_from_key(key)):
        return Decoded(key, None, f"file name {name!r} is not a valid galaxy id")
    try:
        return read_image_bytes(store, key, max_bytes)
    except ImageRejected as err:
        return Decoded(key, None, err.reason)
    except KeyNotFoundError:
        return Decoded(key, None, GONE, missing=True)


def _pillow(key: str, data: bytes, crop_size: int) -> Decoded:
    name = key.rsplit("/", 1)[-1]
    try:
        crop, _ = crop_image(
            data, name=name, crop_size=crop_size, expected_size=EXPECTED_SIZE, max_pixels=DEFAULT_MAX_PIXELS
        )
    except ImageRejected as err:
        return Decoded(key, None, err.reason)
    return Decoded(key, torch.from_numpy(np.array(crop)).permute(2, 0, 1), None)


def _read_for_device(store: Store, key: str, crop_size: int, max_bytes: int) -> Decoded | _Jpeg:
    data = _read(store, key, max_bytes)
    if isinstance(data, Decoded):
        return data
    size = _device_size(data, key.rsplit("/", 1)[-1], crop_size)
    if size is None:
        return _pillow(key, data, crop_size)
    return _Jpeg(key, data, torch.frombuffer(bytearray(data), dtype=torch.uint8), *size)


def _device_size(data: bytes, name: str, crop_size: int) -> tuple[int, int] | None:
    """(width, height) of a file the device decoder may take: named .jpg or .jpeg, ending with the end
    marker, an 8-bit baseline RGB (or YCbCr) JPEG by its header, passing every check of ``crop_image``.
    None for any other file: the Pillow path decodes it or says why it cannot."""
    if not name.lower().endswith((".jpg", ".jpeg")) or not data.endswith(_EOI):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=["JPEG"])  # the header only
        except Exception:  # whatever it is, crop_image meets it too and reports (or raises) it
            return None
        try:  # the checks crop_image makes, on the same header
            check_header(image, "JPEG", name, crop_size, EXPECTED_SIZE, DEFAULT_MAX_PIXELS)
        except ImageRejected:
            return None
    plain = image.mode == "RGB" and getattr(image, "bits", 8) == 8
    # progressive, and RGB stored without a colour transform (Adobe transform 0), are left to Pillow
    plain = plain and not image.info.get("progressive") and image.info.get("adobe_transform", 1) != 0
    return image.size if plain else None


def _crop(jpeg: _Jpeg, image: torch.Tensor | None, crop_size: int) -> Decoded:
    if image is None or tuple(image.shape) != (3, jpeg.height, jpeg.width):
        return _pillow(jpeg.key, jpeg.data, crop_size)
    left, top = (jpeg.width - crop_size) // 2, (jpeg.height - crop_size) // 2
    return Decoded(jpeg.key, image[:, top : top + crop_size, left : left + crop_size], None)
