"""Loading a dataset version for training and evaluation: shards -> decoded, augmented uint8 batches.

The recipe (webdataset): shard list -> deterministic shard shuffle -> split by rank -> split by
worker -> open (local file or S3 stream) -> tar members -> samples -> sample shuffle -> decode ->
augment -> batch -> ``WebLoader``. Errors re-raise by default: a truncated shard stops the run
instead of silently losing the rest of it.

Augmentation follows the paper (rotation, flips, brightness and contrast, then standardisation).
Everything up to the batch stays 8-bit: rotation and flips as one OpenCV resampling, brightness and
contrast as one 256-entry lookup table per image. The loaders yield uint8 batches, a quarter of the
bytes of float ones; ``standardize`` turns them into model input on the device that trains, where
it is one cheap multiply-add. With the pre-cropped 224 JPEGs (3.6x fewer pixels to decode) that is
where this loader's speed comes from.

Training loaders repeat their shards and stop after the same number of batches on every rank,
as DDP requires.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Iterator
from functools import partial
from typing import Any, Literal

import cv2
import numpy as np
import torch
import webdataset as wds
from pydantic import BaseModel, Field
from torchvision.io import decode_jpeg

from galaxy_models.shards import DatasetManifest, S3Opener, iter_shard_streams, shard_urls
from galaxy_models.storage import Store

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
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """uint8 batch (N, 3, H, W) -> standardised float32, on whatever device the batch is on.

    Three cheap passes (cast, scale, shift; the 1/255 folds into the scale), in ``memory_format``
    (the loaders' batches are channels-last views; per-channel arithmetic is much faster on CPU in
    the contiguous format, the GPU path asks for channels-last). ``out``, a float32 tensor of the
    same shape, is reused if given: on CPU a fresh 4-bytes-per-pixel batch costs more in page faults
    than the arithmetic.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise TypeError(f"standardize expects a uint8 (N, 3, H, W) batch, got {images.dtype} {tuple(images.shape)}")
    std = torch.tensor(preprocessing.std, device=images.device).view(1, 3, 1, 1)
    scale = 1.0 / (255.0 * std)
    shift = -torch.tensor(preprocessing.mean, device=images.device).view(1, 3, 1, 1) / std
    x = images.to(torch.float32, memory_format=memory_format) if out is None else out.copy_(images)
    return x.mul_(scale).add_(shift)


def to_model_input(
    images: torch.Tensor, preprocessing: Preprocessing, device: torch.device, channels_last: bool = False
) -> torch.Tensor:
    """A loader's uint8 batch -> the model's float input on ``device``: copied over (asynchronously
    from pinned memory), standardised there, resized if the preprocessing asks for it (bilinear
    with antialiasing), in the memory format the model runs in."""
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


def _decode(sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """-> (H, W, 3) uint8, contiguous, and the class. torchvision's decoder, about twice as fast as
    Pillow's here, returns a (3, H, W) view of (H, W, 3) pixels: permuting back copies nothing."""
    image = decode_jpeg(torch.frombuffer(bytearray(sample["jpg"]), dtype=torch.uint8))
    return image.permute(1, 2, 0), int(sample["cls"])


def _decode_augmented(
    sample: dict[str, Any], augmentation: Augmentation, rng: random.Random
) -> tuple[torch.Tensor, int]:
    image, label = _decode(sample)
    pixels = image.numpy()  # shares the decoder's buffer, which nothing else holds
    table = colour_table(pixels, augmentation, rng)
    pixels = orient(pixels, augmentation, rng)
    if table is not None:
        cv2.LUT(pixels, table, dst=pixels)
    return torch.from_numpy(pixels), label


def _collate(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (H, W, 3) uint8 images into an (N, 3, H, W) batch, a channels-last view (no transposing
    copy in the workers; ``standardize`` does the layout change in its cast).

    Inside a DataLoader worker the batch is allocated in shared memory, as PyTorch's own collate
    does, so it reaches the main process without another copy.
    """
    images, labels = zip(*samples, strict=True)
    shape = (len(images), *images[0].shape)
    if torch.utils.data.get_worker_info() is None:
        out = torch.empty(shape, dtype=torch.uint8)
    else:
        storage = torch.UntypedStorage._new_shared(math.prod(shape))
        out = torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
    torch.stack(images, out=out)
    return out.permute(0, 3, 1, 2), torch.tensor(labels, dtype=torch.long)


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _TrainEpochs(torch.utils.data.IterableDataset):
    """First stage of a training pipeline, run inside each DataLoader worker.

    Every pass over the pipeline is one epoch: the shards are permuted by (seed, epoch) identically on
    every rank, the rank takes its share and the worker its share of that, and the stages after this
    one draw from ``rng``, re-seeded from (seed, epoch, rank, worker). An epoch's batches therefore
    depend only on those numbers, not on how many epochs this loader served before: a run resumed at
    epoch 7 sees the batches an uninterrupted run would have seen. ``quota`` is this worker's share of
    the rank's batches; the shards cycle until it is met.
    """

    def __init__(
        self, urls: list[str], *, seed: int, epoch: int, rank: int, world: int, batches: int, batch_size: int
    ) -> None:
        super().__init__()
        self.urls, self.seed, self.rank, self.world, self.batches = urls, seed, rank, world, batches
        self.batch_size = batch_size
        self.epoch = epoch - 1
        self.rng = random.Random()
        self.quota = batches

    def __iter__(self) -> Iterator[dict[str, str]]:
        self.epoch += 1
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.urls))
        mine = [self.urls[i] for i in order[self.rank :: self.world]][worker::workers]
        self.quota = self.batches // workers + (worker < self.batches % workers)
        self.rng.seed(f"{self.seed}/{self.epoch}/{self.rank}/{worker}")
        return ({"url": url} for url in itertools.cycle(mine))

    def shuffle(self, samples: Iterable[Any], buffer: int) -> Iterator[Any]:
        """Sample shuffle with this epoch's generator. The buffer is refilled every epoch and what is
        left in it at the end is read for nothing, so it is kept to a quarter of the worker's epoch."""
        size = max(1, min(buffer, self.quota * self.batch_size // 4))
        return wds.shuffle(size, initial=size, rng=self.rng)(samples)

    def take_quota(self, batches: Iterable[Any]) -> Iterator[Any]:
        """Last stage: stop after this worker's share of the epoch."""
        return itertools.islice(batches, self.quota)


def make_loader(
    store: Store,
    manifest: DatasetManifest,
    split: str,
    *,
    batch_size: int,
    train: bool,
    workers: int = 2,
    seed: int = 0,
    epoch: int = 0,
    augmentation: Augmentation | None = None,
    shuffle_buffer: int = 1000,
    distributed: bool = True,
    on_error: Literal["raise", "warn"] = "raise",
    s3_opener: S3Opener | None = None,
) -> wds.WebLoader:
    """A loader over one split of a dataset version; each pass over it is one epoch.

    Training (``train=True``): the first pass is ``epoch``, each later pass the next. Shards are
    shuffled by (seed, epoch) identically on every rank and split across ranks (``distributed``) and
    workers; samples are shuffled and augmented; full batches only, exactly
    ``split_size // (batch_size * world_size)`` of them on every rank, as DDP needs. Evaluation:
    every sample once, in shard order, last batch partial; with ``distributed`` the ranks share the
    shards. Workers persist across passes. Batches are ``(uint8 images (N, 3, H, W), int64
    labels)``: pass the images through ``standardize`` on the training device.

    Raises:
        ValueError: if the split has fewer shards than ranks, or too few samples for one batch per rank.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    rank, world = _rank_and_world() if distributed else (0, 1)
    urls = shard_urls(store, manifest.split_shards(split))
    if len(urls) < world:
        raise ValueError(
            f"split {split!r} of {manifest.name}/{manifest.version} has {len(urls)} shards for {world} ranks; "
            "ingest with a smaller samples_per_shard"
        )
    # The rank split happens in the pipeline's first stage, not with webdataset's split_by_node:
    # DataLoader workers do not see the process group, so that would give every rank every shard.
    # A worker without shards would spin forever in a cycling pipeline: never start more than there are.
    workers = min(workers, len(urls[rank::world]))
    handler = wds.reraise_exception if on_error == "raise" else wds.warn_and_continue
    read = [
        partial(iter_shard_streams, s3_opener=s3_opener),
        partial(wds.tariterators.tar_file_expander, handler=handler),
        partial(wds.tariterators.group_by_keys, handler=handler),
    ]
    if not train:
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(urls[rank::world]),
            wds.split_by_worker,
            *read,
            wds.map(_decode, handler=handler),
            wds.batched(batch_size, collation_fn=_collate, partial=True),
        )
        return wds.WebLoader(pipeline, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
    batches = manifest.split_size(split) // (batch_size * world)
    if batches < 1:
        raise ValueError(
            f"split {split!r} has {manifest.split_size(split)} samples: "
            f"too few for one batch of {batch_size} on {world} ranks"
        )
    epochs = _TrainEpochs(urls, seed=seed, epoch=epoch, rank=rank, world=world, batches=batches, batch_size=batch_size)
    augment = partial(_decode_augmented, augmentation=augmentation or Augmentation(), rng=epochs.rng)
    pipeline = wds.DataPipeline(
        epochs,
        *read,
        partial(epochs.shuffle, buffer=shuffle_buffer),
        wds.map(augment, handler=handler),
        wds.batched(batch_size, collation_fn=_collate, partial=False),
        epochs.take_quota,
    )
    return wds.WebLoader(pipeline, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
