"""Loading a dataset version for training and evaluation: shards -> decoded, augmented batches.

The recipe (webdataset): shard list -> deterministic shard shuffle -> split by rank -> split by
worker -> open (local file or S3 stream) -> tar members -> samples -> sample shuffle -> decode ->
batch -> transform -> ``WebLoader``. Errors re-raise by default: a truncated shard stops the run
instead of silently losing the rest of it.

Augmentation follows the paper (rotation, flips, brightness and contrast, standardisation): the
rotation and flips act on each 8-bit image in Pillow, brightness, contrast and standardisation on
the whole batch as one in-place multiply-add; with the pre-cropped 224 JPEGs (3.6x fewer pixels to
decode) that is where this loader's speed comes from.

Training loaders repeat their shards and stop after the same number of batches on every rank,
as DDP requires.
"""

from __future__ import annotations

import random
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from pydantic import BaseModel, Field
from torchvision.io import decode_jpeg

from galaxy_models.shards import DatasetManifest, S3Opener, iter_shard_streams, shard_urls
from galaxy_models.storage import Store


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

    crop_size: int
    mean: list[float]
    std: list[float]

    @classmethod
    def from_manifest(cls, manifest: DatasetManifest) -> Preprocessing:
        return cls(crop_size=manifest.crop_size, mean=manifest.normalization.mean, std=manifest.normalization.std)


def standardize(images: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 (N, 3, H, W) or float in [0, 1] -> standardised float32."""
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.clone()
    return _standardize_(x, preprocessing)


def _standardize_(x: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """In place, on a float batch in [0, 1]."""
    mean = torch.tensor(preprocessing.mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=x.dtype).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def orient(image: Image.Image, augmentation: Augmentation, rng: random.Random) -> Image.Image:
    """Random rotation and flips of one uint8 image (Pillow, before batching: 8-bit pixels are cheap)."""
    if augmentation.rotation:
        resample = Image.Resampling.NEAREST if augmentation.interpolation == "nearest" else Image.Resampling.BILINEAR
        image = image.rotate(rng.uniform(0.0, 360.0), resample=resample)
    if augmentation.flips and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if augmentation.flips and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return image


def _float_batch(images: torch.Tensor) -> torch.Tensor:
    """``images.float()``, allocated in shared memory inside a DataLoader worker, as PyTorch's own
    collate does: the batch then reaches the main process without another 4-bytes-per-pixel copy."""
    if torch.utils.data.get_worker_info() is None:
        return images.float()
    out = torch.empty(images.shape, dtype=torch.float32).share_memory_()
    return out.copy_(images)


def jitter(images: torch.Tensor, augmentation: Augmentation, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random brightness then contrast per image of a uint8 batch; float in [0, 1] out.

    Both are affine in the pixel values, so they collapse into one multiply-add per image
    (``(b*x - b*g) * c + b*g`` with g the image's mean), done in place on the whole batch.
    """
    x = _float_batch(images)  # still 0-255: the 1/255 rides along in the jitter factor, saving a pass
    n = x.shape[0]
    b = 1 - augmentation.brightness + 2 * augmentation.brightness * torch.rand(n, 1, 1, 1, generator=generator)
    c = 1 - augmentation.contrast + 2 * augmentation.contrast * torch.rand(n, 1, 1, 1, generator=generator)
    grey = x.mean(dim=(1, 2, 3), keepdim=True)
    return x.mul_(b * c / 255.0).add_((1 - c) * b * grey / 255.0).clamp_(0.0, 1.0)


def _decode(sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
    image = decode_jpeg(torch.frombuffer(bytearray(sample["jpg"]), dtype=torch.uint8))
    return image, int(sample["cls"])


def _decode_oriented(sample: dict[str, Any], augmentation: Augmentation) -> tuple[torch.Tensor, int]:
    image, label = _decode(sample)  # torchvision's decoder: about twice as fast as Pillow's here
    if not (augmentation.rotation or augmentation.flips):
        return image, label
    # Python's random is seeded per DataLoader worker by PyTorch, so runs are reproducible.
    oriented = orient(Image.fromarray(image.permute(1, 2, 0).numpy()), augmentation, random)  # type: ignore[arg-type]
    return torch.from_numpy(np.array(oriented)).permute(2, 0, 1), label


def _collate(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*samples, strict=True)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def _train_batch(
    batch: tuple[torch.Tensor, torch.Tensor], augmentation: Augmentation, preprocessing: Preprocessing
) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = batch
    return _standardize_(jitter(images, augmentation), preprocessing), labels


def _eval_batch(
    batch: tuple[torch.Tensor, torch.Tensor], preprocessing: Preprocessing
) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = batch
    return _standardize_(_float_batch(images).div_(255.0), preprocessing), labels


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


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
    shuffle_buffer: int = 2000,
    distributed: bool = True,
    on_error: Literal["raise", "warn"] = "raise",
    s3_opener: S3Opener | None = None,
) -> wds.WebLoader:
    """A loader over one split of a dataset version.

    Training (``train=True``): shards shuffled by (seed, epoch) identically on every rank, split across
    ranks (``distributed``) and workers, samples shuffled, augmented, full batches only, and exactly
    ``split_size // (batch_size * world_size)`` batches on every rank. Evaluation: every sample once,
    in shard order, last batch partial; with ``distributed`` the ranks share the shards.

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
    if train:  # the same permutation on every rank, new each epoch, before the ranks take their share
        urls = [urls[i] for i in np.random.default_rng([seed, epoch]).permutation(len(urls))]
    # The rank split happens here, not in a pipeline stage: DataLoader workers do not see the process
    # group, so webdataset's split_by_node would give every rank every shard.
    own = urls[rank::world]
    # A worker without shards would spin forever in a repeating pipeline: never start more than there are.
    workers = min(workers, len(own))
    handler = wds.reraise_exception if on_error == "raise" else wds.warn_and_continue
    preprocessing = Preprocessing.from_manifest(manifest)
    stages: list[Any] = [wds.SimpleShardList(own)]
    if train:  # reshuffled on every pass of the repeating pipeline
        stages.append(wds.detshuffle(bufsize=len(own), initial=len(own), seed=seed + 1000 * rank, epoch=epoch))
    stages += [
        wds.split_by_worker,
        partial(iter_shard_streams, s3_opener=s3_opener),
        partial(wds.tariterators.tar_file_expander, handler=handler),
        partial(wds.tariterators.group_by_keys, handler=handler),
    ]
    if train:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 500), seed=seed + 7919 * epoch + rank))
    augmentation = augmentation or Augmentation()
    decode = partial(_decode_oriented, augmentation=augmentation) if train else _decode
    stages += [
        wds.map(decode, handler=handler),
        wds.batched(batch_size, collation_fn=_collate, partial=not train),
    ]
    if train:
        stages.append(wds.map(partial(_train_batch, augmentation=augmentation, preprocessing=preprocessing)))
    else:
        stages.append(wds.map(partial(_eval_batch, preprocessing=preprocessing)))
    pipeline = wds.DataPipeline(*stages)
    if not train:
        return wds.WebLoader(pipeline, batch_size=None, num_workers=workers)
    batches = manifest.split_size(split) // (batch_size * world)
    if batches < 1:
        raise ValueError(
            f"split {split!r} has {manifest.split_size(split)} samples: "
            f"too few for one batch of {batch_size} on {world} ranks"
        )
    loader = wds.WebLoader(pipeline.repeat(), batch_size=None, num_workers=workers)
    return loader.with_epoch(batches)
