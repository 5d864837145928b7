"""Loading a dataset version for training and evaluation: shards -> decoded, augmented batches.

The recipe (webdataset): shard list -> deterministic shard shuffle -> split by rank -> split by
worker -> open (local file or S3 stream) -> tar members -> samples -> sample shuffle -> decode ->
batch -> transform -> ``WebLoader``. Errors re-raise by default: a truncated shard stops the run
instead of silently losing the rest of it.

Augmentation follows the paper (rotation, flips, brightness and contrast, standardisation) but runs
on whole batches as tensor operations rather than image by image, which is most of this loader's
speed. Training loaders repeat their shards and stop after the same number of batches on every
rank, as DDP requires.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
import webdataset as wds
from pydantic import BaseModel, Field
from torchvision.io import decode_jpeg

from galaxy_models.shards import DatasetManifest, S3Opener, iter_shard_streams, shard_urls
from galaxy_models.storage import Store


class Augmentation(BaseModel):
    """Training augmentation strengths (the paper names the kinds, not the amounts)."""

    rotation: bool = Field(True, description="uniform random rotation in [0, 360) degrees")
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
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images
    mean = torch.tensor(preprocessing.mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(images: torch.Tensor, augmentation: Augmentation, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random rotation, flips, brightness and contrast on a uint8 batch; returns float in [0, 1]."""
    x = images.float() / 255.0
    n = x.shape[0]
    if augmentation.rotation:
        angle = torch.rand(n, generator=generator) * (2 * math.pi)
        cos, sin = torch.cos(angle), torch.sin(angle)
        zero = torch.zeros(n)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if augmentation.flips:
        flip_h = torch.rand(n, generator=generator) < 0.5
        flip_v = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip_h.view(n, 1, 1, 1), x.flip(3), x)
        x = torch.where(flip_v.view(n, 1, 1, 1), x.flip(2), x)
    if augmentation.brightness:
        b = augmentation.brightness
        x = x * (1 - b + 2 * b * torch.rand(n, 1, 1, 1, generator=generator))
    if augmentation.contrast:
        c = augmentation.contrast
        factor = 1 - c + 2 * c * torch.rand(n, 1, 1, 1, generator=generator)
        grey = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - grey) * factor + grey
    return x.clamp_(0.0, 1.0)


def _decode(sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
    image = decode_jpeg(torch.frombuffer(bytearray(sample["jpg"]), dtype=torch.uint8))
    return image, int(sample["cls"])


def _collate(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*samples, strict=True)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def _train_batch(
    batch: tuple[torch.Tensor, torch.Tensor], augmentation: Augmentation, preprocessing: Preprocessing
) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = batch
    return standardize(augment(images, augmentation), preprocessing), labels


def _eval_batch(
    batch: tuple[torch.Tensor, torch.Tensor], preprocessing: Preprocessing
) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = batch
    return standardize(images, preprocessing), labels


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
    ranks and workers, samples shuffled, augmented, full batches only, and exactly
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
    own_shards = len(urls[rank::world])
    # A worker without shards would spin forever in a repeating pipeline: never start more than there are.
    workers = min(workers, own_shards)
    handler = wds.reraise_exception if on_error == "raise" else wds.warn_and_continue
    preprocessing = Preprocessing.from_manifest(manifest)
    stages: list[Any] = [wds.SimpleShardList(urls)]
    if train:
        stages.append(wds.detshuffle(bufsize=len(urls), initial=len(urls), seed=seed, epoch=epoch))
    if distributed:
        stages.append(wds.split_by_node)
    stages += [
        wds.split_by_worker,
        partial(iter_shard_streams, s3_opener=s3_opener),
        partial(wds.tariterators.tar_file_expander, handler=handler),
        partial(wds.tariterators.group_by_keys, handler=handler),
    ]
    if train:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 500), seed=seed + 7919 * epoch + rank))
    stages += [
        wds.map(_decode, handler=handler),
        wds.batched(batch_size, collation_fn=_collate, partial=not train),
    ]
    if train:
        stages.append(
            wds.map(partial(_train_batch, augmentation=augmentation or Augmentation(), preprocessing=preprocessing))
        )
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
