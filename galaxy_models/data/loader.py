"""Loading a dataset version for training and evaluation: shards -> decoded, augmented uint8 batches.

The recipe (webdataset): shard list -> deterministic shard shuffle -> split by rank -> split by
worker -> open (local file or S3 stream) -> tar members, each checked before it is read -> samples
-> sample shuffle -> decode -> augment -> batch -> ``WebLoader``. Errors re-raise by default: a
truncated shard stops the run instead of silently losing the rest of it.

Augmentation follows the paper (rotation, flips, brightness and contrast, then standardisation).
Everything up to the batch stays 8-bit: rotation and flips as one OpenCV resampling, brightness and
contrast as one 256-entry lookup table per image. The loaders yield uint8 batches, a quarter of the
bytes of float ones; ``standardize`` turns them into model input on the device that trains, where
it is one cheap multiply-add. With the pre-cropped 224 JPEGs (3.6x fewer pixels to decode) that is
where this loader's speed comes from.

Training loaders repeat their shards and stop after the same number of batches on every rank,
as DDP requires. Where CUDA is available the batches come in page-locked (pinned) memory, so the
training loop's ``non_blocking`` copies to the GPU overlap with its compute instead of waiting.
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
from torchvision.io import decode_jpeg

from galaxy_models.data.augmentation import Augmentation, colour_table, orient
from galaxy_models.data.manifest import DatasetManifest, ShardInfo
from galaxy_models.data.shards import CorruptShardError, S3Opener, iter_shard_files, iter_shard_streams, shard_urls
from galaxy_models.storage import Store


def _decode(sample: dict[str, Any]) -> tuple[torch.Tensor, int]:
    """-> (H, W, 3) uint8, contiguous, and the class. torchvision's decoder, about twice as fast as
    Pillow's here, returns a (3, H, W) view of (H, W, 3) pixels: permuting back copies nothing."""
    missing = [part for part in ("jpg", "cls") if part not in sample]
    if missing:
        raise CorruptShardError(
            f"shard {sample.get('__url__', '?')}: sample {sample.get('__key__', '?')!r} has no {' or '.join(missing)}"
        )
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


def _evaluation_loader(
    urls: list[str], read: list[Any], handler: Any, batch_size: int, workers: int, pin_memory: bool
) -> wds.WebLoader:
    """Every sample of ``urls`` once, in shard order, decoded and batched (the last batch partial)."""
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_worker,
        *read,
        wds.map(_decode, handler=handler),
        wds.batched(batch_size, collation_fn=_collate, partial=True),
    )
    return _web_loader(pipeline, workers, pin_memory)


def _web_loader(pipeline: wds.DataPipeline, workers: int, pin_memory: bool) -> wds.WebLoader:
    return wds.WebLoader(
        pipeline, batch_size=None, num_workers=workers, persistent_workers=workers > 0, pin_memory=pin_memory
    )


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
    pin_memory: bool | None = None,
) -> wds.WebLoader:
    """A loader over one split of a dataset version; each pass over it is one epoch.

    Training (``train=True``): the first pass is ``epoch``, each later pass the next. Shards are
    shuffled by (seed, epoch) identically on every rank and split across ranks (``distributed``) and
    workers; samples are shuffled and augmented; full batches only, exactly
    ``split_size // (batch_size * world_size)`` of them on every rank, as DDP needs. Evaluation:
    every sample once, in shard order, last batch partial; with ``distributed`` the ranks share the
    shards. Workers persist across passes. Batches are ``(uint8 images (N, 3, H, W), int64
    labels)``: pass the images through ``standardize`` on the training device. ``pin_memory``
    (None: where CUDA is available) puts each batch in page-locked memory for asynchronous copies.

    Raises:
        ValueError: if the split has fewer shards than ranks, or too few samples for one batch per rank.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    rank, world = _rank_and_world() if distributed else (0, 1)
    shards = manifest.split_shards(split)
    urls = shard_urls(store, shards)
    if len(urls) < world:
        raise ValueError(
            f"split {split!r} of {manifest.name}/{manifest.version} has {len(urls)} shards for {world} ranks; "
            "ingest with a smaller samples_per_shard"
        )
    # The rank split happens in the pipeline's first stage, not with webdataset's split_by_node:
    # DataLoader workers do not see the process group, so that would give every rank every shard.
    # A worker without shards would spin forever in a cycling pipeline: never start more than there are.
    workers = min(workers, len(urls[rank::world]))
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    read, handler = _read_stages(urls, shards, on_error, s3_opener)
    if not train:
        return _evaluation_loader(urls[rank::world], read, handler, batch_size, workers, pin)
    batches = manifest.split_size(split) // (batch_size * world)
    if batches < 1:
        raise ValueError(
            f"split {split!r} has {manifest.split_size(split)} samples: "
            f"too few for one batch of {batch_size} on {world} ranks"
        )
    epochs = _TrainEpochs(urls, seed=seed, epoch=epoch, rank=rank, world=world, batches=batches, batch_size=batch_size)
    return _training_loader(epochs, read, handler, augmentation or Augmentation(), shuffle_buffer, workers, pin)


def _read_stages(
    urls: list[str], shards: list[ShardInfo], on_error: Literal["raise", "warn"], s3_opener: S3Opener | None
) -> tuple[list[Any], Any]:
    """The stages from shard URL to grouped samples, and the error handler every stage uses. Strict
    loaders also check every shard they read whole against the manifest's sha256 (no second pass).

    Tar members are expanded by ``iter_shard_files``, not webdataset's ``tar_file_expander``: it
    refuses, before reading its data, any member our writer never produces (a link, a device, a
    path like ``../x.jpg``, an oversized file), in every loader, lenient or strict."""
    handler = wds.reraise_exception if on_error == "raise" else wds.warn_and_continue
    expected = dict(zip(urls, shards, strict=True)) if on_error == "raise" else None
    read = [
        partial(iter_shard_streams, s3_opener=s3_opener, expected=expected),
        partial(iter_shard_files, handler=handler),
        partial(wds.tariterators.group_by_keys, handler=handler),
    ]
    return read, handler


def _training_loader(
    epochs: _TrainEpochs,
    read: list[Any],
    handler: Any,
    augmentation: Augmentation,
    shuffle_buffer: int,
    workers: int,
    pin_memory: bool,
) -> wds.WebLoader:
    """Shards of each epoch -> samples, shuffled, decoded and augmented with the epoch's generator,
    batched (full batches only), and stopped at this worker's quota."""
    augment = partial(_decode_augmented, augmentation=augmentation, rng=epochs.rng)
    pipeline = wds.DataPipeline(
        epochs,
        *read,
        partial(epochs.shuffle, buffer=shuffle_buffer),
        wds.map(augment, handler=handler),
        wds.batched(epochs.batch_size, collation_fn=_collate, partial=False),
        epochs.take_quota,
    )
    return _web_loader(pipeline, workers, pin_memory)
